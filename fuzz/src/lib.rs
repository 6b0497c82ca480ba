//! The harness the fuzz targets share: a byte reader that never fails (every input decodes to
//! something), descriptor chains whose layout the input chooses, and a virtio-snd device
//! activated on split virtqueues with its event-loop subscriber run by a local event manager.
//! The driver's side of the queues and the device rig are the devices crate's fake driver
//! (`canto_devices::virtio::test_utils`, re-exported here), the one the device tests and the
//! bench use; what is here is how a fuzz input turns into calls on it.
//!
//! Everything goes through the devices crate's public API: `VirtioDevice` (activate, reset) and
//! the subscriber it returns, fed with queue kicks through eventfds as the VMM's event loop does.
//!
//! The byte formats are written down here, next to the decoders, and [`Writer`] encodes them for
//! the seed corpora (`src/bin/seeds.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use canto_devices::virtio::snd::wire::{
    PcmFormat, RATES, R_PCM_PREPARE, R_PCM_RELEASE, R_PCM_START, R_PCM_STOP,
};
use canto_devices::virtio::snd::{BackendConfig, CaptureConfig, Sound, SoundConfig};
/// The fake driver the fuzz targets share with the device tests and the bench.
pub use canto_devices::virtio::test_utils::{
    Bump, ChainOpts, Desc, DriverQueue, InterruptRecorder, LoopMode, RigLayout, SoundRig,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// ----- input -----

/// Reads the fuzz input front to back; past the end every read returns zeros, so any input is a
/// valid program.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
}

/// Encodes what [`Reader`] decodes (for the seeds).
#[derive(Default, Clone)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend(v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend(v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend(v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.out.extend_from_slice(v);
        self
    }
}

// ----- guest RAM and the queue layout -----

/// Guest RAM of the sound targets: 8 MiB, so that a 4 MiB I/O message (the device's limit) and
/// one just above it fit.
pub const MEM_SIZE: u64 = 8 << 20;
/// Queue `i`'s rings start at `i * QUEUE_SPAN`; buffers come after all four.
pub const QUEUE_SPAN: u64 = 0x2000;
pub const DATA_START: u64 = 4 * QUEUE_SPAN;
/// Queue size the harness gives every queue.
pub const QSIZE: u16 = 256;

/// Guest RAM for one fuzz run, taken from a per-thread cache. Mapping fresh RAM for every run
/// cost more than the device did (page faults and munmap were ~20 % of snd_io's time), so the
/// mapping is reused; everything a run may have written (the rings, the bump allocator's buffers
/// up to its high-water mark, the input's own descriptors) is zeroed before the next run, so a
/// run sees the same all-zero RAM as with a fresh mapping and an input replays the same way.
pub struct GuestRam;

thread_local! {
    static CACHED_RAM: std::cell::RefCell<Option<GuestMemoryMmap>> =
        const { std::cell::RefCell::new(None) };
}

impl GuestRam {
    /// Zero-filled RAM of `MEM_SIZE` bytes at guest address 0.
    pub fn take() -> GuestMemoryMmap {
        CACHED_RAM
            .with(|cached| cached.borrow_mut().take())
            .unwrap_or_else(|| {
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
                    .expect("guest RAM")
            })
    }

    /// Zeroes what the run may have written and keeps the mapping for the next run. Nothing
    /// else may write to `mem` any more (the device is reset, its threads joined).
    pub fn give_back(mem: GuestMemoryMmap, bump: &Bump) {
        bump.zero_written(&mem, MEM_SIZE);
        CACHED_RAM.with(|cached| *cached.borrow_mut() = Some(mem));
    }
}

/// How the ring's descriptor for an indirect table is written: the table's length may be exact
/// (16 bytes per descriptor written), longer, shorter, not a multiple of 16, zero or huge, and the
/// descriptor may also carry NEXT (both forbidden by VIRTIO 1.2 §2.7.5.3.1). [`decode_chain`]
/// turns it into [`ChainOpts::table_len`] and [`ChainOpts::table_next`].
///
/// Format (one input byte `t`), with `k = (t >> 2) & 0x1f`: `t & 3` = 0: exact; 1: exact plus
/// `k` bytes; 2: exact minus `k` bytes (down to 0); 3: `[0, 16 * 65535, 16 * 65536,
/// u32::MAX][k & 3]`. `t & 0x80`: the ring descriptor also has NEXT, to the slot after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndirectShape(pub u8);

