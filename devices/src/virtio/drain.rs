//! Taking chains off a queue's available ring, the same way for every device: bounded work per
//! notification (a budget counted in descriptors walked), every chain walked with the device's
//! [`ChainLimits`], EVENT_IDX-safe re-enabling of notifications, and a ring the driver has broken
//! told apart from one that is merely busy.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::chain::{read_chain, ChainLimits, DescriptorTable, Walk};

/// The descriptors one notification may make a device walk, over all its queues' drains. A full
/// 256-entry queue of 3-descriptor chains (a sound period each) takes 768; a driver that offers
/// more waits for the next turn of the event loop.
pub const DESCRIPTORS_PER_KICK: usize = 2048;
/// Rounds of "notifications off, pop, notifications on" per drain, whatever the budget: a ring
/// whose available index keeps moving while nothing can be popped ends here.
const MAX_ROUNDS: usize = 8;

/// What one notification may still cost, in descriptors walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KickBudget {
    descriptors_left: usize,
}

impl KickBudget {
    /// A fresh budget of [`DESCRIPTORS_PER_KICK`].
    pub fn new() -> KickBudget {
        KickBudget::with_descriptors(DESCRIPTORS_PER_KICK)
    }

    pub fn with_descriptors(descriptors: usize) -> KickBudget {
        KickBudget {
            descriptors_left: descriptors,
        }
    }

    pub fn is_spent(&self) -> bool {
        self.descriptors_left == 0
    }

    fn spend(&mut self, descriptors: usize) {
        // A refused chain still cost at least its head.
        self.descriptors_left = self.descriptors_left.saturating_sub(descriptors.max(1));
    }
}

impl Default for KickBudget {
    fn default() -> Self {
        KickBudget::new()
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The ring is empty and notifications are on again.
    Empty,
    /// Chains are still available when the budget ran out: the caller comes back later (after
    /// the event loop has served the others).
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

/// Pops every available chain, walks it with `limits` and hands the walk to `each` (with the
/// queue, to return chains as it goes), in rounds of "notifications off, pop all, notifications
/// on", until the ring is empty or `budget` is spent, so a driver that keeps adding cannot hold
/// the event loop.
pub fn drain_available(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    limits: &ChainLimits,
    budget: &mut KickBudget,
    mut each: impl FnMut(&mut Queue, Walk),
) -> Drained {
    let table = DescriptorTable {
        addr: GuestAddress(queue.desc_table()),
        size: queue.size(),
    };
    for _ in 0..MAX_ROUNDS {
        if let Err(e) = queue.disable_notification(mem) {
            log::debug!("virtio: cannot disable notifications: {e}");
        }
        // Checked here: virtio-queue's pop refuses such a ring too, but only logs it and
        // returns nothing, which looks like an empty ring.
        if avail_overrun(queue, mem) {
            return Drained::Broken;
        }
        // A queue's worth at most per round: a driver re-publishing heads from another vCPU as
        // fast as they are popped would otherwise keep this loop going.
        for _ in 0..queue.size() {
            if budget.is_spent() {
                return Drained::MoreLeft;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            if head >= queue.size() {
                // A head the descriptor table does not have: no used entry can name it, so the
                // driver would wait for it forever.
                return Drained::Broken;
            }
            let walk = read_chain(mem, table, head, limits);
            budget.spend(walk.descriptors);
            each(queue, walk);
        }
        match queue.enable_notification(mem) {
            // More arrived while notifications were off (or the driver broke the ring since the
            // check: the next round finds out).
            Ok(true) => continue,
            Ok(false) => return Drained::Empty,
            Err(e) => {
                log::debug!("virtio: cannot enable notifications: {e}");
                return Drained::Empty;
            }
        }
    }
    Drained::MoreLeft
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    use crate::virtio::test_utils::{Desc, DriverQueue};

    const SIZE: u16 = 16;

    fn limits() -> ChainLimits {
        ChainLimits::default()
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A queue with `count` one-descriptor chains made available.
    fn queue_with(mem: &GuestMemoryMmap, count: u16) -> (DriverQueue, Queue) {
        let (mut driver, queue) = DriverQueue::new(0, SIZE);
        for i in 0..count {
            driver.add(mem, &[Desc::readable(0x8000 + u64::from(i) * 64, 64)]);
        }
        (driver, queue)
    }

    #[test]
    fn pops_everything_then_reports_empty() {
        let mem = memory();
        let (_mock, mut queue) = queue_with(&mem, 5);
        let mut heads = Vec::new();
        let end = drain_available(
            &mut queue,
            &mem,
            &limits(),
            &mut KickBudget::new(),
            |q, walk| {
                heads.push(walk.head);
                q.add_used(&mem, walk.head, 0).unwrap();
            },
        );
        assert_eq!(end, Drained::Empty);
        assert_eq!(heads, [0, 1, 2, 3, 4]);
        assert_eq!(
            drain_available(
                &mut queue,
                &mem,
                &limits(),
                &mut KickBudget::new(),
                |_, _| { panic!("nothing left") }
            ),
            Drained::Empty
        );
    }

    #[test]
    fn avail_index_past_the_ring_is_broken_not_busy() {
        let mem = memory();
        let (driver, mut queue) = queue_with(&mem, 1);
        for ahead in [SIZE + 1, 1000, u16::MAX] {
            driver.publish_avail_idx(&mem, ahead);
            let mut popped = 0;
            assert_eq!(
                drain_available(
                    &mut queue,
                    &mem,
                    &limits(),
                    &mut KickBudget::new(),
                    |_, _| popped += 1
                ),
                Drained::Broken,
                "avail idx {ahead}"
            );
            assert_eq!(popped, 0);
        }
        // Exactly a queue's worth ahead is a full ring, not a broken one.
        driver.publish_avail_idx(&mem, SIZE);
        let mut popped = 0;
        assert_eq!(
            drain_available(
                &mut queue,
                &mem,
                &limits(),
                &mut KickBudget::new(),
                |_, _| popped += 1
            ),
            Drained::Empty
        );
        assert_eq!(popped, usize::from(SIZE));
    }

    #[test]
    fn a_head_outside_the_table_is_broken() {
        let mem = memory();
        let (mut driver, mut queue) = queue_with(&mem, 1);
        // The second chain's head is 999 in a 16-entry table.
        driver.publish(&mem, 999);
        let mut heads = Vec::new();
        let end = drain_available(
            &mut queue,
            &mem,
            &limits(),
            &mut KickBudget::new(),
            |_, walk| heads.push(walk.head),
        );
        assert_eq!(end, Drained::Broken);
        assert_eq!(heads, [0], "the chain before it is served");
    }

    #[test]
    fn a_driver_that_keeps_adding_gets_more_left() {
        let mem = memory();
        let (mut driver, mut queue) = queue_with(&mem, 1);
        // Each pop announces one more (the same descriptor, re-offered): never empty.
        let mut popped = 0u16;
        let budget = &mut KickBudget::with_descriptors(3 * usize::from(SIZE));
        let end = drain_available(&mut queue, &mem, &limits(), budget, |q, walk| {
            popped += 1;
            q.add_used(&mem, walk.head, 0).unwrap();
            driver.publish(&mem, 0);
        });
        assert_eq!(end, Drained::MoreLeft);
        assert_eq!(
            popped,
            3 * SIZE,
            "one descriptor each, until the budget is spent"
        );
        assert!(budget.is_spent());
    }
}
