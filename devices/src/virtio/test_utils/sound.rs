//! A virtio-snd device activated on [`DriverQueue`]s, with the control requests and I/O
//! messages a driver sends, and the sound helpers the tests share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::InterruptRecorder;
use super::queue::{Bump, ChainOpts, Desc, DriverQueue};
use crate::virtio::snd::wire::{
    rate_code, PcmFormat, SetParams, CONTROLQ, NUM_QUEUES, RXQ, R_PCM_PREPARE, R_PCM_RELEASE,
    R_PCM_STOP, S_OK, TXQ,
};
use crate::virtio::snd::{BackendConfig, Sound, SoundConfig, QUEUE_SIZE};
use crate::virtio::{
    ActivateContext, ActiveQueue, SharedSubscriber, VirtioDevice, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};

/// How queue notifications reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopMode {
    /// [`SoundRig::kick`] calls the device's queue handler on the caller's thread; the
    /// subscribers are left to the caller ([`SoundRig::subscribers`]).
    Direct,
    /// A kick writes the queue's eventfd and runs an event manager on the caller's thread until
    /// it has nothing left to do (the worker re-kicks itself when it yields with chains left).
    Inline,
    /// An event manager on a thread of its own, as in the VMM.
    Thread,
}

/// Where a [`SoundRig`] puts things.
pub struct RigLayout {
    pub mem_size: u64,
    /// Queue `i`'s rings start at `i * queue_stride`.
    pub queue_stride: u64,
    pub queue_size: u16,
    /// Buffers come from `[data_start, data_end)`.
    pub data_start: u64,
    pub data_end: u64,
}

impl Default for RigLayout {
    /// 32 MiB of RAM, 256-entry queues 32 KiB apart, buffers from 1 MiB on.
    fn default() -> Self {
        RigLayout {
            mem_size: MEM_SIZE,
            queue_stride: 0x8000,
            queue_size: QUEUE_SIZE,
            data_start: DATA_START,
            data_end: MEM_SIZE,
        }
    }
}

/// Guest RAM of the default [`RigLayout`].
pub const MEM_SIZE: u64 = 32 << 20;
/// Where the default layout's buffers start.
pub const DATA_START: u64 = 1 << 20;
/// An address past the end of guest RAM.
pub const OUTSIDE: u64 = 0x1_0000_0000;

enum EventLoop {
    Direct,
    Inline(EventManager<SharedSubscriber>),
    Thread {
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
        tid: i32,
    },
}

/// A TX or RX message the fake driver sent.
pub struct Sent {
    pub head: u16,
    pub data: u64,
    pub status: u64,
}

/// An activated virtio-snd device on four [`DriverQueue`]s in fresh guest RAM.
pub struct SoundRig {
    pub mem: GuestMemoryMmap,
    pub sound: Sound,
    pub queues: Vec<DriverQueue>,
    pub kicks: Vec<EventFd>,
    /// The device's subscribers (in [`LoopMode::Direct`]; the event manager has them
    /// otherwise).
    pub subscribers: Vec<SharedSubscriber>,
    pub interrupt: Arc<InterruptRecorder>,
    pub bump: Bump,
    /// Output plus input streams.
    pub streams: u32,
    /// A writable descriptor went over the rings (see [`SoundRig::add`]): the used-ring
    /// accounting no longer means anything.
    pub tampered: bool,
    event_loop: EventLoop,
    data_start: u64,
    /// Runs once the device is reset and its threads joined (see [`SoundRig::on_drop`]).
    on_drop: Option<DropHook>,
}

/// What a [`SoundRig`] hands its RAM to when it is dropped.
type DropHook = Box<dyn FnOnce(&GuestMemoryMmap, &Bump)>;

impl SoundRig {
    /// A device with `config` (and the backend it names), VERSION_1 acked, kicked directly.
    pub fn new(config: SoundConfig) -> SoundRig {
        SoundRig::with_features(config, VIRTIO_F_VERSION_1)
    }

    pub fn with_features(config: SoundConfig, acked_features: u64) -> SoundRig {
        SoundRig::activate(Sound::new(config).unwrap(), acked_features)
    }