impl IndirectShape {
    /// The table length the ring descriptor announces for `n` descriptors written.
    pub fn len(self, n: usize) -> u32 {
        let exact = 16 * n as u32;
        let k = u32::from(self.0 >> 2) & 0x1f;
        match self.0 & 3 {
            0 => exact,
            1 => exact + k,
            2 => exact.saturating_sub(k),
            _ => [0, 16 * 65535, 16 * 65536, u32::MAX][(k & 3) as usize],
        }
    }

    pub fn next(self) -> bool {
        self.0 & 0x80 != 0
    }
}

/// The ring field a tampering op writes (`u8 what`, `% 4`): the available ring's flags, its
/// index, `used_event`, or the used ring's index.
pub fn ring_field(q: &DriverQueue, what: u8) -> u64 {
    match what % 4 {
        0 => q.avail,
        1 => q.avail + 2,
        2 => q.avail + 4 + 2 * u64::from(q.size),
        _ => q.used + 2,
    }
}

/// Decodes a chain layout and writes its buffers. `payload` is written to RAM once; readable
/// "payload" descriptors cover consecutive pieces of it.
///
/// Format: `u8 h` — `(h & 0x0f) + 1` descriptors follow; `0x10` repeat the last descriptor
/// `2 * u8` more times; `0x20` indirect (the chain in an indirect table, `u8` [`IndirectShape`]);
/// `0x40` loop back to the first; `0x80` wild next (`u8 j, u16 next`). Each descriptor is `u8 k`
/// then:
/// - `k & 3 == 0`: readable, the next `u16` bytes of the payload;
/// - `k & 3 == 1`: writable buffer of `u16` bytes (pre-filled with 0xAA);
/// - `k & 3 == 2`: anywhere: `u64 addr, u32 len`, writable if `k & 4`;
/// - `k & 3 == 3`: straddling the end of RAM: `u16 len`, writable if `k & 4`;
///
/// and `k & 8` adds VRING_DESC_F_INDIRECT to the descriptor: a payload descriptor then makes
/// the input's payload bytes an indirect table of any size (whose entries may be indirect again),
/// an "anywhere" one points at a table anywhere; inside the chain's own indirect table it is a
/// nested indirect descriptor. No device offers VIRTIO_F_INDIRECT_DESC, so each must refuse them.
///
/// Trailing fields come after the descriptors: repeat count, wild next, then the indirect
/// shape.
pub fn decode_chain(
    r: &mut Reader,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    bump: &mut Bump,
    payload: &[u8],
) -> (Vec<Desc>, ChainOpts) {
    let h = r.u8();
    let n = usize::from(h & 0x0f) + 1;
    let payload_at = bump.alloc(payload.len() as u64 + 64);
    let _ = mem.write_slice(payload, GuestAddress(payload_at));
    let mut cursor = 0u64;
    let mut descs = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.u8();
        let write = if k & 4 != 0 {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        let d = match k & 3 {
            0 => {
                let len = r.u16();
                let d = Desc {
                    addr: payload_at + cursor,
                    len: len.into(),
                    flags: 0,
                    next: 0,
                };
                cursor += u64::from(len);
                d
            }
            1 => {
                let len = r.u16();
                let at = bump.alloc(len.into());
                let fill = vec![0xaa; usize::from(len).min((mem_size - at) as usize)];
                let _ = mem.write_slice(&fill, GuestAddress(at));
                Desc {
                    addr: at,
                    len: len.into(),
                    flags: VRING_DESC_F_WRITE as u16,
                    next: 0,
                }
            }
            2 => {
                let d = Desc {
                    addr: r.u64(),
                    len: r.u32(),
                    flags: write,
                    next: 0,
                };
                bump.note_foreign(d.addr, d.len.into());
                d
            }
            _ => {
                let len = r.u16();
                let d = Desc {
                    addr: mem_size - u64::from(len / 2),
                    len: len.into(),
                    flags: write,
                    next: 0,
                };
                bump.note_foreign(d.addr, d.len.into());
                d
            }
        };
        let mut d = d;
        if k & 8 != 0 {
            d.flags |= VRING_DESC_F_INDIRECT as u16;
        }
        descs.push(d);
    }
    if h & 0x10 != 0 {
        let extra = 2 * usize::from(r.u8());
        let last = *descs.last().expect("at least one descriptor");
        descs.extend(std::iter::repeat_n(last, extra));
    }
    let wild_next = if h & 0x80 != 0 {
        Some((r.u8(), r.u16()))
    } else {
        None
    };
    let indirect = h & 0x20 != 0;
    let table = if indirect {
        IndirectShape(r.u8())
    } else {
        IndirectShape::default()
    };
    let opts = ChainOpts {
        indirect,
        loop_back: h & 0x40 != 0,
        wild_next,
        table_len: Some(table.len(descs.len())),
        table_next: table.next(),
    };
    (descs, opts)
}

