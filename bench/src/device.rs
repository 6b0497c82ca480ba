//! A fake virtio-snd driver around a real [`Sound`] device: split queues in real guest memory
//! (`GuestMemoryMmap`), the device's queue
//! notifications delivered through its event-loop subscriber (an `EventManager`, as in the VMM),
//! and its interrupts recorded with timestamps. Only the devices crate's public API is used.
//!
//! TX messages live in fixed slots: slot `k` owns descriptors `3k..3k+3` (header, PCM, status)
//! and a fixed piece of guest memory, so re-sending a slot only writes the available ring.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use canto_devices::virtio::snd::wire::{
    SetParams, CONTROLQ, NUM_QUEUES, PCM_STATUS_SIZE, R_PCM_INFO, R_PCM_PREPARE, R_PCM_RELEASE,
    R_PCM_START, R_PCM_STOP, S_OK, TXQ,
};
use canto_devices::virtio::snd::{Backend, BackendConfig, Sound, SoundConfig, SoundStatsSnapshot};
use canto_devices::virtio::{
    ActivateContext, ActiveQueue, SharedSubscriber, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType, VIRTIO_F_VERSION_1,
};
use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM of the fake machine.
pub const MEM_SIZE: u64 = 64 << 20;
/// Queue `i` is laid out at `i * QUEUE_STRIDE`.
const QUEUE_STRIDE: u64 = 0x8000;
const QUEUE_SIZE: u16 = 256;
const CTL_REQUEST: u64 = 0x4_0000;
const CTL_RESPONSE: u64 = 0x4_1000;
const CTL_RESPONSE_MAX: u32 = 0x1000;
const TX_BASE: u64 = 1 << 20;
/// The most TX messages in flight (3 descriptors each, 256 descriptors).
pub const MAX_TX_SLOTS: usize = 80;
/// Set in every PCM tag, so a tag is never mistaken for silence.
pub const TAG_BIT: u64 = 1 << 63;

/// Records the device's interrupts per queue, with timestamps for the txq when asked.
#[derive(Default)]
pub struct Interrupts {
    state: Mutex<IrqState>,
    changed: Condvar,
}

#[derive(Default)]
struct IrqState {
    counts: [u64; NUM_QUEUES],
    tx_times: Option<Vec<Instant>>,
}

impl Interrupts {
    fn lock(&self) -> std::sync::MutexGuard<'_, IrqState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn count(&self, queue: u16) -> u64 {
        self.lock().counts[usize::from(queue)]
    }

    /// Waits until more than `seen` interrupts of `queue` were raised, or `timeout` passes.
    /// Returns the count.
    pub fn wait_beyond(&self, queue: u16, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let count = state.counts[usize::from(queue)];
            let now = Instant::now();
            if count > seen || now >= deadline {
                return count;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Starts (or stops, returning them) timestamping txq interrupts.
    pub fn record_tx(&self, on: bool) -> Vec<Instant> {
        let mut state = self.lock();
        let old = state.tx_times.take().unwrap_or_default();
        if on {
            state.tx_times = Some(Vec::with_capacity(1 << 16));
        }
        old
    }
}

impl VirtioInterrupt for Interrupts {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        if let VirtioInterruptType::Queue(queue) = kind {
            let now = Instant::now();
            let mut state = self.lock();
            if let Some(count) = state.counts.get_mut(usize::from(queue)) {
                *count += 1;
            }
            if queue == TXQ {
                if let Some(times) = state.tx_times.as_mut() {
                    times.push(now);
                }
            }
            drop(state);
            self.changed.notify_all();
        }
        Ok(())
    }

    fn needs_reset(&self) -> std::io::Result<()> {
        // Only a broken ring gets here: a bug in the bench's driver, which then waits in vain.
        eprintln!("bench: the device reports DEVICE_NEEDS_RESET: the bench's driver broke a ring");
        Ok(())
    }
}