    /// Activates `sound` in the default layout, kicked directly.
    pub fn activate(sound: Sound, acked_features: u64) -> SoundRig {
        SoundRig::build(
            sound,
            acked_features,
            LoopMode::Direct,
            RigLayout::default(),
            None,
        )
    }

    /// `event_idx`: whether the driver acked VIRTIO_F_RING_EVENT_IDX.
    pub fn features(event_idx: bool) -> u64 {
        VIRTIO_F_VERSION_1
            | if event_idx {
                VIRTIO_F_RING_EVENT_IDX
            } else {
                0
            }
    }

    /// Activates `sound` on four queues laid out as `layout` says, in `mem` (zero-filled,
    /// `layout.mem_size` bytes at 0) or in fresh RAM.
    pub fn build(
        mut sound: Sound,
        acked_features: u64,
        mode: LoopMode,
        layout: RigLayout,
        mem: Option<GuestMemoryMmap>,
    ) -> SoundRig {
        let streams = sound.config().outputs + sound.config().inputs;
        let mem = mem.unwrap_or_else(|| {
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), layout.mem_size as usize)])
                .expect("guest RAM")
        });
        let interrupt = Arc::new(InterruptRecorder::default());
        let mut queues = Vec::new();
        let mut active = Vec::new();
        let mut kicks = Vec::new();
        for index in 0..NUM_QUEUES as u16 {
            let base = u64::from(index) * layout.queue_stride;
            let (driver, queue) = DriverQueue::new(base, layout.queue_size);
            let kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
            kicks.push(kick.try_clone().expect("eventfd clone"));
            queues.push(driver);
            active.push(ActiveQueue { index, queue, kick });
        }
        let subscribers = sound
            .activate(ActivateContext {
                mem: mem.clone(),
                interrupt: interrupt.clone(),
                queues: active,
                acked_features,
            })
            .expect("the device activates");
        let (event_loop, subscribers) = match mode {
            LoopMode::Direct => (EventLoop::Direct, subscribers),
            LoopMode::Inline => {
                let mut manager = EventManager::<SharedSubscriber>::new().expect("event manager");
                for s in subscribers {
                    manager.add_subscriber(s);
                }
                (EventLoop::Inline(manager), Vec::new())
            }
            LoopMode::Thread => (threaded_loop(subscribers), Vec::new()),
        };
        SoundRig {
            mem,
            sound,
            queues,
            kicks,
            subscribers,
            interrupt,
            bump: Bump::new(layout.data_start, layout.data_end),
            streams,
            tampered: false,
            event_loop,
            data_start: layout.data_start,
            on_drop: None,
        }
    }

    /// Calls `hook` with the RAM and the allocator when the rig is dropped, after the device
    /// was reset and its threads joined (nothing writes the RAM any more): to zero and reuse
    /// the mapping, as the fuzz targets do.
    pub fn on_drop(&mut self, hook: impl FnOnce(&GuestMemoryMmap, &Bump) + 'static) {
        self.on_drop = Some(Box::new(hook));
    }

    pub(crate) fn worker(&self) -> MutexGuard<'_, crate::virtio::snd::worker::SoundWorker> {
        self.sound
            .worker()
            .expect("an active device")
            .lock()
            .unwrap()
    }

    /// A stream's state (the device tests, which need both sound backends).
    #[cfg(test)]
    #[cfg_attr(not(all(feature = "snd-alsa", feature = "snd-wav")), allow(dead_code))]
    pub(crate) fn state(&self, stream: usize) -> crate::virtio::snd::stream::PcmState {
        self.worker().streams()[stream].state()
    }

    /// The Linux thread id of the event-loop thread ([`LoopMode::Thread`]).
    pub fn event_loop_tid(&self) -> Option<i32> {
        match &self.event_loop {
            EventLoop::Thread { tid, .. } => Some(*tid),
            _ => None,
        }
    }

    /// Notifies `queue` and, unless the event loop has a thread, lets the device take it.
    /// (Queue indices are `u16` or `usize` here, as the caller keeps them.)
    pub fn kick(&mut self, queue: impl Into<usize>) {
        let queue = queue.into() % NUM_QUEUES;
        if let EventLoop::Direct = self.event_loop {
            self.worker().handle_queue(queue as u16);
        } else {
            self.notify(queue);
            self.run_events();
        }
    }

    /// Writes `queue`'s eventfd only.
    pub fn notify(&self, queue: impl Into<usize>) {
        let _ = self.kicks[queue.into() % NUM_QUEUES].write(1);
    }

    /// Runs the inline event manager until it has nothing left to do (at most 64 rounds).
    pub fn run_events(&mut self) {
        for _ in 0..64 {
            if self.run_events_once() == 0 {
                break;
            }
        }
    }

    /// One round of the inline event manager without waiting; the events it handled.
    pub fn run_events_once(&mut self) -> usize {
        match &mut self.event_loop {
            EventLoop::Inline(manager) => manager.run_with_timeout(0).unwrap_or(0),
            _ => 0,
        }
    }

    /// Guest memory for a buffer of `len` bytes.
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.bump.alloc(len)
    }

    /// Adds a chain to `queue` with the layout `opts` asks for; returns its head. A writable
    /// descriptor below the data area (over the rings) marks the rig [`SoundRig::tampered`].
    pub fn add(&mut self, queue: impl Into<usize>, descs: &[Desc], opts: ChainOpts) -> u16 {
        if descs
            .iter()
            .any(|d| d.flags & Desc::writable(0, 0).flags != 0 && d.addr < self.data_start)
        {
            self.tampered = true;
        }
        self.queues[queue.into()].add_with(&self.mem, &mut self.bump, descs, opts)
    }

    /// Sends a control request with a `response_len`-byte writable response buffer (none for
    /// 0); returns (used length, response bytes). The device must answer at once, or within 5 s
    /// when its event loop has a thread.
    pub fn control_with(&mut self, request: &[u8], response_len: u32) -> (u32, Vec<u8>) {
        let req = self.alloc(request.len() as u64);
        self.mem.write_slice(request, GuestAddress(req)).unwrap();
        let resp = self.alloc(u64::from(response_len));
        self.mem
            .write_slice(&vec![0xaa; response_len as usize], GuestAddress(resp))
            .unwrap();
        let mut descs = vec![(req, request.len() as u32, false)];
        if response_len > 0 {
            descs.push((resp, response_len, true));
        }
        let before = self.interrupt.count(CONTROLQ);
        let head = self.queues[usize::from(CONTROLQ)].add(&self.mem, &descs);
        self.kick(CONTROLQ);
        let mut used = self.take_used(CONTROLQ);
        if let EventLoop::Thread { .. } = self.event_loop {
            let deadline = Instant::now() + Duration::from_secs(5);
            while used.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "a control request got no answer (DEVICE_NEEDS_RESET reported {} times)",
                    self.interrupt.needs_reset_count()
                );
                self.interrupt
                    .wait_beyond(CONTROLQ, before, Duration::from_millis(10));
                used = self.take_used(CONTROLQ);
            }
        }
        assert_eq!(
            used.len(),
            1,
            "the control request was not answered at once"
        );
        assert_eq!(used[0].0, head);
        let mut response = vec![0u8; response_len as usize];
        self.mem
            .read_slice(&mut response, GuestAddress(resp))
            .unwrap();
        (used[0].1, response)
    }

    /// Sends a request with a 4-byte response; returns the status.
    pub fn control(&mut self, request: &[u8]) -> u32 {
        let (len, response) = self.control_with(request, 4);
        assert_eq!(len, 4);
        u32::from_le_bytes(response[..4].try_into().unwrap())
    }

    pub fn pcm(&mut self, code: u32, stream: u32) -> u32 {
        self.control(&pcm_request(code, stream))
    }

    pub fn set_params(&mut self, params: SetParams) -> u32 {
        self.control(&params.encode())
    }

    /// SET_PARAMS + PREPARE, both expected to succeed.
    pub fn prepare(&mut self, params: SetParams) {
        assert_eq!(self.set_params(params), S_OK, "SET_PARAMS refused");
        assert_eq!(
            self.pcm(R_PCM_PREPARE, params.stream_id),
            S_OK,
            "PREPARE refused"
        );
    }

    /// A control request with a `resp_len`-byte response that may go unanswered (the fuzz
    /// targets' broken rings): kicks and returns the status, or None if the device wrote none.
    pub fn try_control(&mut self, request: &[u8], resp_len: u32) -> Option<u32> {
        let req = self.bump.alloc(request.len() as u64);
        let _ = self.mem.write_slice(request, GuestAddress(req));
        let resp = self.bump.alloc(resp_len.into());
        let _ = self.mem.write_slice(&[0xaa; 4], GuestAddress(resp));
        let descs = [
            Desc::readable(req, request.len() as u32),
            Desc::writable(resp, resp_len),
        ];
        self.add(CONTROLQ, &descs, ChainOpts::default());
        self.kick(CONTROLQ);
        let status: u32 = self.mem.read_obj(GuestAddress(resp)).ok()?;
        (status != 0xaaaa_aaaa).then_some(status)
    }

    /// [`SoundRig::try_control`] of a PCM request.
    pub fn try_pcm(&mut self, code: u32, stream: u32) -> Option<u32> {
        self.try_control(&pcm_request(code, stream), 4)
    }

    /// Queues an I/O message on the txq (`data` readable) or rxq (`rx_len` writable) without
    /// kicking; returns where its data and status are.
    pub fn add_io(&mut self, queue: u16, stream: u32, data: &[u8], rx_len: u32) -> Sent {
        let hdr = self.alloc(4);
        self.mem
            .write_slice(&stream.to_le_bytes(), GuestAddress(hdr))
            .unwrap();
        let status = self.alloc(8);
        self.mem
            .write_slice(&[0xee; 8], GuestAddress(status))
            .unwrap();
        let (buf, len, write) = if queue == TXQ {
            let buf = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(buf)).unwrap();
            (buf, data.len() as u32, false)
        } else {
            (self.alloc(u64::from(rx_len)), rx_len, true)
        };
        let head = self.queues[usize::from(queue)].add(
            &self.mem,
            &[(hdr, 4, false), (buf, len, write), (status, 8, true)],
        );
        Sent {
            head,
            data: buf,
            status,
        }
    }

    pub fn tx(&mut self, stream: u32, data: &[u8]) -> Sent {
        let sent = self.add_io(TXQ, stream, data, 0);
        self.kick(TXQ);
        sent
    }

    pub fn rx(&mut self, stream: u32, len: u32) -> Sent {
        let sent = self.add_io(RXQ, stream, &[], len);
        self.kick(RXQ);
        sent
    }

    /// The status and latency the device wrote for a message (0xeeeeeeee each while it has
    /// not).
    pub fn status_of(&self, sent: &Sent) -> (u32, u32) {
        let mut raw = [0u8; 8];
        self.mem
            .read_slice(&mut raw, GuestAddress(sent.status))
            .unwrap();
        (
            u32::from_le_bytes(raw[0..4].try_into().unwrap()),
            u32::from_le_bytes(raw[4..8].try_into().unwrap()),
        )
    }

    /// Waits until `n` more chains are used on `queue`.
    pub fn wait_used(&mut self, queue: u16, n: usize, timeout: Duration) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        let mut used = Vec::new();
        while used.len() < n {
            used.extend(self.queues[usize::from(queue)].take_used(&self.mem));
            if Instant::now() > deadline {
                panic!(
                    "only {} of {n} chains came back on queue {queue}",
                    used.len()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        used
    }

    /// Waits (bounded) for the next used chain on `queue`, leaving any later ones for the next
    /// call; None at the timeout.
    pub fn next_used(&mut self, queue: u16, timeout: Duration) -> Option<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(used) = self.queues[usize::from(queue)].pop_used(&self.mem) {
                return Some(used);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn take_used(&mut self, queue: u16) -> Vec<(u16, u32)> {
        self.queues[usize::from(queue)].take_used(&self.mem)
    }

    /// Checks that every chain made available on `queue` came back; the driver's view of the
    /// used ring is the only evidence. Nothing is checked on a tampered rig.
    pub fn assert_all_returned(&mut self, queue: impl Into<usize>, what: &str) {
        if self.tampered {
            return;
        }
        let queue = queue.into();
        let left = self.queues[queue].outstanding(&self.mem);
        assert!(
            left == 0,
            "{what}: {left} chain(s) on queue {queue} not returned ({} published, {} returned)",
            self.queues[queue].published,
            self.queues[queue].returned
        );
    }

    /// Waits (bounded) until every chain on `queue` came back; true if they did.
    pub fn wait_all_returned(&mut self, queue: impl Into<usize>, timeout: Duration) -> bool {
        let queue = queue.into();
        let deadline = Instant::now() + timeout;
        loop {
            if self.queues[queue].outstanding(&self.mem) <= 0 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Ends the session as a driver would: STOP and RELEASE on every stream (RELEASE returns
    /// every queued message before it is answered). With `reprepare`, streams that still have
    /// messages out (a stream left with new parameters and not prepared again keeps what it
    /// had queued) get PREPARE and RELEASE too. PREPARE starts a period thread, so it is only
    /// sent when something is still outstanding.
    pub fn release_all(&mut self, reprepare: bool) {
        for id in 0..self.streams {
            self.try_pcm(R_PCM_STOP, id);
            self.try_pcm(R_PCM_RELEASE, id);
        }
        if reprepare && !self.tampered {
            let mem = self.mem.clone();
            let outstanding = self.queues[usize::from(TXQ)].outstanding(&mem)
                + self.queues[usize::from(RXQ)].outstanding(&mem);
            if outstanding > 0 {
                for id in 0..self.streams {
                    self.try_pcm(R_PCM_PREPARE, id);
                    self.try_pcm(R_PCM_RELEASE, id);
                }
            }
        }
    }

    /// Resets the device (joins its period threads).
    pub fn reset(&mut self) {
        self.sound.reset();
    }
}

impl Drop for SoundRig {
    fn drop(&mut self) {
        if let EventLoop::Thread { stop, handle, .. } = &mut self.event_loop {
            stop.store(true, Ordering::Release);
            if let Some(handle) = handle.take() {
                let _ = handle.join();
            }
        }
        // Joins the period threads, the only writers besides this thread.
        self.sound.reset();
        if let Some(hook) = self.on_drop.take() {
            hook(&self.mem, &self.bump);
        }
    }
}

fn threaded_loop(subscribers: Vec<SharedSubscriber>) -> EventLoop {
    let stop = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("rig-evloop".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            let mut events = EventManager::<SharedSubscriber>::new().expect("epoll");
            for subscriber in subscribers {
                events.add_subscriber(subscriber);
            }
            while !flag.load(Ordering::Acquire) {
                if let Err(e) = events.run_with_timeout(50) {
                    eprintln!("rig event loop: {e}");
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

/// A PCM request (code, stream id).
pub fn pcm_request(code: u32, stream: u32) -> Vec<u8> {
    let mut request = code.to_le_bytes().to_vec();
    request.extend(stream.to_le_bytes());
    request
}

/// One output and one input stream on the null backend (capturing silence), no jacks.
pub fn null_config() -> SoundConfig {
    SoundConfig {
        backend: BackendConfig::Null,
        capture: Some(crate::virtio::snd::CaptureConfig::Null),
        outputs: 1,
        inputs: 1,
        jacks: 0,
    }
}

/// S16 stereo at 48 kHz: `period_frames` per period, `periods` per buffer.
pub fn stereo_48k(stream_id: u32, period_frames: u32, periods: u32) -> SetParams {
    SetParams {
        stream_id,
        buffer_bytes: period_frames * 4 * periods,
        period_bytes: period_frames * 4,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: rate_code(48000).expect("48 kHz"),
    }
}

/// S16 stereo at 48 kHz with 1 ms periods (192 bytes), four per buffer.
pub fn fast_params(stream_id: u32) -> SetParams {
    stereo_48k(stream_id, 48, 4)
}

/// `len` bytes of PCM that differ with `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// An INFO request (header, start id, count, item size).
pub fn query(code: u32, start_id: u32, count: u32, size: u32) -> Vec<u8> {
    [code, start_id, count, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// The paced ALSA PCM the ignored real-time tests play to (`CANTO_ALSA_TEST_PCM`, `pulse`
/// under `resources/with-pulse.sh`); None (after printing why) when it is not set, which fails
/// under `CI=true`.
pub fn paced_alsa_pcm() -> Option<String> {
    let Ok(device) = std::env::var("CANTO_ALSA_TEST_PCM") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: CANTO_ALSA_TEST_PCM must name a paced ALSA PCM (make test runs this under resources/with-pulse.sh)"
        );
        eprintln!("SKIPPED: CANTO_ALSA_TEST_PCM is not set");
        return None;
    };
    Some(device)
}

/// What every RX buffer holds before the device writes it: a byte of it left in a completed
/// message is stale data (it is no silence of any format).
pub const STALE: u8 = 0xaa;

/// One RX message the device returned.
pub struct Captured {
    pub status: u32,
    /// The used length: status plus captured bytes.
    pub used_len: u32,
    /// The message's whole PCM area as the guest reads it.
    pub data: Vec<u8>,
    /// When the fake driver saw it come back.
    pub at: Instant,
}

/// Records like the Linux driver: keeps `depth` RX messages of `message_bytes` queued on one
/// stream, each pre-filled with [`STALE`], re-queueing one each time one comes back, and checks
/// they come back in order. No wait is unbounded: a message later than the patience it is
/// given panics.
pub struct Recorder {
    pub stream: u32,
    pub message_bytes: u32,
    pub depth: usize,
    in_flight: std::collections::VecDeque<Sent>,
}

impl Recorder {
    pub fn new(stream: u32, message_bytes: u32, depth: usize) -> Recorder {
        Recorder {
            stream,
            message_bytes,
            depth,
            in_flight: Default::default(),
        }
    }

    /// Queues messages until `depth` are in flight, then kicks once.
    pub fn fill(&mut self, h: &mut SoundRig) {
        if self.in_flight.len() >= self.depth {
            return;
        }
        while self.in_flight.len() < self.depth {
            let sent = h.add_io(RXQ, self.stream, &[], self.message_bytes);
            h.mem
                .write_slice(
                    &vec![STALE; self.message_bytes as usize],
                    GuestAddress(sent.data),
                )
                .unwrap();
            self.in_flight.push_back(sent);
        }
        h.kick(RXQ);
    }

    /// Waits for the oldest message and returns what it holds.
    #[track_caller]
    pub fn next(&mut self, h: &mut SoundRig, patience: Duration) -> Captured {
        let (head, used_len) = h.next_used(RXQ, patience).unwrap_or_else(|| {
            panic!(
                "no RX message came back within {patience:?} ({} in flight)",
                self.in_flight.len()
            )
        });
        let at = Instant::now();
        let heads: Vec<u16> = self.in_flight.iter().map(|m| m.head).collect();
        let sent = self.in_flight.pop_front().expect("a message in flight");
        assert_eq!(
            head, sent.head,
            "RX messages came back out of order: in flight {heads:?}"
        );
        let mut data = vec![0u8; self.message_bytes as usize];
        h.mem
            .read_slice(&mut data, GuestAddress(sent.data))
            .unwrap();
        Captured {
            status: h.status_of(&sent).0,
            used_len,
            data,
            at,
        }
    }

    /// Waits for `count` messages, re-queueing after each (so `depth` stay in flight).
    #[track_caller]
    pub fn record(&mut self, h: &mut SoundRig, count: usize, patience: Duration) -> Vec<Captured> {
        let mut out = Vec::with_capacity(count);
        self.fill(h);
        while out.len() < count {
            out.push(self.next(h, patience));
            self.fill(h);
        }
        out
    }

    /// Messages queued and not returned yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Forgets the messages in flight (RELEASE returned them).
    pub fn forget(&mut self) {
        self.in_flight.clear();
    }
}