/// A raw chain as the ops that send one read it: `u8 len`, `len` payload bytes, then the chain
/// layout ([`decode_chain`], in RAM of [`MEM_SIZE`]).
pub fn read_raw_chain(
    r: &mut Reader,
    mem: &GuestMemoryMmap,
    bump: &mut Bump,
) -> (Vec<Desc>, ChainOpts) {
    let len = usize::from(r.u8());
    let payload = r.bytes(len);
    decode_chain(r, mem, MEM_SIZE, bump, payload)
}

/// One descriptor of a chain, for [`encode_chain`].
#[derive(Debug, Clone, Copy)]
pub enum DescSpec {
    Payload(u16),
    Writable(u16),
    Anywhere { addr: u64, len: u32, write: bool },
    RamEnd { len: u16, write: bool },
}

/// Encodes a chain layout for [`decode_chain`] (1 to 16 descriptors); an indirect one gets the
/// exact table length.
pub fn encode_chain(w: &mut Writer, descs: &[DescSpec], indirect: bool, loop_back: bool) {
    let shape = indirect.then_some(IndirectShape::default());
    let plain: Vec<(DescSpec, bool)> = descs.iter().map(|d| (*d, false)).collect();
    encode_chain_with(w, &plain, shape, loop_back);
}

/// Encodes a chain layout for [`decode_chain`] (1 to 16 descriptors), each descriptor with
/// whether it carries VRING_DESC_F_INDIRECT itself, in an indirect table of `shape` if given.
pub fn encode_chain_with(
    w: &mut Writer,
    descs: &[(DescSpec, bool)],
    shape: Option<IndirectShape>,
    loop_back: bool,
) {
    assert!(!descs.is_empty() && descs.len() <= 16);
    let mut h = (descs.len() - 1) as u8;
    if shape.is_some() {
        h |= 0x20;
    }
    if loop_back {
        h |= 0x40;
    }
    w.u8(h);
    for &(d, indirect_flag) in descs {
        let flag = if indirect_flag { 8 } else { 0 };
        match d {
            DescSpec::Payload(len) => w.u8(flag).u16(len),
            DescSpec::Writable(len) => w.u8(1 | flag).u16(len),
            DescSpec::Anywhere { addr, len, write } => w
                .u8(2 | flag | if write { 4 } else { 0 })
                .u64(addr)
                .u32(len),
            DescSpec::RamEnd { len, write } => w.u8(3 | flag | if write { 4 } else { 0 }).u16(len),
        };
    }
    if let Some(shape) = shape {
        w.u8(shape.0);
    }
}

/// The bytes of raw descriptors `(addr, len, flags, next)`, for a payload that serves as an
/// indirect table.
pub fn raw_descs(descs: &[(u64, u32, u16, u16)]) -> Vec<u8> {
    descs
        .iter()
        .flat_map(|&(addr, len, flags, next)| Desc::new(addr, len, flags, next).encode())
        .collect()
}

// ----- the sound device on its queues -----

pub const CONTROLQ: usize = 0;
pub const EVENTQ: usize = 1;
pub const TXQ: usize = 2;
pub const RXQ: usize = 3;

/// The topology from one input byte: 0..=2 outputs, 0..=2 inputs (at least one stream),
/// 0..=3 jacks.
pub fn sound_config(b: u8) -> SoundConfig {
    let mut outputs = u32::from(b % 3);
    let inputs = u32::from((b / 3) % 3);
    if outputs + inputs == 0 {
        outputs = 1;
    }
    SoundConfig {
        backend: BackendConfig::Null,
        capture: (inputs > 0).then_some(CaptureConfig::Null),
        outputs,
        inputs,
        jacks: u32::from((b / 9) % 4),
    }
}