/// The driver's side of one split queue.
struct DriverQueue {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    fn write_desc(&self, mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16) {
        let next = (index + 1) % self.size;
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(index)))
            .expect("descriptor table is in guest RAM");
    }

    /// Makes the chain at `head` available (no notification).
    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot))
            .expect("avail ring is in guest RAM");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail ring is in guest RAM");
    }

    /// The used entries (head, length) returned since the last call.
    fn take_used(&mut self, mem: &GuestMemoryMmap, out: &mut Vec<(u16, u32)>) {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used ring is in guest RAM");
        fence(Ordering::SeqCst);
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("used ring");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used ring");
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
    }
}

/// Lays out a split queue of `size` at `base`: descriptor table, available ring, used ring (4-byte
/// aligned), the way a driver does. (virtio-queue 0.18's `MockSplitQueue` puts the used ring at
/// `avail + 4 + size` bytes, inside the available ring's entries 128 and up for a 256-entry
/// queue, so it is not used here: a long run corrupts its own avail ring.)
fn split_queue(base: u64, size: u16) -> (DriverQueue, Queue) {
    let desc = base;
    let avail = desc + 16 * u64::from(size);
    let used = (avail + 4 + 2 * u64::from(size) + 2).next_multiple_of(4);
    let mut queue = Queue::new(size).expect("a valid queue size");
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    queue.set_ready(true);
    let driver = DriverQueue {
        desc,
        avail,
        used,
        size,
        avail_idx: 0,
        used_seen: 0,
    };
    (driver, queue)
}

/// How queue notifications reach the device's subscriber.
pub enum LoopMode {
    /// On the caller's thread: a kick runs the event loop once (micro-benchmarks).
    Inline,
    /// On a thread of its own, as in the VMM (real-time runs).
    Thread,
}

enum EventLoop {
    Inline(EventManager<SharedSubscriber>),
    Thread {
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
        tid: i32,
    },
}

/// A sound device with one output stream, driven by a fake driver.
pub struct Device {
    pub mem: GuestMemoryMmap,
    sound: Sound,
    queues: Vec<DriverQueue>,
    kicks: Vec<EventFd>,
    pub irq: Arc<Interrupts>,
    event_loop: EventLoop,
    used_buf: Vec<(u16, u32)>,
    tx_data_len: u32,
    tx_stride: u64,
}

fn threaded_loop(subscribers: Vec<SharedSubscriber>) -> EventLoop {
    let stop = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("bench-evloop".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            let mut events = EventManager::<SharedSubscriber>::new().expect("epoll");
            for subscriber in subscribers {
                events.add_subscriber(subscriber);
            }
            while !flag.load(Ordering::Acquire) {
                if let Err(e) = events.run_with_timeout(50) {
                    eprintln!("bench event loop: {e}");
                    return;
                }
            }
        })
        .expect("spawn the event loop thread");
    let tid = tid_rx.recv().unwrap_or(0);
    EventLoop::Thread {
        stop,
        handle: Some(handle),
        tid,
    }
}

