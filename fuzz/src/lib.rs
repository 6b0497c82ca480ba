//! The harness the fuzz targets share: a byte reader that never fails (every input decodes to
//! something), guest RAM with the driver's side of split virtqueues, descriptor chains whose
//! layout the input chooses, and a virtio-snd device activated on those queues with its
//! event-loop subscriber run by a local event manager.
//!
//! Everything goes through the devices crate's public API: `VirtioDevice` (activate, reset) and
//! the subscriber it returns, fed with queue kicks through eventfds as the VMM's event loop does.
//!
//! The byte formats are written down here, next to the decoders, and [`Writer`] encodes them for
//! the seed corpora (`src/bin/seeds.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canto_devices::virtio::snd::wire::{
    PcmFormat, RATES, R_PCM_PREPARE, R_PCM_RELEASE, R_PCM_START, R_PCM_STOP,
};
use canto_devices::virtio::snd::{BackendConfig, CaptureConfig, Sound, SoundConfig};
use canto_devices::virtio::{
    ActivateContext, ActiveQueue, SharedSubscriber, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

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

// ----- guest RAM and the driver's side of split queues -----

/// Guest RAM of the sound targets: 8 MiB, so that a 4 MiB I/O message (the device's limit) and
/// one just above it fit.
pub const MEM_SIZE: u64 = 8 << 20;
/// Queue `i`'s rings start at `i * QUEUE_SPAN`; buffers come after all four.
pub const QUEUE_SPAN: u64 = 0x2000;
pub const DATA_START: u64 = 4 * QUEUE_SPAN;
/// Queue size the harness gives every queue.
pub const QSIZE: u16 = 256;

/// A bump allocator for buffers in guest RAM that wraps around (old buffers get reused, as a
/// driver's would). It also keeps track of the RAM a run may have written (see [`GuestRam`]).
pub struct Bump {
    next: u64,
    end: u64,
    start: u64,
    /// The end of the highest buffer handed out.
    high_water: u64,
    /// Descriptors the input placed itself (anywhere, or across the end of RAM): the device may
    /// have written there.
    foreign: Vec<(u64, u64)>,
}

impl Bump {
    pub fn new(start: u64, end: u64) -> Self {
        Bump {
            next: start,
            end,
            start,
            high_water: start,
            foreign: Vec::new(),
        }
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1).next_multiple_of(64);
        if self.next + len > self.end {
            self.next = self.start;
        }
        let at = self.next;
        self.next = (self.next + len).min(self.end);
        self.high_water = self.high_water.max(self.next);
        at
    }

    /// Records a descriptor the input placed at an address of its choice.
    pub fn note_foreign(&mut self, addr: u64, len: u64) {
        if self.foreign.len() < 4096 {
            self.foreign.push((addr, len));
        } else {
            // More than the list keeps: treat all of RAM as written.
            self.high_water = self.end;
        }
    }
}

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
        let zero = |from: u64, to: u64| {
            let to = to.min(MEM_SIZE);
            let mut at = from.min(to);
            let zeros = [0u8; 4096];
            while at < to {
                let n = (to - at).min(zeros.len() as u64);
                let _ = mem.write_slice(&zeros[..n as usize], GuestAddress(at));
                at += n;
            }
        };
        zero(0, bump.high_water);
        for &(addr, len) in &bump.foreign {
            zero(addr, addr.saturating_add(len));
        }
        CACHED_RAM.with(|cached| *cached.borrow_mut() = Some(mem));
    }
}

/// A descriptor as the harness writes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// How a chain is laid out beyond its descriptors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainOpts {
    /// The descriptors go in an indirect table; the ring holds one INDIRECT descriptor.
    pub indirect: bool,
    /// The last descriptor links back to the first (a loop the device must not follow forever).
    pub loop_back: bool,
    /// Descriptor `.0` gets NEXT and next index `.1`, whatever it points at.
    pub wild_next: Option<(u8, u16)>,
    /// With `indirect`: the length and flags of the ring's INDIRECT descriptor (see
    /// [`IndirectShape`]).
    pub table: IndirectShape,
}

