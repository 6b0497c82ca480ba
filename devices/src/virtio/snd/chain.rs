//! Descriptor chains reduced to what the device keeps of them: the head index and the guest
//! ranges of the device-readable and device-writable parts, each range checked to lie in guest
//! RAM.
//!
//! Chains are walked once, with a fixed cap on the number of descriptors, so a chain never costs
//! more than a small bounded allocation whatever the guest writes. Data is copied later, when it
//! is consumed, straight between guest memory and the caller's buffer.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions,
};

/// The most descriptors a chain may have (the largest queue size Canto offers). Longer chains
/// (possible with indirect tables) are refused.
pub const MAX_SEGMENTS: usize = 256;

/// Why a chain was refused as a whole: the device cannot even trust its writable part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the chain has more than {MAX_SEGMENTS} descriptors")]
    TooManySegments,
    #[error("descriptor [{addr:#x}, +{len:#x}) is outside guest RAM")]
    OutsideRam { addr: u64, len: u32 },
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the chain does not end: it loops or is longer than the queue")]
    Unterminated,
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

/// Walks a chain: every descriptor must lie in guest RAM, device-readable descriptors come
/// first, and there are at most [`MAX_SEGMENTS`] of them. Zero-length descriptors are skipped.
pub fn read_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Result<ChainBuffers, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let mut readable = Segments::default();
    let mut writable = Segments::default();
    // virtio-queue stops walking after queue-size descriptors without saying so; a chain whose
    // last descriptor still points on is a loop or longer than the queue, and is refused.
    let mut last_has_next = false;
    for (count, desc) in chain.enumerate() {
        if count >= MAX_SEGMENTS {
            return Err(ChainError::TooManySegments);
        }
        last_has_next = desc.has_next();
        if desc.len() == 0 {
            continue;
        }
        let access = if desc.is_write_only() {
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
        let segment = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() {
            writable.push(segment);
        } else if writable.is_empty() {
            readable.push(segment);
        } else {
            return Err(ChainError::ReadableAfterWritable);
        }
    }
    if last_has_next {
        return Err(ChainError::Unterminated);
    }
    Ok(ChainBuffers {
        head,
        readable,
        writable,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    fn chain_of(
        mem: &GuestMemoryMmap,
        descs: &[(u64, u32, bool)],
    ) -> Result<ChainBuffers, ChainError> {
        let vq = MockSplitQueue::new(mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|(addr, len, write)| {
                RawDescriptor::from(Descriptor::new(
                    *addr,
                    *len,
                    if *write { WRITE } else { 0 },
                    0,
                ))
            })
            .collect();
        let chain = vq.build_desc_chain(&raw).unwrap();
        read_chain(chain, mem)
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    #[test]
    fn a_looping_chain_is_refused() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        // Descriptor 0 -> 1 -> 0 -> ...: the walk stops at the queue size with NEXT still set.
        let table = [
            RawDescriptor::from(Descriptor::new(0x1_0000, 4, NEXT, 1)),
            RawDescriptor::from(Descriptor::new(0x1_1000, 8, NEXT | WRITE, 1)),
        ];
        for (i, desc) in table.iter().enumerate() {
            vq.desc_table().store(i as u16, *desc).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut queue: Queue = vq.create_queue().unwrap();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        assert!(matches!(
            read_chain(chain, &mem),
            Err(ChainError::Unterminated)
        ));
    }

    #[test]
    fn splits_readable_and_writable_parts() {
        let mem = memory();
        let chain = chain_of(
            &mem,
            &[
                (0x1_0000, 4, false),
                (0x1_1000, 0, false),
                (0x1_2000, 100, false),
                (0x1_3000, 8, true),
            ],
        )
        .unwrap();
        assert_eq!(chain.readable.len(), 104);
        assert_eq!(chain.writable.len(), 8);
        assert_eq!(chain.readable.list.len(), 2);
    }

    #[test]
    fn reads_and_writes_across_segments() {
        let mem = memory();
        let chain = chain_of(&mem, &[(0x1_0000, 3, true), (0x1_1000, 5, true)]).unwrap();
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
            chain_of(&mem, &[(0x1f_fff0, 0x20, false)]),
            Err(ChainError::OutsideRam { .. })
        ));
        assert!(matches!(
            chain_of(&mem, &[(u64::MAX - 3, 8, true)]),
            Err(ChainError::OutsideRam { .. })
        ));
        assert_eq!(
            chain_of(&mem, &[(0x1_0000, 8, true), (0x1_1000, 4, false)]),
            Err(ChainError::ReadableAfterWritable)
        );
    }

    #[test]
    fn refuses_overlong_indirect_chains() {
        // The mock builds indirect tables at 0x3000_0000.
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x3000_0000), 0x1_0000),
        ])
        .unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        // An indirect table with MAX_SEGMENTS + 1 descriptors.
        let mut vq = vq;
        vq.add_indirect_chain((MAX_SEGMENTS + 1) as u16).unwrap();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        // The mock's descriptors point at 0x1000 with length 0x1000, inside RAM.
        assert_eq!(read_chain(chain, &mem), Err(ChainError::TooManySegments));
    }
}