impl Device {
    /// A device with one output stream (id 0) and no input, on `backend`.
    pub fn new(backend: Arc<dyn Backend>, mode: LoopMode) -> Device {
        let config = SoundConfig {
            backend: BackendConfig::Null,
            outputs: 1,
            inputs: 0,
            jacks: 0,
        };
        let mut sound = Sound::with_backend(config, backend).expect("a valid configuration");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("guest memory");
        let irq = Arc::new(Interrupts::default());
        let mut queues = Vec::new();
        let mut active = Vec::new();
        let mut kicks = Vec::new();
        for index in 0..NUM_QUEUES as u16 {
            let (driver, queue) = split_queue(u64::from(index) * QUEUE_STRIDE, QUEUE_SIZE);
            queues.push(driver);
            let kick = EventFd::new(0).expect("eventfd");
            kicks.push(kick.try_clone().expect("eventfd"));
            active.push(ActiveQueue { index, queue, kick });
        }
        let subscribers = sound
            .activate(ActivateContext {
                mem: mem.clone(),
                interrupt: irq.clone(),
                queues: active,
                acked_features: VIRTIO_F_VERSION_1,
            })
            .expect("the device activates");
        let event_loop = match mode {
            LoopMode::Inline => {
                let mut events = EventManager::<SharedSubscriber>::new().expect("epoll");
                for subscriber in subscribers {
                    events.add_subscriber(subscriber);
                }
                EventLoop::Inline(events)
            }
            LoopMode::Thread => threaded_loop(subscribers),
        };
        Device {
            mem,
            sound,
            queues,
            kicks,
            irq,
            event_loop,
            used_buf: Vec::with_capacity(256),
            tx_data_len: 0,
            tx_stride: 0,
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> SoundStatsSnapshot {
        self.sound.stats()
    }

    /// The Linux thread id of the event-loop thread (threaded mode).
    pub fn event_loop_tid(&self) -> Option<i32> {
        match &self.event_loop {
            EventLoop::Thread { tid, .. } => Some(*tid),
            EventLoop::Inline(_) => None,
        }
    }

    /// Notifies `queue`; in inline mode the event loop runs until the device took it.
    pub fn kick(&mut self, queue: u16) {
        let _ = self.kicks[usize::from(queue)].write(1);
        if let EventLoop::Inline(events) = &mut self.event_loop {
            let _ = events.run_with_timeout(0);
        }
    }

    fn take_used(&mut self, queue: u16) -> Vec<(u16, u32)> {
        let mut out = std::mem::take(&mut self.used_buf);
        out.clear();
        self.queues[usize::from(queue)].take_used(&self.mem, &mut out);
        out
    }

    /// Sends a control request with a `response_len`-byte response buffer; returns the used
    /// length. The response is at [`Device::control_response`].
    pub fn control_raw(&mut self, request: &[u8], response_len: u32) -> u32 {
        let response_len = response_len.clamp(4, CTL_RESPONSE_MAX);
        self.mem
            .write_slice(request, GuestAddress(CTL_REQUEST))
            .expect("control buffer");
        let q = &self.queues[usize::from(CONTROLQ)];
        q.write_desc(
            &self.mem,
            0,
            CTL_REQUEST,
            request.len() as u32,
            VRING_DESC_F_NEXT as u16,
        );
        q.write_desc(
            &self.mem,
            1,
            CTL_RESPONSE,
            response_len,
            VRING_DESC_F_WRITE as u16,
        );
        let before = self.irq.count(CONTROLQ);
        self.queues[usize::from(CONTROLQ)].publish(&self.mem, 0);
        self.kick(CONTROLQ);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let used = self.take_used(CONTROLQ);
            if let Some(&(_, len)) = used.first() {
                self.used_buf = used;
                return len;
            }
            self.used_buf = used;
            assert!(Instant::now() < deadline, "a control request got no answer");
            self.irq
                .wait_beyond(CONTROLQ, before, Duration::from_millis(10));
        }
    }

    /// The first `len` bytes of the last control response.
    pub fn control_response(&self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(CTL_RESPONSE))
            .expect("control buffer");
        out
    }