/// How the ring's descriptor for an indirect table is written: the table's length may be exact
/// (16 bytes per descriptor written), longer, shorter, not a multiple of 16, zero or huge, and the
/// descriptor may also carry NEXT (both forbidden by VIRTIO 1.2 §2.7.5.3.1).
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

/// The driver's side of one split queue in guest RAM.
pub struct DriverQueue {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    next_desc: u16,
    pub avail_idx: u16,
    used_seen: u16,
    /// Chains made available, and used entries seen.
    pub published: u64,
    pub returned: u64,
    /// Heads published, for re-publishing one.
    pub heads: Vec<u16>,
}

impl DriverQueue {
    /// Lays a queue out at `base` (descriptor table, then the available ring at +0x1000, the
    /// used ring at +0x1400) and builds the device's `Queue` on it.
    pub fn new(base: u64, size: u16) -> (DriverQueue, Queue) {
        let desc = base;
        let avail = base + 0x1000;
        let used = base + 0x1400;
        let mut queue = Queue::new(size).expect("queue size");
        queue.try_set_size(size).expect("size");
        queue
            .try_set_desc_table_address(GuestAddress(desc))
            .expect("desc");
        queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .expect("avail");
        queue
            .try_set_used_ring_address(GuestAddress(used))
            .expect("used");
        queue.set_ready(true);
        let driver = DriverQueue {
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            published: 0,
            returned: 0,
            heads: Vec::new(),
        };
        (driver, queue)
    }

    fn encode_desc(d: &Desc) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        raw
    }

    /// Writes consecutive descriptors from `index` on in one go (a chain can have hundreds of
    /// descriptors, and one guest-memory write each was an eighth of snd_io's time).
    fn write_descs(&self, mem: &GuestMemoryMmap, table: u64, index: u16, descs: &[Desc]) {
        let raw: Vec<u8> = descs.iter().flat_map(Self::encode_desc).collect();
        let _ = mem.write_slice(&raw, GuestAddress(table + 16 * u64::from(index)));
    }

    /// Writes a chain (direct or through an indirect table) and makes it available; returns the
    /// head. `descs` must not be empty.
    pub fn add(
        &mut self,
        mem: &GuestMemoryMmap,
        bump: &mut Bump,
        descs: &[Desc],
        opts: ChainOpts,
    ) -> u16 {
        let head = self.next_desc;
        let n = descs.len();
        let link = |i: usize, d: &Desc, next: u16| {
            let mut d = *d;
            if i + 1 < n {
                d.flags |= VRING_DESC_F_NEXT as u16;
                d.next = next;
            }
            if i + 1 == n && opts.loop_back {
                d.flags |= VRING_DESC_F_NEXT as u16;
                d.next = 0; // fixed below for direct chains
            }
            if let Some((j, wild)) = opts.wild_next {
                if usize::from(j) % n == i {
                    d.flags |= VRING_DESC_F_NEXT as u16;
                    d.next = wild;
                }
            }
            d
        };
        if opts.indirect {
            let table = bump.alloc(16 * n as u64);
            let linked: Vec<Desc> = descs
                .iter()
                .enumerate()
                .map(|(i, d)| link(i, d, (i + 1) as u16))
                .collect();
            self.write_descs(mem, table, 0, &linked);
            let mut ring = Desc {
                addr: table,
                len: opts.table.len(n),
                flags: VRING_DESC_F_INDIRECT as u16,
                next: 0,
            };
            if opts.table.next() {
                ring.flags |= VRING_DESC_F_NEXT as u16;
                ring.next = (head + 1) % self.size;
            }
            self.write_descs(mem, self.desc, head, &[ring]);
            self.next_desc = (head + 1) % self.size;
        } else {
            // A direct chain holds at most a table's worth of descriptors.
            let n = n.min(usize::from(self.size));
            let linked: Vec<Desc> = descs
                .iter()
                .take(n)
                .enumerate()
                .map(|(i, d)| {
                    let index = (head + i as u16) % self.size;
                    let mut d = link(i, d, (index + 1) % self.size);
                    if i + 1 == n && opts.loop_back {
                        d.next = head;
                    }
                    d
                })
                .collect();
            // The chain wraps around the end of the table at most once.
            let first = linked.len().min(usize::from(self.size - head));
            self.write_descs(mem, self.desc, head, &linked[..first]);
            self.write_descs(mem, self.desc, 0, &linked[first..]);
            self.next_desc = (head + n as u16) % self.size;
        }
        self.publish(mem, head);
        head
    }

    /// Puts `head` in the available ring and moves the available index on.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2));
        self.published += 1;
        if self.heads.len() < 1024 {
            self.heads.push(head);
        }
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0)
    }

    /// Counts the used entries added since the last call.
    pub fn collect_used(&mut self, mem: &GuestMemoryMmap) -> u64 {
        let idx = self.used_idx(mem);
        let new = idx.wrapping_sub(self.used_seen);
        self.used_seen = idx;
        self.returned += u64::from(new);
        u64::from(new)
    }

    /// The used entries `(id, len)` added since the last call (counted like
    /// [`DriverQueue::collect_used`]); at most a ring's worth, the rest only counted.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx = self.used_idx(mem);
        let new = idx.wrapping_sub(self.used_seen);
        let shown = new.min(self.size);
        let entries = (0..shown)
            .map(|i| {
                let slot = self.used_seen.wrapping_add(new - shown + i) % self.size;
                let at = self.used + 4 + 8 * u64::from(slot);
                let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(u32::MAX);
                (id, len)
            })
            .collect();
        self.used_seen = idx;
        self.returned += u64::from(new);
        entries
    }

    /// Chains made available and not (yet) returned.
    pub fn outstanding(&mut self, mem: &GuestMemoryMmap) -> i64 {
        self.collect_used(mem);
        self.published as i64 - self.returned as i64
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
        table,
    };
    (descs, opts)
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
        .flat_map(|&(addr, len, flags, next)| {
            DriverQueue::encode_desc(&Desc {
                addr,
                len,
                flags,
                next,
            })
        })
        .collect()
}

