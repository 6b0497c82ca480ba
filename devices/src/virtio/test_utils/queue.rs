//! The driver's side of a split virtqueue in guest RAM (VIRTIO 1.2 §2.7), and the guest RAM it
//! lives in.
//!
//! The layout is the one the specification gives: descriptor table, available ring (flags, idx,
//! `size` entries, `used_event`), then the 4-byte aligned used ring (flags, idx, `size` entries,
//! `avail_event`). virtio-queue 0.18's `MockSplitQueue` starts its used ring `size` bytes after
//! the available ring's entries, which take `2 * size` bytes: the two rings overlap, so the
//! drivers here lay their rings out themselves.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// A descriptor as the fake driver writes it. [`DriverQueue::add`] and
/// [`DriverQueue::add_with`] set NEXT and `next` to link a chain; [`DriverQueue::write_descs`]
/// writes them as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
        Desc {
            addr,
            len,
            flags,
            next,
        }
    }

    /// A buffer the device reads.
    pub fn readable(addr: u64, len: u32) -> Desc {
        Desc::new(addr, len, 0, 0)
    }

    /// A buffer the device writes.
    pub fn writable(addr: u64, len: u32) -> Desc {
        Desc::new(addr, len, WRITE, 0)
    }

    /// The descriptor's 16 bytes as they lie in a table.
    pub fn encode(&self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&self.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..14].copy_from_slice(&self.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&self.next.to_le_bytes());
        raw
    }
}

/// `(address, length, device-writable)`.
impl From<(u64, u32, bool)> for Desc {
    fn from((addr, len, write): (u64, u32, bool)) -> Desc {
        if write {
            Desc::writable(addr, len)
        } else {
            Desc::readable(addr, len)
        }
    }
}

/// How a chain is laid out beyond its descriptors (for [`DriverQueue::add_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainOpts {
    /// The descriptors go in an indirect table; the ring holds one INDIRECT descriptor.
    pub indirect: bool,
    /// The last descriptor links back to the first (a loop the device must not follow forever).
    pub loop_back: bool,
    /// Descriptor `.0` (modulo the chain's length) gets NEXT and next index `.1`, whatever it
    /// points at.
    pub wild_next: Option<(u8, u16)>,
    /// With `indirect`: the table length the ring's INDIRECT descriptor announces, if not the
    /// exact 16 bytes per descriptor written (longer, shorter, not a multiple of 16, zero or
    /// huge: VIRTIO 1.2 §2.7.5.3.1 forbids all but exact).
    pub table_len: Option<u32>,
    /// With `indirect`: the ring's INDIRECT descriptor also has NEXT, to the slot after it
    /// (also forbidden by §2.7.5.3.1).
    pub table_next: bool,
}

/// A bump allocator for buffers in guest RAM that wraps around (old buffers get reused, as a
/// driver's would). It also keeps track of the RAM a run may have written, for
/// [`Bump::zero_written`].
#[derive(Debug, Clone)]
pub struct Bump {
    next: u64,
    end: u64,
    start: u64,
    /// The end of the highest buffer handed out.
    high_water: u64,
    /// Descriptors placed by hand (anywhere, or across the end of RAM): the device may have
    /// written there.
    foreign: Vec<(u64, u64)>,
}

impl Bump {
    /// Hands out `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        Bump {
            next: start,
            end,
            start,
            high_water: start,
            foreign: Vec::new(),
        }
    }

    /// `len` bytes (at least 1, rounded up to 64), from the start again when the end is reached.
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

    /// Records a descriptor placed at an address of the caller's choice.
    pub fn note_foreign(&mut self, addr: u64, len: u64) {
        if self.foreign.len() < 4096 {
            self.foreign.push((addr, len));
        } else {
            // More than the list keeps: treat all of RAM as written.
            self.high_water = self.end;
        }
    }

    /// Zeroes everything below the highest buffer handed out (rings included) and every foreign
    /// descriptor, so that reused RAM looks as fresh RAM does.
    pub fn zero_written(&self, mem: &GuestMemoryMmap, mem_size: u64) {
        let zero = |from: u64, to: u64| {
            let to = to.min(mem_size);
            let mut at = from.min(to);
            let zeros = [0u8; 4096];
            while at < to {
                let n = (to - at).min(zeros.len() as u64);
                let _ = mem.write_slice(&zeros[..n as usize], GuestAddress(at));
                at += n;
            }
        };
        zero(0, self.high_water);
        for &(addr, len) in &self.foreign {
            zero(addr, addr.saturating_add(len));
        }
    }
}

