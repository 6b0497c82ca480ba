//! Descriptor chains reduced to what a device keeps of them: the head index and the guest
//! ranges of the device-readable and device-writable parts, each range checked to lie in guest
//! RAM. Every device walks its chains here.
//!
//! The walk reads the descriptor table itself (rather than virtio-queue's chain iterator) so it
//! can hold every guest-made chain to [`ChainLimits`]: a cap on descriptors and on bytes, and no
//! indirect table unless VIRTIO_F_INDIRECT_DESC was negotiated (virtio-queue follows one either
//! way). A chain therefore never costs more than a small bounded walk and allocation, whatever
//! the guest writes, and the walk reports how many descriptors it read so callers can budget
//! their work per notification. Data is copied later, when it is consumed, straight between
//! guest memory and the caller's buffer.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions,
};

/// The most descriptors a chain may have by default (the largest queue size Canto offers).
/// Longer chains are refused.
pub const MAX_SEGMENTS: usize = 256;
/// The size of one split-ring descriptor in guest memory.
const DESCRIPTOR_SIZE: u64 = 16;

/// What a device accepts of one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLimits {
    /// The most descriptors the walk reads (indirect ones included).
    pub max_descriptors: usize,
    /// The most bytes all the chain's buffers may add up to.
    pub max_bytes: u64,
    /// Whether the driver negotiated VIRTIO_F_INDIRECT_DESC.
    pub indirect: bool,
}

impl Default for ChainLimits {
    /// [`MAX_SEGMENTS`] descriptors, the spec's 4 GiB ceiling on a chain (VIRTIO 1.2 §2.7.5.2),
    /// no indirect tables.
    fn default() -> Self {
        ChainLimits {
            max_descriptors: MAX_SEGMENTS,
            max_bytes: u64::from(u32::MAX),
            indirect: false,
        }
    }
}

/// Why a chain was refused as a whole: the device cannot even trust its writable part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the chain has more descriptors than the device accepts")]
    TooManySegments,
    #[error("the chain's buffers add up to more bytes than the device accepts")]
    TooManyBytes,
    #[error("descriptor [{addr:#x}, +{len:#x}) is outside guest RAM")]
    OutsideRam { addr: u64, len: u32 },
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the chain does not end: it loops or is longer than its table")]
    Unterminated,
    #[error("descriptor {0} is outside its table")]
    IndexOutOfRange(u16),
    #[error("an indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated,
    #[error("a malformed indirect table (nested, chained on, empty or of an odd size)")]
    BadIndirectTable,
}

/// Where a queue's descriptor table is: the start of the chains [`read_chain`] walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorTable {
    pub addr: GuestAddress,
    /// The number of entries (the queue size).
    pub size: u16,
}

/// A guest memory range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// An ordered list of guest ranges, read or written as one byte stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    list: Vec<Segment>,
    total: u64,
}

impl Segments {
    /// The number of bytes in all ranges.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn push(&mut self, segment: Segment) {
        self.total += u64::from(segment.len);
        self.list.push(segment);
    }

    /// Calls `f(guest address, range in buf)` for each piece of `[offset, offset + len)`.
    fn for_each_piece<E>(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), E>,
        out_of_bounds: E,
    ) -> Result<(), E> {
        let end = offset
            .checked_add(len as u64)
            .filter(|end| *end <= self.total);
        if end.is_none() {
            return Err(out_of_bounds);
        }
        let mut skip = offset;
        let mut done = 0usize;
        for segment in &self.list {
            if done == len {
                break;
            }
            let seg_len = u64::from(segment.len);
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            // Both bounded by the segment's u32 length.
            let take = (seg_len - skip).min((len - done) as u64) as usize;
            // Cannot overflow: the range was checked to lie in guest RAM when the chain was read.
            let addr = segment.addr.unchecked_add(skip);
            f(addr, done..done + take)?;
            done += take;
            skip = 0;
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes starting `offset` bytes into the ranges.
    pub fn read_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        let len = dst.len();
        self.for_each_piece(
            offset,
            len,
            |addr, range| mem.read_slice(&mut dst[range], addr),
            GuestMemoryError::InvalidBackendAddress,
        )
    }

    /// Copies `src` into the ranges, starting `offset` bytes in.
    pub fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        src: &[u8],
    ) -> Result<(), GuestMemoryError> {
        self.for_each_piece(
            offset,
            src.len(),
            |addr, range| mem.write_slice(&src[range], addr),
            GuestMemoryError::InvalidBackendAddress,
        )
    }
}