/// The rig an input's first two bytes choose: `u8 topology` (see [`sound_config`]) and
/// `u8 flags` (bit 0: EVENT_IDX).
pub fn rig_from_input(r: &mut Reader) -> SoundRig {
    let config = sound_config(r.u8());
    let flags = r.u8();
    sound_rig(config, flags & 1 != 0)
}

/// An activated virtio-snd device (null backend) on four queues in this thread's cached RAM,
/// its event loop run inline by each kick; the RAM goes back to the cache when the rig is
/// dropped (after the device's reset joined its threads).
pub fn sound_rig(config: SoundConfig, event_idx: bool) -> SoundRig {
    let layout = RigLayout {
        mem_size: MEM_SIZE,
        queue_stride: QUEUE_SPAN,
        queue_size: QSIZE,
        data_start: DATA_START,
        data_end: MEM_SIZE,
    };
    let sound = Sound::new(config).expect("null sound device");
    let mut rig = SoundRig::build(
        sound,
        SoundRig::features(event_idx),
        LoopMode::Inline,
        layout,
        Some(GuestRam::take()),
    );
    rig.on_drop(|mem, bump| GuestRam::give_back(mem.clone(), bump));
    rig
}

/// PCM control codes the structured ops choose from.
pub const PCM_CODES: [u32; 4] = [R_PCM_PREPARE, R_PCM_START, R_PCM_STOP, R_PCM_RELEASE];

/// Valid SET_PARAMS fields from 5 input bytes: format, channels (1..=8), rate, period frames
/// (1..=256) and periods per buffer (1..=8). A 1-frame period at 192 kHz is a 5 µs period.
pub struct ParamsChoice {
    pub format: u8,
    pub channels: u8,
    pub rate: u8,
    pub period_frames: u8,
    pub periods: u8,
}

impl ParamsChoice {
    pub fn read(r: &mut Reader) -> Self {
        ParamsChoice {
            format: r.u8(),
            channels: r.u8(),
            rate: r.u8(),
            period_frames: r.u8(),
            periods: r.u8(),
        }
    }

    pub fn write(&self, w: &mut Writer) {
        w.u8(self.format)
            .u8(self.channels)
            .u8(self.rate)
            .u8(self.period_frames)
            .u8(self.periods);
    }

    /// The SET_PARAMS request for `stream`.
    pub fn request(&self, stream: u32) -> [u8; 24] {
        let format = PcmFormat::ALL[usize::from(self.format) % PcmFormat::ALL.len()];
        let channels = 1 + self.channels % 8;
        let rate = RATES[usize::from(self.rate) % RATES.len()].0;
        let frame = format.sample_bytes() * u32::from(channels);
        let period = frame * (1 + u32::from(self.period_frames));
        let buffer = period * (1 + u32::from(self.periods % 8));
        canto_devices::virtio::snd::wire::SetParams {
            stream_id: stream,
            buffer_bytes: buffer,
            period_bytes: period,
            features: 0,
            channels,
            format: format.code(),
            rate,
        }
        .encode()
    }
}

/// Pauses the harness between requests so that period threads run in between: `n % 8 * 20` µs
/// (at most 140 µs; the smallest periods are 5 µs, so a short sleep covers as much as a long one),
/// or a yield for 0. The sleeps of one input add up to at most [`Pauses::BUDGET_US`]; past that a
/// pause is a yield. Without the budget the fuzzer learns to fill inputs with sleeps, which cost
/// wall time and no CPU: one long run spent ~60 % of its time asleep.
pub struct Pauses {
    left_us: u64,
}

impl Pauses {
    pub const BUDGET_US: u64 = 300;

    pub fn new() -> Self {
        Pauses {
            left_us: Self::BUDGET_US,
        }
    }

    pub fn pause(&mut self, n: u8) {
        let us = u64::from(n % 8) * 20;
        if us == 0 || us > self.left_us {
            std::thread::yield_now();
        } else {
            self.left_us -= us;
            std::thread::sleep(Duration::from_micros(us));
        }
    }
}

impl Default for Pauses {
    fn default() -> Self {
        Self::new()
    }
}

/// A mutex-protected set, for the fake ioevent registrar.
pub type Shared<T> = Arc<Mutex<T>>;

// ----- the vsock device on its queues, with host Unix sockets -----

