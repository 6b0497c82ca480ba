//! Taking chains off a queue's available ring, the same way for every device: bounded work per
//! notification, EVENT_IDX-safe re-enabling of notifications, and a ring the driver has broken
//! told apart from one that is merely busy.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The ring is empty and notifications are on again.
    Empty,
    /// Chains are still available after the round limit: the caller comes back later (after the
    /// event loop has served the others).
    MoreLeft,
    /// The driver broke the ring: it announced more chains than the ring holds (virtio-queue
    /// refuses to iterate such a ring), or made available a head the descriptor table does not
    /// have (which no used entry can return). Nothing on it can be served until a device reset.
    Broken,
}

/// Whether the available index is more than a queue's worth ahead of what the device has taken
/// (or cannot be read): the ring no longer means anything (VIRTIO 1.2 §2.7.13.2).
fn avail_overrun(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => (idx - Wrapping(queue.next_avail())).0 > queue.size(),
        Err(_) => true,
    }
}

/// Pops every available chain and hands it to `each` (with the queue, to return chains as it
/// goes), in rounds of "notifications off, pop all, notifications on". At most `max_rounds`
/// rounds of at most a queue's worth each, so a driver that keeps adding cannot hold the event
/// loop.
pub fn drain_available<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    max_rounds: usize,
    mut each: impl FnMut(&mut Queue, DescriptorChain<&'m GuestMemoryMmap>),
) -> Drained {
    for _ in 0..max_rounds {
        if let Err(e) = queue.disable_notification(mem) {
            log::warn!("virtio: cannot disable notifications: {e}");
        }
        // Checked here: virtio-queue's pop refuses such a ring too, but only logs it and
        // returns nothing, which looks like an empty ring.
        if avail_overrun(queue, mem) {
            return Drained::Broken;
        }
        // A queue's worth at most: a driver re-publishing heads from another vCPU as fast as
        // they are popped would otherwise keep this loop going.
        for _ in 0..queue.size() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            if chain.head_index() >= queue.size() {
                // A head the descriptor table does not have: no used entry can name it, so the
                // driver would wait for it forever.
                return Drained::Broken;
            }
            each(queue, chain);
        }
        match queue.enable_notification(mem) {
            // More arrived while notifications were off (or the driver broke the ring since the
            // check: the next round finds out).
            Ok(true) => continue,
            Ok(false) => return Drained::Empty,
            Err(e) => {
                log::warn!("virtio: cannot enable notifications: {e}");
                return Drained::Empty;
            }
        }
    }
    Drained::MoreLeft
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const SIZE: u16 = 16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A queue with `count` one-descriptor chains made available.
    fn queue_with(
        mem: &GuestMemoryMmap,
        count: u16,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
        let mock = MockSplitQueue::new(mem, SIZE);
        let descs: Vec<RawDescriptor> = (0..count)
            .map(|i| {
                RawDescriptor::from(SplitDescriptor::new(0x8000 + u64::from(i) * 64, 64, 0, 0))
            })
            .collect();
        for (i, chunk) in descs.chunks(1).enumerate() {
            mock.add_desc_chains(chunk, i as u16).unwrap();
        }
        let queue = mock.create_queue().unwrap();
        (mock, queue)
    }

    #[test]
    fn pops_everything_then_reports_empty() {
        let mem = memory();
        let (_mock, mut queue) = queue_with(&mem, 5);
        let mut heads = Vec::new();
        let end = drain_available(&mut queue, &mem, 4, |q, chain| {
            heads.push(chain.head_index());
            q.add_used(&mem, chain.head_index(), 0).unwrap();
        });
        assert_eq!(end, Drained::Empty);
        assert_eq!(heads, [0, 1, 2, 3, 4]);
        assert_eq!(
            drain_available(&mut queue, &mem, 4, |_, _| panic!("nothing left")),
            Drained::Empty
        );
    }

    #[test]
    fn avail_index_past_the_ring_is_broken_not_busy() {
        let mem = memory();
        let (mock, mut queue) = queue_with(&mem, 1);
        for ahead in [SIZE + 1, 1000, u16::MAX] {
            mem.write_obj(ahead, mock.avail_addr().unchecked_add(2))
                .unwrap();
            let mut popped = 0;
            assert_eq!(
                drain_available(&mut queue, &mem, 4, |_, _| popped += 1),
                Drained::Broken,
                "avail idx {ahead}"
            );
            assert_eq!(popped, 0);
        }
        // Exactly a queue's worth ahead is a full ring, not a broken one.
        mem.write_obj(SIZE, mock.avail_addr().unchecked_add(2))
            .unwrap();
        let mut popped = 0;
        assert_eq!(
            drain_available(&mut queue, &mem, 4, |_, _| popped += 1),
            Drained::Empty
        );
        assert_eq!(popped, usize::from(SIZE));
    }

    #[test]
    fn a_head_outside_the_table_is_broken() {
        let mem = memory();
        let (mock, mut queue) = queue_with(&mem, 2);
        // The second chain's head is 999 in a 16-entry table.
        mem.write_obj(999u16, mock.avail_addr().unchecked_add(4 + 2))
            .unwrap();
        let mut heads = Vec::new();
        let end = drain_available(&mut queue, &mem, 4, |_, chain| {
            heads.push(chain.head_index())
        });
        assert_eq!(end, Drained::Broken);
        assert_eq!(heads, [0], "the chain before it is served");
    }

    #[test]
    fn a_driver_that_keeps_adding_gets_more_left() {
        let mem = memory();
        let (mock, mut queue) = queue_with(&mem, 1);
        // Each pop announces one more (the same descriptor, re-offered): never empty.
        let avail_idx = mock.avail_addr().unchecked_add(2);
        let mut popped = 0u16;
        let end = drain_available(&mut queue, &mem, 3, |q, chain| {
            popped += 1;
            q.add_used(&mem, chain.head_index(), 0).unwrap();
            let idx: u16 = mem.read_obj(avail_idx).unwrap();
            let slot = mock
                .avail_addr()
                .unchecked_add(4 + 2 * u64::from(idx % SIZE));
            mem.write_obj(0u16, slot).unwrap();
            mem.write_obj(idx.wrapping_add(1), avail_idx).unwrap();
        });
        assert_eq!(end, Drained::MoreLeft);
        assert_eq!(popped, 3 * SIZE, "a queue's worth per round");
    }
}