/// A descriptor chain as the device keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBuffers {
    pub head: u16,
    pub readable: Segments,
    pub writable: Segments,
}

/// A walked chain, or why it was refused, with the number of descriptors the walk read either
/// way (the cost a caller counts against its budget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    pub head: u16,
    pub descriptors: usize,
    pub result: Result<ChainBuffers, ChainError>,
}

/// Walks the chain that starts at `head` in `table`: every descriptor must lie in guest RAM,
/// device-readable descriptors come first, and `limits` hold. Zero-length descriptors are
/// skipped (but counted).
pub fn read_chain(
    mem: &GuestMemoryMmap,
    table: DescriptorTable,
    head: u16,
    limits: &ChainLimits,
) -> Walk {
    let mut descriptors = 0;
    let result = walk(mem, table, head, limits, &mut descriptors);
    Walk {
        head,
        descriptors,
        result,
    }
}

fn walk(
    mem: &GuestMemoryMmap,
    mut table: DescriptorTable,
    head: u16,
    limits: &ChainLimits,
    descriptors: &mut usize,
) -> Result<ChainBuffers, ChainError> {
    let mut readable = Segments::default();
    let mut writable = Segments::default();
    let mut index = head;
    let mut in_indirect = false;
    // Descriptors read in the current table: a chain longer than its table loops.
    let mut in_table = 0usize;
    loop {
        if *descriptors >= limits.max_descriptors {
            return Err(ChainError::TooManySegments);
        }
        if in_table >= usize::from(table.size) {
            return Err(ChainError::Unterminated);
        }
        if index >= table.size {
            return Err(ChainError::IndexOutOfRange(index));
        }
        // Cannot overflow: index < 2^16 and the table was checked to lie in RAM (or is the
        // queue's, which the transport checked).
        let at = table.addr.checked_add(u64::from(index) * DESCRIPTOR_SIZE);
        let desc: Descriptor =
            at.and_then(|at| mem.read_obj(at).ok())
                .ok_or(ChainError::OutsideRam {
                    addr: table.addr.raw_value(),
                    len: u32::from(table.size) * DESCRIPTOR_SIZE as u32,
                })?;
        *descriptors += 1;
        in_table += 1;
        let flags = desc.flags();
        if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            if !limits.indirect {
                return Err(ChainError::IndirectNotNegotiated);
            }
            // VIRTIO 1.2 §2.7.5.3.1: no indirect inside an indirect table, never with NEXT.
            let entries = u64::from(desc.len()) / DESCRIPTOR_SIZE;
            if in_indirect
                || flags & VRING_DESC_F_NEXT as u16 != 0
                || u64::from(desc.len()) % DESCRIPTOR_SIZE != 0
                || entries == 0
                || entries > u64::from(u16::MAX)
            {
                return Err(ChainError::BadIndirectTable);
            }
            if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Read) {
                return Err(ChainError::OutsideRam {
                    addr: desc.addr().raw_value(),
                    len: desc.len(),
                });
            }
            table = DescriptorTable {
                addr: desc.addr(),
                // Checked above to fit.
                size: entries as u16,
            };
            in_indirect = true;
            in_table = 0;
            index = 0;
            continue;
        }
        let write_only = flags & VRING_DESC_F_WRITE as u16 != 0;
        if desc.len() != 0 {
            let access = if write_only {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(desc.addr(), desc.len() as usize, access) {
                return Err(ChainError::OutsideRam {
                    addr: desc.addr().raw_value(),
                    len: desc.len(),
                });
            }
            if readable.len() + writable.len() + u64::from(desc.len()) > limits.max_bytes {
                return Err(ChainError::TooManyBytes);
            }
            let segment = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if write_only {
                writable.push(segment);
            } else if writable.is_empty() {
                readable.push(segment);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
        }
        if flags & VRING_DESC_F_NEXT as u16 == 0 {
            return Ok(ChainBuffers {
                head,
                readable,
                writable,
            });
        }
        index = desc.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
    const TABLE: DescriptorTable = DescriptorTable {
        addr: GuestAddress(0x1000),
        size: 16,
    };

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    /// Writes `(addr, len, flags, next)` descriptors from entry 0 of the table at `at`.
    fn store(mem: &GuestMemoryMmap, at: GuestAddress, descs: &[(u64, u32, u16, u16)]) {
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            let desc = Descriptor::new(*addr, *len, *flags, *next);
            mem.write_obj(desc, at.unchecked_add(i as u64 * DESCRIPTOR_SIZE))
                .unwrap();
        }
    }

    /// A direct chain 0 -> 1 -> ... of `(addr, len, device-writable)` descriptors.
    fn chain_of(mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> Walk {
        let table: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(i, (addr, len, write))| {
                let next = if i + 1 < descs.len() { NEXT } else { 0 };
                let flags = next | if *write { WRITE } else { 0 };
                (*addr, *len, flags, i as u16 + 1)
            })
            .collect();
        store(mem, TABLE.addr, &table);
        read_chain(mem, TABLE, 0, &ChainLimits::default())
    }

    #[test]
    fn a_looping_chain_is_refused() {
        let mem = memory();
        // Descriptor 0 -> 1 -> 1 -> ...: longer than its table.
        store(
            &mem,
            TABLE.addr,
            &[(0x1_0000, 4, NEXT, 1), (0x1_1000, 8, NEXT | WRITE, 1)],
        );
        let walk = read_chain(&mem, TABLE, 0, &ChainLimits::default());
        assert_eq!(walk.result, Err(ChainError::Unterminated));
        assert_eq!(
            walk.descriptors,
            usize::from(TABLE.size),
            "bounded by the table"
        );
    }

    #[test]
    fn splits_readable_and_writable_parts() {
        let mem = memory();
        let walk = chain_of(
            &mem,
            &[
                (0x1_0000, 4, false),
                (0x1_1000, 0, false),
                (0x1_2000, 100, false),
                (0x1_3000, 8, true),
            ],
        );
        assert_eq!(walk.descriptors, 4);
        let chain = walk.result.unwrap();
        assert_eq!(chain.head, 0);
        assert_eq!(chain.readable.len(), 104);
        assert_eq!(chain.writable.len(), 8);
        assert_eq!(chain.readable.list.len(), 2);
    }

    #[test]
    fn reads_and_writes_across_segments() {
        let mem = memory();
        let chain = chain_of(&mem, &[(0x1_0000, 3, true), (0x1_1000, 5, true)])
            .result
            .unwrap();
        chain
            .writable
            .write_at(&mem, 1, &[1, 2, 3, 4, 5, 6])
            .unwrap();
        let mut back = [0u8; 8];
        chain.writable.read_at(&mem, 0, &mut back).unwrap();
        assert_eq!(back, [0, 1, 2, 3, 4, 5, 6, 0]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1_1000)).unwrap(), 3);
        assert!(chain.writable.write_at(&mem, 7, &[0, 0]).is_err());
        assert!(chain
            .writable
            .read_at(&mem, u64::MAX, &mut back[..1])
            .is_err());
    }

    #[test]
    fn refuses_ranges_outside_ram_and_bad_order() {
        let mem = memory();
        assert!(matches!(
            chain_of(&mem, &[(0x1f_fff0, 0x20, false)]).result,
            Err(ChainError::OutsideRam { .. })
        ));
        assert!(matches!(
            chain_of(&mem, &[(u64::MAX - 3, 8, true)]).result,
            Err(ChainError::OutsideRam { .. })
        ));
        assert_eq!(
            chain_of(&mem, &[(0x1_0000, 8, true), (0x1_1000, 4, false)]).result,
            Err(ChainError::ReadableAfterWritable)
        );
        // A next index past the table, and a table outside RAM.
        store(&mem, TABLE.addr, &[(0x1_0000, 4, NEXT, 16)]);
        assert_eq!(
            read_chain(&mem, TABLE, 0, &ChainLimits::default()).result,
            Err(ChainError::IndexOutOfRange(16))
        );
        let far = DescriptorTable {
            addr: GuestAddress(0x4000_0000),
            size: 16,
        };
        assert!(matches!(
            read_chain(&mem, far, 0, &ChainLimits::default()).result,
            Err(ChainError::OutsideRam { .. })
        ));
    }

    #[test]
    fn byte_and_descriptor_caps_hold() {
        let mem = memory();
        store(
            &mem,
            TABLE.addr,
            &[
                (0x1_0000, 100, NEXT, 1),
                (0x1_1000, 100, NEXT, 2),
                (0x1_2000, 8, WRITE, 0),
            ],
        );
        let limits = ChainLimits {
            max_bytes: 200,
            ..ChainLimits::default()
        };
        assert_eq!(
            read_chain(&mem, TABLE, 0, &limits).result,
            Err(ChainError::TooManyBytes)
        );
        let limits = ChainLimits {
            max_descriptors: 2,
            ..ChainLimits::default()
        };
        let walk = read_chain(&mem, TABLE, 0, &limits);
        assert_eq!(walk.result, Err(ChainError::TooManySegments));
        assert_eq!(walk.descriptors, 2);
    }

    /// The head descriptor points at an indirect table of `entries` readable descriptors,
    /// chained 0 -> 1 -> ....
    fn indirect_chain(mem: &GuestMemoryMmap, entries: u16) {
        let at = GuestAddress(0x8_0000);
        let table: Vec<_> = (0..entries)
            .map(|i| {
                let flags = if i + 1 < entries { NEXT } else { WRITE };
                (0x1_0000, 16, flags, i + 1)
            })
            .collect();
        store(mem, at, &table);
        store(
            mem,
            TABLE.addr,
            &[(at.0, u32::from(entries) * 16, INDIRECT, 0)],
        );
    }

    #[test]
    fn indirect_tables_only_when_negotiated() {
        let mem = memory();
        indirect_chain(&mem, 3);
        let walk = read_chain(&mem, TABLE, 0, &ChainLimits::default());
        assert_eq!(walk.result, Err(ChainError::IndirectNotNegotiated));
        assert_eq!(walk.descriptors, 1, "refused before its table is read");
        let limits = ChainLimits {
            indirect: true,
            ..ChainLimits::default()
        };
        let walk = read_chain(&mem, TABLE, 0, &limits);
        let chain = walk.result.unwrap();
        assert_eq!((chain.readable.len(), chain.writable.len()), (32, 16));
        assert_eq!(walk.descriptors, 4);
    }

    #[test]
    fn refuses_overlong_and_malformed_indirect_chains() {
        let mem = memory();
        let limits = ChainLimits {
            indirect: true,
            ..ChainLimits::default()
        };
        // An indirect table with MAX_SEGMENTS + 1 descriptors: the cap, not the table, ends it.
        indirect_chain(&mem, (MAX_SEGMENTS + 1) as u16);
        let walk = read_chain(&mem, TABLE, 0, &limits);
        assert_eq!(walk.result, Err(ChainError::TooManySegments));
        assert_eq!(walk.descriptors, MAX_SEGMENTS);
        // A table whose size is not a whole number of descriptors, one with NEXT, one nested.
        for (len, flags) in [(24, INDIRECT), (32, INDIRECT | NEXT), (0, INDIRECT)] {
            store(&mem, TABLE.addr, &[(0x8_0000, len, flags, 1)]);
            assert_eq!(
                read_chain(&mem, TABLE, 0, &limits).result,
                Err(ChainError::BadIndirectTable),
                "len {len} flags {flags:#x}"
            );
        }
        store(&mem, GuestAddress(0x8_0000), &[(0x8_0000, 16, INDIRECT, 0)]);
        store(&mem, TABLE.addr, &[(0x8_0000, 16, INDIRECT, 0)]);
        assert_eq!(
            read_chain(&mem, TABLE, 0, &limits).result,
            Err(ChainError::BadIndirectTable)
        );
    }
}