// ----- the sound device on its queues -----

/// Counts interrupts and DEVICE_NEEDS_RESET reports.
#[derive(Default)]
pub struct CountingInterrupt {
    pub count: AtomicU64,
    pub needs_reset: AtomicU64,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, _kind: VirtioInterruptType) -> std::io::Result<()> {
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn needs_reset(&self) -> std::io::Result<()> {
        self.needs_reset.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub const CONTROLQ: usize = 0;
pub const EVENTQ: usize = 1;
pub const TXQ: usize = 2;
pub const RXQ: usize = 3;

/// An activated virtio-snd device (null backend) on four queues in fresh guest RAM.
pub struct SoundRig {
    pub mem: GuestMemoryMmap,
    pub sound: Sound,
    pub queues: Vec<DriverQueue>,
    kicks: Vec<EventFd>,
    manager: EventManager<SharedSubscriber>,
    pub interrupt: Arc<CountingInterrupt>,
    pub bump: Bump,
    pub streams: u32,
    /// The input wrote to the rings behind the device's back (directly, or through a writable
    /// descriptor over them): the used-ring accounting no longer means anything.
    pub tampered: bool,
}

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

impl SoundRig {
    /// The rig an input's first two bytes choose: `u8 topology` (see [`sound_config`]) and
    /// `u8 flags` (bit 0: EVENT_IDX).
    pub fn from_input(r: &mut Reader) -> SoundRig {
        let config = sound_config(r.u8());
        let flags = r.u8();
        SoundRig::new(config, flags & 1 != 0)
    }

    /// `event_idx`: whether the driver acked VIRTIO_F_RING_EVENT_IDX.
    pub fn new(config: SoundConfig, event_idx: bool) -> SoundRig {
        let streams = config.outputs + config.inputs;
        let mem = GuestRam::take();
        let mut sound = Sound::new(config).expect("null sound device");
        let interrupt = Arc::new(CountingInterrupt::default());
        let mut queues = Vec::new();
        let mut active = Vec::new();
        let mut kicks = Vec::new();
        for index in 0..4u16 {
            let (driver, queue) = DriverQueue::new(u64::from(index) * QUEUE_SPAN, QSIZE);
            let kick = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd");
            kicks.push(kick.try_clone().expect("eventfd clone"));
            queues.push(driver);
            active.push(ActiveQueue { index, queue, kick });
        }
        let mut acked_features = VIRTIO_F_VERSION_1;
        if event_idx {
            acked_features |= VIRTIO_F_RING_EVENT_IDX;
        }
        let subscribers = sound
            .activate(ActivateContext {
                mem: mem.clone(),
                interrupt: interrupt.clone(),
                queues: active,
                acked_features,
            })
            .expect("activate");
        let mut manager = EventManager::<SharedSubscriber>::new().expect("event manager");
        for s in subscribers {
            manager.add_subscriber(s);
        }
        SoundRig {
            mem,
            sound,
            queues,
            kicks,
            manager,
            interrupt,
            bump: Bump::new(DATA_START, MEM_SIZE),
            streams,
            tampered: false,
        }
    }

    /// Notifies queue `q` and runs the event loop until it has nothing left to do (the worker
    /// re-kicks itself when it yields with chains still available).
    pub fn kick(&mut self, q: usize) {
        let _ = self.kicks[q % 4].write(1);
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
        let q = &mut self.queues[q];
        q.add(&self.mem, &mut self.bump, descs, opts)
    }

    /// A well-formed control request with a `resp_len`-byte response; kicks and returns the
    /// status (or None if the device wrote none).
    pub fn control(&mut self, request: &[u8], resp_len: u32) -> Option<u32> {
        let req = self.bump.alloc(request.len() as u64);
        let _ = self.mem.write_slice(request, GuestAddress(req));
        let resp = self.bump.alloc(resp_len.into());
        let _ = self.mem.write_slice(&[0xaa; 4], GuestAddress(resp));
        let descs = [
            Desc {
                addr: req,
                len: request.len() as u32,
                flags: 0,
                next: 0,
            },
            Desc {
                addr: resp,
                len: resp_len,
                flags: VRING_DESC_F_WRITE as u16,
                next: 0,
            },
        ];
        self.add(CONTROLQ, &descs, ChainOpts::default());
        self.kick(CONTROLQ);
        let status: u32 = self.mem.read_obj(GuestAddress(resp)).ok()?;
        (status != 0xaaaa_aaaa).then_some(status)
    }

    pub fn pcm(&mut self, code: u32, stream: u32) -> Option<u32> {
        let mut request = code.to_le_bytes().to_vec();
        request.extend(stream.to_le_bytes());
        self.control(&request, 4)
    }

    /// Checks that every chain made available on `q` came back; the driver's view of the used
    /// ring is the only evidence.
    pub fn assert_all_returned(&mut self, q: usize, what: &str) {
        if self.tampered {
            return;
        }
        let left = self.queues[q].outstanding(&self.mem);
        assert!(
            left == 0,
            "{what}: {left} chain(s) on queue {q} not returned ({} published, {} returned)",
            self.queues[q].published,
            self.queues[q].returned
        );
    }

    /// Waits (bounded) until every chain on `q` came back; true if they did.
    pub fn wait_all_returned(&mut self, q: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.queues[q].outstanding(&self.mem) <= 0 {
                return true;
            }
            if std::time::Instant::now() > deadline {
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
            self.pcm(R_PCM_STOP, id);
            self.pcm(R_PCM_RELEASE, id);
        }
        if reprepare && !self.tampered {
            let mem = self.mem.clone();
            let outstanding =
                self.queues[TXQ].outstanding(&mem) + self.queues[RXQ].outstanding(&mem);
            if outstanding > 0 {
                for id in 0..self.streams {
                    self.pcm(R_PCM_PREPARE, id);
                    self.pcm(R_PCM_RELEASE, id);
                }
            }
        }
    }

    pub fn reset(&mut self) {
        self.sound.reset();
    }
}

impl Drop for SoundRig {
    fn drop(&mut self) {
        // Joins the period threads, the only writers besides this thread.
        self.sound.reset();
        GuestRam::give_back(self.mem.clone(), &self.bump);
    }
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