    /// Sends a control request with a 4-byte status reply; returns the status.
    pub fn control(&mut self, request: &[u8]) -> u32 {
        self.control_raw(request, 4);
        let reply = self.control_response(4);
        u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]])
    }

    /// PCM_INFO for `count` streams from 0; returns the status.
    pub fn pcm_info(&mut self, count: u32) -> u32 {
        let request: Vec<u8> = [R_PCM_INFO, 0, count, 32]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        self.control_raw(&request, 4 + 32 * count);
        let reply = self.control_response(4);
        u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]])
    }

    pub fn pcm(&mut self, code: u32, stream: u32) -> u32 {
        let mut request = code.to_le_bytes().to_vec();
        request.extend(stream.to_le_bytes());
        self.control(&request)
    }

    pub fn set_params(&mut self, params: &SetParams) -> u32 {
        self.control(&params.encode())
    }

    /// SET_PARAMS + PREPARE, and lays out `slots` TX slots of one period each.
    pub fn prepare(&mut self, params: &SetParams, slots: usize) {
        assert_eq!(self.set_params(params), S_OK, "SET_PARAMS refused");
        assert_eq!(
            self.pcm(R_PCM_PREPARE, params.stream_id),
            S_OK,
            "PREPARE refused"
        );
        self.setup_tx(params.stream_id, params.period_bytes, slots);
    }

    pub fn start(&mut self, stream: u32) {
        assert_eq!(self.pcm(R_PCM_START, stream), S_OK, "START refused");
    }

    /// STOP + RELEASE (which returns every queued message).
    pub fn stop_release(&mut self, stream: u32) {
        assert_eq!(self.pcm(R_PCM_STOP, stream), S_OK, "STOP refused");
        assert_eq!(self.pcm(R_PCM_RELEASE, stream), S_OK, "RELEASE refused");
    }

    fn slot_addr(&self, slot: usize) -> u64 {
        TX_BASE + slot as u64 * self.tx_stride
    }

    /// Writes `slots` TX chains (header, `data_len` bytes of PCM, status) for `stream`; the PCM
    /// is a pattern, its first 8 bytes the tag `send_tx` writes.
    fn setup_tx(&mut self, stream: u32, data_len: u32, slots: usize) {
        assert!(slots <= MAX_TX_SLOTS);
        self.tx_data_len = data_len;
        self.tx_stride = (64 + u64::from(data_len)).next_multiple_of(64);
        assert!(TX_BASE + slots as u64 * self.tx_stride <= MEM_SIZE);
        let pattern: Vec<u8> = (0..data_len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
            .collect();
        for slot in 0..slots {
            let base = self.slot_addr(slot);
            self.mem
                .write_slice(&stream.to_le_bytes(), GuestAddress(base))
                .expect("tx slot");
            self.mem
                .write_slice(&pattern, GuestAddress(base + 64))
                .expect("tx slot");
            let q = &self.queues[usize::from(TXQ)];
            let head = 3 * slot as u16;
            q.write_desc(&self.mem, head, base, 4, VRING_DESC_F_NEXT as u16);
            q.write_desc(
                &self.mem,
                head + 1,
                base + 64,
                data_len,
                VRING_DESC_F_NEXT as u16,
            );
            q.write_desc(
                &self.mem,
                head + 2,
                base + 8,
                PCM_STATUS_SIZE as u32,
                VRING_DESC_F_WRITE as u16,
            );
        }
    }

    /// Makes TX slot `slot` available with `tag` in its first PCM bytes (no notification).
    pub fn send_tx(&mut self, slot: usize, tag: u64) {
        let base = self.slot_addr(slot);
        self.mem
            .write_obj(tag | TAG_BIT, GuestAddress(base + 64))
            .expect("tx slot");
        self.queues[usize::from(TXQ)].publish(&self.mem, 3 * slot as u16);
    }

    /// The TX slots returned since the last call, with their status.
    pub fn reap_tx(&mut self, out: &mut Vec<(usize, u32)>) {
        let used = self.take_used(TXQ);
        for &(head, _) in &used {
            let slot = usize::from(head / 3);
            let status: u32 = self
                .mem
                .read_obj(GuestAddress(self.slot_addr(slot) + 8))
                .expect("tx slot");
            out.push((slot, status));
        }
        self.used_buf = used;
    }

    /// The PCM bytes of one TX message.
    pub fn tx_data_len(&self) -> u32 {
        self.tx_data_len
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let EventLoop::Thread { stop, handle, .. } = &mut self.event_loop {
            stop.store(true, Ordering::Release);
            if let Some(handle) = handle.take() {
                let _ = handle.join();
            }
        }
        self.sound.reset();
    }
}

/// S16 stereo at 48 kHz: `period_frames` per period, `periods` per buffer.
pub fn stereo_48k(period_frames: u32, periods: u32) -> SetParams {
    SetParams {
        stream_id: 0,
        buffer_bytes: period_frames * 4 * periods,
        period_bytes: period_frames * 4,
        features: 0,
        channels: 2,
        format: canto_devices::virtio::snd::wire::PcmFormat::S16.code(),
        rate: canto_devices::virtio::snd::wire::rate_code(48000).expect("48 kHz"),
    }
}