/// Zero-filled guest RAM at guest address 0 with a [`Bump`] allocator over its data area.
pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    pub bump: Bump,
    pub size: u64,
}

impl GuestRam {
    /// `size` bytes of RAM; buffers come from `[data_start, size)`.
    pub fn new(size: u64, data_start: u64) -> GuestRam {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).expect("guest RAM");
        GuestRam::with_memory(mem, size, data_start)
    }

    /// On RAM the caller mapped (of `size` bytes at 0, zero-filled).
    pub fn with_memory(mem: GuestMemoryMmap, size: u64, data_start: u64) -> GuestRam {
        GuestRam {
            mem,
            bump: Bump::new(data_start, size),
            size,
        }
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        self.bump.alloc(len)
    }

    /// A buffer holding `data`.
    pub fn alloc_with(&mut self, data: &[u8]) -> u64 {
        let at = self.bump.alloc(data.len() as u64);
        self.mem
            .write_slice(data, GuestAddress(at))
            .expect("a bump buffer is in guest RAM");
        at
    }

    /// Whether `len` bytes at `addr` are all zero.
    pub fn all_zero(&self, addr: u64, len: usize) -> bool {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().all(|b| *b == 0)
    }

    /// See [`Bump::zero_written`].
    pub fn zero_written(&self) {
        self.bump.zero_written(&self.mem, self.size);
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
    /// The first 1024 heads published, for re-publishing one.
    pub heads: Vec<u16>,
}

impl DriverQueue {
    /// The bytes a queue of `size` takes in the layout of [`DriverQueue::new`].
    pub fn span(size: u16) -> u64 {
        let size = u64::from(size);
        let used = (16 * size + 6 + 2 * size).next_multiple_of(4);
        used + 6 + 8 * size
    }

    /// Lays a queue out at `base` (descriptor table, available ring, used ring, each right
    /// after the other, see the module's doc) and builds the device's `Queue` on it.
    pub fn new(base: u64, size: u16) -> (DriverQueue, Queue) {
        let driver = DriverQueue::at(base, size);
        let queue = driver.device_queue();
        (driver, queue)
    }

    /// The driver's side alone, laid out as by [`DriverQueue::new`] (for a device that builds
    /// its `Queue` itself from what the driver wrote, as through the PCI transport).
    pub fn at(base: u64, size: u16) -> DriverQueue {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        DriverQueue::with_layout(base, avail, used, size)
    }

    /// The driver's side with the rings where the caller puts them.
    pub fn with_layout(desc: u64, avail: u64, used: u64, size: u16) -> DriverQueue {
        DriverQueue {
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
        }
    }