pub const VSOCK_RXQ: usize = 0;
pub const VSOCK_TXQ: usize = 1;
pub const VSOCK_EVENTQ: usize = 2;
/// The guest's CID in [`VsockRig`].
pub const VSOCK_CID: u64 = 3;
/// The host port with a listener (`PATH_1000`) in [`VsockRig`].
pub const VSOCK_LISTEN_PORT: u32 = 1000;

/// An activated virtio-vsock device on three queues in fresh guest RAM, its Unix socket in a
/// fresh directory, and a host listener for guest connections to port [`VSOCK_LISTEN_PORT`].
pub struct VsockRig {
    pub mem: GuestMemoryMmap,
    pub vsock: Option<canto_devices::virtio::vsock::Vsock>,
    pub queues: Vec<DriverQueue>,
    kicks: Vec<vmm_sys_util::eventfd::EventFd>,
    manager: event_manager::EventManager<canto_devices::virtio::SharedSubscriber>,
    pub interrupt: Arc<InterruptRecorder>,
    pub bump: Bump,
    /// The input wrote to the rings through a writable descriptor over them.
    pub tampered: bool,
    pub socket: std::path::PathBuf,
    pub listener: std::os::unix::net::UnixListener,
    dir: std::path::PathBuf,
}

impl VsockRig {
    pub fn new() -> VsockRig {
        use canto_devices::virtio::{
            ActivateContext, ActiveQueue, SharedSubscriber, VirtioDevice, VIRTIO_F_VERSION_1,
        };
        use event_manager::{EventManager, SubscriberOps};
        use std::sync::atomic::{AtomicU64, Ordering};
        use vmm_sys_util::eventfd::EventFd;

        static RUN: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "canto-fuzz-vsock-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("socket directory");
        let socket = dir.join("v.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(dir.join(format!("v.sock_{VSOCK_LISTEN_PORT}")))
                .expect("host listener");
        listener.set_nonblocking(true).expect("non-blocking");
        let mem = GuestRam::take();
        let mut vsock =
            canto_devices::virtio::vsock::Vsock::new(VSOCK_CID, &socket).expect("vsock device");
        let interrupt = Arc::new(InterruptRecorder::default());
        let mut queues = Vec::new();
        let mut active = Vec::new();
        let mut kicks = Vec::new();
        for index in 0..3u16 {
            let (driver, queue) = DriverQueue::new(u64::from(index) * QUEUE_SPAN, QSIZE);
            let kick = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd");
            kicks.push(kick.try_clone().expect("eventfd clone"));
            queues.push(driver);
            active.push(ActiveQueue { index, queue, kick });
        }
        let subscribers = vsock
            .activate(ActivateContext {
                mem: mem.clone(),
                interrupt: interrupt.clone(),
                queues: active,
                acked_features: VIRTIO_F_VERSION_1,
            })
            .expect("activate");
        let mut manager = EventManager::<SharedSubscriber>::new().expect("event manager");
        for s in subscribers {
            manager.add_subscriber(s);
        }
        VsockRig {
            mem,
            vsock: Some(vsock),
            queues,
            kicks,
            manager,
            interrupt,
            bump: Bump::new(DATA_START, MEM_SIZE),
            tampered: false,
            socket,
            listener,
            dir,
        }
    }

    pub fn kick(&mut self, q: usize) {
        let _ = self.kicks[q % 3].write(1);
        self.run_events();
    }

    pub fn run_events(&mut self) {
        for _ in 0..64 {
            match self.manager.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Adds a chain to queue `q`; returns its head.
    pub fn add(&mut self, q: usize, descs: &[Desc], opts: ChainOpts) -> u16 {
        if descs
            .iter()
            .any(|d| d.flags & VRING_DESC_F_WRITE as u16 != 0 && d.addr < DATA_START)
        {
            self.tampered = true;
        }
        let q = &mut self.queues[q % 3];
        q.add_with(&self.mem, &mut self.bump, descs, opts)
    }
}

impl Default for VsockRig {
    fn default() -> Self {
        VsockRig::new()
    }
}

impl Drop for VsockRig {
    fn drop(&mut self) {
        if let Some(mut vsock) = self.vsock.take() {
            canto_devices::virtio::VirtioDevice::reset(&mut vsock);
        }
        GuestRam::give_back(self.mem.clone(), &self.bump);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
