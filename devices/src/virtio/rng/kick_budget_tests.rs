//! What one kick of virtio-rng may cost (issue 12: "one kick costs at most milliseconds"). Kept
//! apart from the device's other tests, and on a queue laid out by hand, so it depends on no
//! test helper.

use std::sync::Arc;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Rng, DESCRIPTORS_PER_KICK, MAX_BYTES_PER_REQUEST};
use crate::virtio::{
    ActivateContext, ActiveQueue, SharedSubscriber, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType, VIRTIO_F_VERSION_1,
};

const SIZE: u16 = 256;
const DESC_TABLE: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const BUFFER: u64 = 0x10_0000;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: VirtioInterruptType) -> std::io::Result<()> {
        Ok(())
    }
    fn needs_reset(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// A full ring of 64 KiB requests (all on one buffer): one kick used to fill all 256, 16 MiB of
/// getrandom on the event loop. Now a kick serves at most DESCRIPTORS_PER_KICK of them and
/// re-kicks the queue for the rest, which the following turns of the event loop serve, each
/// request with its full 64 KiB.
#[test]
fn a_kick_fills_at_most_a_megabyte_and_re_kicks_for_the_rest() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
    for i in 0..SIZE {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&BUFFER.to_le_bytes());
        raw[8..12].copy_from_slice(&(MAX_BYTES_PER_REQUEST as u32).to_le_bytes());
        raw[12..14].copy_from_slice(&(VRING_DESC_F_WRITE as u16).to_le_bytes());
        mem.write_slice(&raw, GuestAddress(DESC_TABLE + 16 * u64::from(i)))
            .unwrap();
        mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(SIZE, GuestAddress(AVAIL + 2)).unwrap();

    let mut queue = Queue::new(SIZE).unwrap();
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut rng = Rng::new();
    let subscribers = rng
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: Arc::new(NoInterrupt),
            queues: vec![ActiveQueue {
                index: 0,
                queue,
                kick: kick.try_clone().unwrap(),
            }],
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
    let mut manager = EventManager::<SharedSubscriber>::new().unwrap();
    for s in subscribers {
        manager.add_subscriber(s);
    }

    kick.write(1).unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    let served = used_idx(&mem);
    assert!(
        usize::from(served) <= DESCRIPTORS_PER_KICK,
        "one kick served {served} requests of 64 KiB"
    );
    assert!(served > 0, "a kick serves at least one request");

    // The queue re-kicked itself: the next turns serve the rest without a new notification.
    let mut turns = 1;
    while used_idx(&mem) < SIZE {
        assert!(turns < 1000, "the rest is never served");
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1, "no re-kick");
        turns += 1;
    }
    assert_eq!(used_idx(&mem), SIZE);
    for i in 0..u64::from(SIZE) {
        let len: u32 = mem.read_obj(GuestAddress(USED + 4 + 8 * i + 4)).unwrap();
        assert_eq!(len as usize, MAX_BYTES_PER_REQUEST);
    }
    drop(rng);
}
