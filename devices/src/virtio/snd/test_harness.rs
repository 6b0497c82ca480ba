//! The fake driver the device-level tests (`tests.rs`, `fault_tests.rs`) drive the device with:
//! real split queues in real guest memory (`GuestMemoryMmap`), laid out with virtio-queue's
//! `MockSplitQueue` (its used ring moved, see [`DriverQueue::new`]), and the helpers those tests
//! share.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::stream::PcmState;
use super::wire::*;
use super::worker::SoundWorker;
use super::{BackendConfig, Sound, SoundConfig, QUEUE_SIZE};
use crate::virtio::{
    ActivateContext, ActiveQueue, SharedSubscriber, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType, VIRTIO_F_VERSION_1,
};

pub(super) const MEM_SIZE: u64 = 32 << 20;
pub(super) const DATA_START: u64 = 1 << 20;
/// An address past the end of guest RAM.
pub(super) const OUTSIDE: u64 = 0x1_0000_0000;

/// Counts interrupts per queue.
#[derive(Default)]
pub(super) struct CountingInterrupt {
    counts: Mutex<[u32; NUM_QUEUES]>,
    needs_reset: Mutex<u32>,
    /// What the transport's Bus Master Enable would say, cleared.
    pub(super) dma_blocked: std::sync::atomic::AtomicBool,
}

impl CountingInterrupt {
    pub(super) fn count(&self, queue: u16) -> u32 {
        self.counts.lock().unwrap()[usize::from(queue)]
    }

    /// How many times the device reported DEVICE_NEEDS_RESET.
    pub(super) fn needs_reset_count(&self) -> u32 {
        *self.needs_reset.lock().unwrap()
    }
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        if let VirtioInterruptType::Queue(q) = kind {
            self.counts.lock().unwrap()[usize::from(q)] += 1;
        }
        Ok(())
    }

    fn needs_reset(&self) -> std::io::Result<()> {
        *self.needs_reset.lock().unwrap() += 1;
        Ok(())
    }

    fn dma_allowed(&self) -> bool {
        !self.dma_blocked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A descriptor as the fake driver writes it: address, length, device-writable.
pub(super) type Desc = (u64, u32, bool);

/// The driver's side of one split queue.
pub(super) struct DriverQueue {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    size: u16,
    next_desc: u16,
    pub(super) avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    pub(super) fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> (DriverQueue, Queue) {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), size);
        let mut queue: Queue = mock.create_queue().unwrap();
        // virtio-queue 0.18's mock puts the used ring `size` bytes after the available ring's
        // entries, which take 2 × `size` bytes: from the 129th chain on, the device would read
        // the used ring as available heads. The used ring goes after the whole available ring
        // (flags, idx, entries, used_event) instead. Guest memory starts zeroed, so the moved
        // ring starts empty.
        let avail = mock.avail_addr();
        let used = GuestAddress((avail.0 + 6 + 2 * u64::from(size)).next_multiple_of(4));
        queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        let driver = DriverQueue {
            desc: mock.desc_table_addr(),
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        (driver, queue)
    }

    /// Writes a chain and makes it available; returns its head.
    pub(super) fn add(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, write)) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let next = (index + 1) % self.size;
            let mut flags = if *write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&raw, GuestAddress(self.desc.0 + 16 * u64::from(index)))
                .unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        let slot = self.avail.0 + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail.0 + 2))
            .unwrap();
        head
    }

    pub(super) fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used.0 + 2)).unwrap()
    }

    /// The used entry after the last one seen; the device must have returned it.
    fn read_next_used(&mut self, mem: &GuestMemoryMmap) -> (u16, u32) {
        let at = self.used.0 + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        (id as u16, len)
    }

    /// The next used entry (head, length) not seen yet, if any.
    fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        (self.used_seen != self.used_idx(mem)).then(|| self.read_next_used(mem))
    }

    /// The used entries (head, length) returned since the last call.
    pub(super) fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx = self.used_idx(mem);
        let mut out = Vec::new();
        while self.used_seen != idx {
            out.push(self.read_next_used(mem));
        }
        out
    }

    /// Publishes `idx` as the available index without adding anything (a broken driver).
    pub(super) fn publish_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail.0 + 2)).unwrap();
    }

    /// Sets `used_event` (EVENT_IDX): interrupt once the used index passes it.
    pub(super) fn set_used_event(&self, mem: &GuestMemoryMmap, value: u16) {
        let at = self.avail.0 + 4 + 2 * u64::from(self.size);
        mem.write_obj(value, GuestAddress(at)).unwrap();
    }
}

/// A TX or RX message the fake driver sent.
pub(super) struct Sent {
    pub(super) head: u16,
    pub(super) data: u64,
    pub(super) status: u64,
}

pub(super) struct Harness {
    pub(super) mem: GuestMemoryMmap,
    pub(super) sound: Sound,
    pub(super) queues: Vec<DriverQueue>,
    pub(super) kicks: Vec<EventFd>,
    pub(super) subscribers: Vec<SharedSubscriber>,
    pub(super) interrupt: Arc<CountingInterrupt>,
    next_buffer: u64,
}

impl Harness {
    pub(super) fn new(config: SoundConfig) -> Harness {
        Harness::with_features(config, VIRTIO_F_VERSION_1)
    }