    /// A ready device `Queue` on these rings.
    pub fn device_queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).expect("a valid queue size");
        queue.set_size(self.size);
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .expect("descriptor table address");
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail))
            .expect("available ring address");
        queue
            .try_set_used_ring_address(GuestAddress(self.used))
            .expect("used ring address");
        queue.set_ready(true);
        queue
    }

    /// Writes descriptors as they are (flags and next included) from table index `index` on
    /// in one go (a chain can have hundreds of descriptors); what lies outside RAM is not
    /// written.
    pub fn write_descs(&self, mem: &GuestMemoryMmap, index: u16, descs: &[Desc]) {
        Self::write_table(mem, self.desc, index, descs);
    }

    /// Writes descriptors as they are into the table at `table` (an indirect one, say), from
    /// entry `index` on; what lies outside RAM is not written.
    pub fn write_table(mem: &GuestMemoryMmap, table: u64, index: u16, descs: &[Desc]) {
        let raw: Vec<u8> = descs.iter().flat_map(Desc::encode).collect();
        let _ = mem.write_slice(&raw, GuestAddress(table + 16 * u64::from(index)));
    }

    /// Writes `descs` as one chain linked through consecutive table entries from `index` on
    /// (wrapping at the table's end), without making it available; see [`DriverQueue::publish`].
    pub fn write_chain_at<D: Into<Desc> + Copy>(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        descs: &[D],
    ) {
        for (i, d) in descs.iter().enumerate() {
            let at = (index + i as u16) % self.size;
            let mut d: Desc = (*d).into();
            d.next = (at + 1) % self.size;
            if i + 1 < descs.len() {
                d.flags |= NEXT;
            }
            self.write_descs(mem, at, &[d]);
        }
    }

    /// Writes a direct chain after the last one and makes it available; returns its head.
    pub fn add<D: Into<Desc> + Copy>(&mut self, mem: &GuestMemoryMmap, descs: &[D]) -> u16 {
        let head = self.next_desc;
        self.write_chain_at(mem, head, descs);
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// Writes a chain (direct or through an indirect table from `bump`, see [`ChainOpts`]) and
    /// makes it available; returns the head. `descs` must not be empty; a direct chain takes at
    /// most a table's worth of them.
    pub fn add_with(
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
                d.flags |= NEXT;
                d.next = next;
            }
            if i + 1 == n && opts.loop_back {
                d.flags |= NEXT;
                d.next = 0; // fixed below for direct chains
            }
            if let Some((j, wild)) = opts.wild_next {
                if usize::from(j) % n == i {
                    d.flags |= NEXT;
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
            Self::write_table(mem, table, 0, &linked);
            let len = opts.table_len.unwrap_or((16 * n) as u32);
            let mut ring = Desc::new(table, len, INDIRECT, 0);
            if opts.table_next {
                ring.flags |= NEXT;
                ring.next = (head + 1) % self.size;
            }
            self.write_descs(mem, head, &[ring]);
            self.next_desc = (head + 1) % self.size;
        } else {
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
            self.write_descs(mem, head, &linked[..first]);
            self.write_descs(mem, 0, &linked[first..]);
            self.next_desc = (head + n as u16) % self.size;
        }
        self.publish(mem, head);
        head
    }

    /// Writes `descs` as they are at table index `offset` on and makes available every one not
    /// reached through its predecessor's NEXT (as virtio-queue's `add_desc_chains` does).
    pub fn add_table(&mut self, mem: &GuestMemoryMmap, offset: u16, descs: &[Desc]) {
        self.write_descs(mem, offset, descs);
        for (i, _) in descs.iter().enumerate() {
            if i == 0 || descs[i - 1].flags & NEXT == 0 {
                self.publish(mem, offset + i as u16);
            }
        }
    }

    /// Puts `head` in the available ring and moves the available index on (no notification).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot))
            .expect("the available ring is in guest RAM");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The entry before the index, for a device on another thread.
        fence(Ordering::SeqCst);
        self.publish_avail_idx(mem, self.avail_idx);
        self.published += 1;
        if self.heads.len() < 1024 {
            self.heads.push(head);
        }
    }

    /// Publishes `idx` as the available index without adding anything (a broken driver).
    pub fn publish_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2))
            .expect("the available ring is in guest RAM");
    }

    /// Sets `used_event` (EVENT_IDX): interrupt once the used index passes it.
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, value: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(value, GuestAddress(at))
            .expect("the available ring is in guest RAM");
    }

    /// `avail_event` (EVENT_IDX): the device wants a kick once the available index passes it.
    pub fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        mem.read_obj(GuestAddress(at))
            .expect("the used ring is in guest RAM")
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        let idx = mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("the used ring is in guest RAM");
        // The index before the entries it covers.
        fence(Ordering::SeqCst);
        idx
    }

    /// Used ring entry `n` (counted from the queue's start, modulo its size): (id, length).
    pub fn used_entry(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        let id = mem.read_obj(GuestAddress(at)).expect("used ring");
        let len = mem.read_obj(GuestAddress(at + 4)).expect("used ring");
        (id, len)
    }

    fn read_next_used(&mut self, mem: &GuestMemoryMmap) -> (u16, u32) {
        let (id, len) = self.used_entry(mem, self.used_seen);
        self.used_seen = self.used_seen.wrapping_add(1);
        self.returned += 1;
        (id as u16, len)
    }

    /// The next used entry (head, length) not seen yet, if any.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        (self.used_seen != self.used_idx(mem)).then(|| self.read_next_used(mem))
    }

    /// The used entries (head, length) returned since the last look.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        self.take_used_into(mem, &mut out);
        out
    }

    /// The used entries `(id, len)` as the device wrote them (ids not cut to 16 bits) since the
    /// last look, at most a ring's worth: the newest ones, the rest only counted. For a used
    /// index that may have been written by hand (a fuzz input) and jumped by up to 65535; reads
    /// outside RAM give `u32::MAX`.
    pub fn take_used_raw(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx = mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0u16);
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

    /// [`DriverQueue::take_used`], appended to `out` (no allocation once `out` is large enough).
    pub fn take_used_into(&mut self, mem: &GuestMemoryMmap, out: &mut Vec<(u16, u32)>) {
        let idx = self.used_idx(mem);
        while self.used_seen != idx {
            out.push(self.read_next_used(mem));
        }
    }

    /// Counts the used entries added since the last look, without reading them.
    pub fn collect_used(&mut self, mem: &GuestMemoryMmap) -> u64 {
        let idx = mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0u16);
        let new = idx.wrapping_sub(self.used_seen);
        self.used_seen = idx;
        self.returned += u64::from(new);
        u64::from(new)
    }

    /// Chains made available and not (yet) returned.
    pub fn outstanding(&mut self, mem: &GuestMemoryMmap) -> i64 {
        self.collect_used(mem);
        self.published as i64 - self.returned as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rings do not overlap, and the device's `Queue` sees them where the driver wrote
    /// them: the used ring starts after the available ring's `used_event`.
    #[test]
    fn the_layout_keeps_the_rings_apart() {
        for size in [1u16, 16, 256, 32768] {
            let q = DriverQueue::at(0x1000, size);
            assert_eq!(q.avail, 0x1000 + 16 * u64::from(size));
            let avail_end = q.avail + 4 + 2 * u64::from(size) + 2;
            assert!(q.used >= avail_end, "size {size}");
            assert_eq!(q.used % 4, 0);
            assert_eq!(
                q.used + 4 + 8 * u64::from(size) + 2,
                0x1000 + DriverQueue::span(size)
            );
        }
    }

    /// Three batches of 200 two-descriptor chains through a 256-entry queue, each batch made
    /// available before the device pops any: the device pops every head the driver published,
    /// in order, and its used entries never land in the available ring (the mock queue's layout
    /// fails this: its used ring overlaps available entries 128 and up).
    #[test]
    fn full_batches_round_trip_without_the_rings_overlapping() {
        let ram = GuestRam::new(1 << 20, 0x2_0000);
        let (mut driver, mut queue) = DriverQueue::new(0, 256);
        for batch in 0..3u32 {
            let heads: Vec<u16> = (0..200)
                .map(|_| driver.add(&ram.mem, &[(0x3_0000, 4, false), (0x3_1000, 8, true)]))
                .collect();
            for (i, &head) in heads.iter().enumerate() {
                let chain = queue.pop_descriptor_chain(&ram.mem).expect("a chain");
                assert_eq!(chain.head_index(), head, "batch {batch}, chain {i}");
                queue.add_used(&ram.mem, head, batch).unwrap();
            }
            assert!(queue.pop_descriptor_chain(&ram.mem).is_none());
            let used = driver.take_used(&ram.mem);
            let want: Vec<(u16, u32)> = heads.iter().map(|&h| (h, batch)).collect();
            assert_eq!(used, want, "batch {batch}");
        }
        assert_eq!(driver.outstanding(&ram.mem), 0);
    }

    #[test]
    fn indirect_and_looping_chains_are_written_as_asked() {
        let mut ram = GuestRam::new(1 << 20, 0x2_0000);
        let (mut driver, _queue) = DriverQueue::new(0, 16);
        let descs = [Desc::readable(0x3_0000, 4), Desc::writable(0x3_1000, 8)];
        let opts = ChainOpts {
            indirect: true,
            ..ChainOpts::default()
        };
        let head = driver.add_with(&ram.mem, &mut ram.bump, &descs, opts);
        let ring: [u8; 16] = ram
            .mem
            .read_obj(GuestAddress(driver.desc + 16 * u64::from(head)))
            .unwrap();
        assert_eq!(u16::from_le_bytes([ring[12], ring[13]]), INDIRECT);
        assert_eq!(u32::from_le_bytes(ring[8..12].try_into().unwrap()), 32);
        let opts = ChainOpts {
            loop_back: true,
            ..ChainOpts::default()
        };
        let head = driver.add_with(&ram.mem, &mut ram.bump, &descs, opts);
        let last: [u8; 16] = ram
            .mem
            .read_obj(GuestAddress(driver.desc + 16 * u64::from(head + 1)))
            .unwrap();
        assert_eq!(u16::from_le_bytes([last[12], last[13]]), WRITE | NEXT);
        assert_eq!(u16::from_le_bytes([last[14], last[15]]), head);
        assert_eq!(driver.avail_idx, 2);
    }

    /// The ring's INDIRECT descriptor announces the table length asked for, and carries NEXT to
    /// the slot after it when asked (the fuzz targets' malformed tables).
    #[test]
    fn an_indirect_table_descriptor_is_shaped_as_asked() {
        let mut ram = GuestRam::new(1 << 20, 0x2_0000);
        let (mut driver, _queue) = DriverQueue::new(0, 16);
        let descs = [Desc::readable(0x3_0000, 4), Desc::writable(0x3_1000, 8)];
        let ring_desc = |driver: &DriverQueue, ram: &GuestRam, head: u16| {
            let raw: [u8; 16] = ram
                .mem
                .read_obj(GuestAddress(driver.desc + 16 * u64::from(head)))
                .unwrap();
            (
                u32::from_le_bytes(raw[8..12].try_into().unwrap()),
                u16::from_le_bytes([raw[12], raw[13]]),
                u16::from_le_bytes([raw[14], raw[15]]),
            )
        };
        let opts = ChainOpts {
            indirect: true,
            table_len: Some(u32::MAX),
            ..ChainOpts::default()
        };
        let head = driver.add_with(&ram.mem, &mut ram.bump, &descs, opts);
        assert_eq!(ring_desc(&driver, &ram, head), (u32::MAX, INDIRECT, 0));
        let opts = ChainOpts {
            indirect: true,
            table_len: Some(33),
            table_next: true,
            ..ChainOpts::default()
        };
        let head = driver.add_with(&ram.mem, &mut ram.bump, &descs, opts);
        assert_eq!(
            ring_desc(&driver, &ram, head),
            (33, INDIRECT | NEXT, head + 1)
        );
    }

    /// `take_used_raw` keeps ids as the device wrote them (not cut to 16 bits) and shows at most
    /// a ring's worth of a used index that jumped, while counting all of it.
    #[test]
    fn raw_used_entries_are_bounded_and_uncut() {
        let ram = GuestRam::new(1 << 20, 0x2_0000);
        let mut driver = DriverQueue::at(0, 16);
        let entry = driver.used + 4;
        ram.mem.write_obj(0x1_0003u32, GuestAddress(entry)).unwrap();
        ram.mem.write_obj(7u32, GuestAddress(entry + 4)).unwrap();
        ram.mem
            .write_obj(1u16, GuestAddress(driver.used + 2))
            .unwrap();
        assert_eq!(driver.take_used_raw(&ram.mem), vec![(0x1_0003, 7)]);
        ram.mem
            .write_obj(1u16.wrapping_add(60000), GuestAddress(driver.used + 2))
            .unwrap();
        assert_eq!(driver.take_used_raw(&ram.mem).len(), 16);
        assert_eq!(driver.returned, 60001);
        assert!(driver.take_used_raw(&ram.mem).is_empty());
    }
}