    pub(super) fn with_features(config: SoundConfig, acked_features: u64) -> Harness {
        let sound = Sound::new(config).unwrap();
        Harness::activate(sound, acked_features)
    }

    pub(super) fn activate(mut sound: Sound, acked_features: u64) -> Harness {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let interrupt = Arc::new(CountingInterrupt::default());
        let mut queues = Vec::new();
        let mut active = Vec::new();
        let mut kicks = Vec::new();
        for index in 0..NUM_QUEUES as u16 {
            let (driver, queue) = DriverQueue::new(&mem, u64::from(index) * 0x8000, QUEUE_SIZE);
            let kick = EventFd::new(0).unwrap();
            kicks.push(kick.try_clone().unwrap());
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
            .unwrap();
        Harness {
            mem,
            sound,
            queues,
            kicks,
            subscribers,
            interrupt,
            next_buffer: DATA_START,
        }
    }

    pub(super) fn worker(&self) -> std::sync::MutexGuard<'_, SoundWorker> {
        self.sound.worker.as_ref().unwrap().lock().unwrap()
    }

    pub(super) fn state(&self, stream: usize) -> PcmState {
        self.worker().streams()[stream].state()
    }

    pub(super) fn kick(&self, queue: u16) {
        self.worker().handle_queue(queue);
    }

    /// Guest memory for a buffer of `len` bytes.
    pub(super) fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1).next_multiple_of(64);
        if self.next_buffer + len > MEM_SIZE {
            self.next_buffer = DATA_START;
        }
        let at = self.next_buffer;
        self.next_buffer += len;
        at
    }

    /// Sends a control request with a `response_len`-byte writable response buffer; returns
    /// (used length, response bytes).
    pub(super) fn control_with(&mut self, request: &[u8], response_len: u32) -> (u32, Vec<u8>) {
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
        let head = self.queues[0].add(&self.mem, &descs);
        self.kick(CONTROLQ);
        let used = self.queues[0].take_used(&self.mem);
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
    pub(super) fn control(&mut self, request: &[u8]) -> u32 {
        let (len, response) = self.control_with(request, 4);
        assert_eq!(len, 4);
        u32::from_le_bytes(response[..4].try_into().unwrap())
    }

    pub(super) fn pcm(&mut self, code: u32, stream: u32) -> u32 {
        let mut request = code.to_le_bytes().to_vec();
        request.extend(stream.to_le_bytes());
        self.control(&request)
    }

    pub(super) fn set_params(&mut self, params: SetParams) -> u32 {
        self.control(&params.encode())
    }

    /// SET_PARAMS + PREPARE, both expected to succeed.
    pub(super) fn prepare(&mut self, params: SetParams) {
        assert_eq!(self.set_params(params), S_OK);
        assert_eq!(self.pcm(R_PCM_PREPARE, params.stream_id), S_OK);
    }

    /// Queues an I/O message on the txq (`data` readable) or rxq (`data_len` writable) without
    /// kicking; returns where its data and status are.
    pub(super) fn add_io(&mut self, queue: u16, stream: u32, data: &[u8], rx_len: u32) -> Sent {
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

    pub(super) fn tx(&mut self, stream: u32, data: &[u8]) -> Sent {
        let sent = self.add_io(TXQ, stream, data, 0);
        self.kick(TXQ);
        sent
    }

    pub(super) fn rx(&mut self, stream: u32, len: u32) -> Sent {
        let sent = self.add_io(RXQ, stream, &[], len);
        self.kick(RXQ);
        sent
    }

    /// The status and latency the device wrote for a message (0xeeeeeeee each while it has
    /// not).
    pub(super) fn status_of(&self, sent: &Sent) -> (u32, u32) {
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
    pub(super) fn wait_used(&mut self, queue: u16, n: usize, timeout: Duration) -> Vec<(u16, u32)> {
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
    pub(super) fn next_used(&mut self, queue: u16, timeout: Duration) -> Option<(u16, u32)> {
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

    pub(super) fn take_used(&mut self, queue: u16) -> Vec<(u16, u32)> {
        self.queues[usize::from(queue)].take_used(&self.mem)
    }
}

/// One output and one input stream on the null backend, no jacks.
pub(super) fn null_config() -> SoundConfig {
    SoundConfig {
        backend: BackendConfig::Null,
        outputs: 1,
        inputs: 1,
        jacks: 0,
    }
}

/// S16 stereo at 48 kHz with 1 ms periods (192 bytes).
pub(super) fn fast_params(stream_id: u32) -> SetParams {
    SetParams {
        stream_id,
        buffer_bytes: 192 * 4,
        period_bytes: 192,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: rate_code(48000).unwrap(),
    }
}

/// `len` bytes of PCM that differ with `seed`.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// An INFO request (header, start id, count, item size).
pub(super) fn query(code: u32, start_id: u32, count: u32, size: u32) -> Vec<u8> {
    [code, start_id, count, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// The paced ALSA PCM the ignored real-time tests play to (`CANTO_ALSA_TEST_PCM`, `pulse`
/// under `resources/with-pulse.sh`); None (after printing why) when it is not set, which fails
/// under `CI=true`.
pub(super) fn paced_alsa_pcm() -> Option<String> {
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
