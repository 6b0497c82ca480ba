//! rng: the virtio-rng device driven over its one queue: chains whose layout the input chooses
//! (writable buffers, read-only ones, descriptors outside RAM or across its end, loops, wild
//! `next` indices, indirect tables of any size and nesting, which the device must refuse since it
//! does not offer VIRTIO_F_INDIRECT_DESC), raw descriptors anywhere in the table, one head made
//! available many times (up to more than a ring's worth), kicks, ring tampering and device
//! resets.
//!
//! Input: `u8 flags` (bit 0: EVENT_IDX), then operations until the input ends (at most 128),
//! `op % 8`:
//! - 0..=2: a chain: `u8 len`, `len` payload bytes, a chain layout (`decode_chain`; the payload
//!   is what readable descriptors cover, or an indirect table's entries); kicked unless `op & 0x80`.
//! - 3: kick.
//! - 4: tamper with the rings: `u8 what, u16 value` (the checks are off until the next reset).
//! - 5: make an earlier head available again `1 + u8` times: `u8 which, u8 count`; kicked unless
//!   `op & 0x80` (more than a ring's worth outstanding breaks the ring: DEVICE_NEEDS_RESET); at
//!   most 512 times per input in all.
//! - 6: device reset, then the driver sets the queue up again on zeroed rings: `u8 flags`
//!   (bit 0: EVENT_IDX).
//! - 7: a raw descriptor in the table, made available: `u8 slot, u64 addr, u32 len, u16 flags,
//!   u16 next`; kicked unless `op & 0x80`.
//!
//! Checked after every kick, unless the input wrote over the rings or broke them: every chain
//! made available has come back on the used ring (the device serves a kick at once, re-kicking
//! itself past its per-kick budget), each with the length the chain allows: 0 for a chain with a
//! read-only buffer, an indirect descriptor, a loop, more than 16 descriptors or a buffer outside
//! RAM, else all its writable bytes up to the device's 64 KiB cap. libFuzzer's `-timeout` makes a
//! slow kick a failure. Ends with a device reset.
#![no_main]

use std::sync::Arc;

use canto_devices::virtio::rng::{Rng, MAX_BYTES_PER_REQUEST};
use canto_devices::virtio::{
    ActivateContext, ActiveQueue, SharedSubscriber, VirtioDevice, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};
use canto_fuzz::*;
use event_manager::{EventManager, SubscriberId, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAX_OPS: usize = 128;
/// The most descriptors the device accepts in one chain.
const MAX_CHAIN: usize = 16;
/// Re-publications (op 5) per input (two rings' worth: 256 heads on one table, then more than a
/// ring's worth outstanding): each can be a 64 KiB request, so an input asks for at most ~40 MiB
/// of random bytes (75-160 ms measured on the loaded 2-core machine), well under the per-input
/// timeout.
/// Without it one input could ask for 128 x 256 x 64 KiB = 2 GiB (a timeout found by the first
/// run: about 4 s of CPU, all of it the device doing what it was asked).
const REPUBLISH_BUDGET: usize = 512;
/// Turns of the event loop per kick: the device serves 16 descriptors per turn and re-kicks
/// itself for the rest, so a full ring of 16-descriptor chains takes 256 turns.
const MAX_TURNS: usize = 1024;

struct RngRig {
    mem: GuestMemoryMmap,
    rng: Rng,
    queue: DriverQueue,
    kick: EventFd,
    manager: EventManager<SharedSubscriber>,
    subscribers: Vec<SubscriberId>,
    interrupt: Arc<InterruptRecorder>,
    needs_reset_before: u64,
    bump: Bump,
    /// The input wrote to the rings: the used-ring accounting means nothing until a reset.
    tampered: bool,
    /// Per head: the used length the chain starting there must come back with (None: unknown,
    /// e.g. a wild `next`, or a raw descriptor).
    expect: Vec<Option<u32>>,
    /// Per descriptor slot: the head of the chain written over it last.
    owner: Vec<Option<u16>>,
}

impl RngRig {
    fn new(flags: u8) -> RngRig {
        let mem = GuestRam::take();
        let mut rig = RngRig {
            mem,
            rng: Rng::new(),
            // Replaced by `activate`.
            queue: DriverQueue::new(0, QSIZE).0,
            kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            manager: EventManager::new().expect("event manager"),
            subscribers: Vec::new(),
            interrupt: Arc::new(InterruptRecorder::default()),
            needs_reset_before: 0,
            bump: Bump::new(DATA_START, MEM_SIZE),
            tampered: false,
            expect: vec![None; usize::from(QSIZE)],
            owner: vec![None; usize::from(QSIZE)],
        };
        rig.activate(flags);
        rig
    }

    /// Sets the queue up on zeroed rings (as a driver does after a reset) and activates the
    /// device on it.
    fn activate(&mut self, flags: u8) {
        let _ = self
            .mem
            .write_slice(&[0u8; QUEUE_SPAN as usize], GuestAddress(0));
        let (driver, queue) = DriverQueue::new(0, QSIZE);
        self.queue = driver;
        self.kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut acked_features = VIRTIO_F_VERSION_1;
        if flags & 1 != 0 {
            acked_features |= VIRTIO_F_RING_EVENT_IDX;
        }
        let subscribers = self
            .rng
            .activate(ActivateContext {
                mem: self.mem.clone(),
                interrupt: self.interrupt.clone(),
                queues: vec![ActiveQueue {
                    index: 0,
                    queue,
                    kick: self.kick.try_clone().expect("eventfd clone"),
                }],
                acked_features,
            })
            .expect("activate");
        self.subscribers = subscribers
            .into_iter()
            .map(|s| self.manager.add_subscriber(s))
            .collect();
        self.needs_reset_before = self.interrupt.needs_reset_count();
        self.tampered = false;
        self.expect.fill(None);
        self.owner.fill(None);
    }

    /// What the transport does on a device reset: the subscribers leave the event loop, then
    /// the device lets go of its queue.
    fn reset(&mut self) {
        for id in self.subscribers.drain(..) {
            let _ = self.manager.remove_subscriber(id);
        }
        self.rng.reset();
    }

    fn kick(&mut self) {
        let _ = self.kick.write(1);
        for _ in 0..MAX_TURNS {
            match self.manager.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        self.check();
    }

    /// The device stopped the queue (DEVICE_NEEDS_RESET) since it was activated.
    fn broken(&self) -> bool {
        self.interrupt.needs_reset_count() != self.needs_reset_before
    }

    fn check(&mut self) {
        let used = self.queue.take_used_raw(&self.mem);
        if self.tampered || self.broken() {
            return;
        }
        for (id, len) in used {
            assert!(id < u32::from(QSIZE), "used entry for head {id}");
            if let Some(want) = self.expect[id as usize] {
                assert!(
                    len == want,
                    "head {id} came back with {len} bytes, the chain allows {want}"
                );
            }
        }
        let left = self.queue.outstanding(&self.mem);
        assert!(
            left == 0,
            "{left} chain(s) not returned after a kick ({} published, {} returned)",
            self.queue.published,
            self.queue.returned
        );
    }

    /// Notes that the descriptor slots `slots` now belong to the chain at `head` (with
    /// `expect`), and forgets what the chains written there before could return.
    fn claim(&mut self, head: u16, slots: usize, expect: Option<u32>) {
        for i in 0..slots.min(usize::from(QSIZE)) {
            let slot = (usize::from(head) + i) % usize::from(QSIZE);
            if let Some(old) = self.owner[slot] {
                self.expect[usize::from(old)] = None;
            }
            self.owner[slot] = Some(head);
        }
        self.expect[usize::from(head)] = expect;
    }

    fn add(&mut self, descs: &[Desc], opts: ChainOpts) {
        if descs
            .iter()
            .any(|d| d.flags & VRING_DESC_F_WRITE as u16 != 0 && d.addr < DATA_START)
        {
            self.tampered = true;
        }
        let head = self.queue.add_with(&self.mem, &mut self.bump, descs, opts);
        let slots = if opts.indirect { 1 } else { descs.len() };
        self.claim(head, slots, expected_len(descs, &opts));
    }
}

impl Drop for RngRig {
    fn drop(&mut self) {
        self.reset();
        GuestRam::give_back(self.mem.clone(), &self.bump);
    }
}

/// The used length the device must give the chain `descs` laid out with `opts` (None when the
/// harness cannot tell what the device will walk).
fn expected_len(descs: &[Desc], opts: &ChainOpts) -> Option<u32> {
    if opts.wild_next.is_some() {
        return None;
    }
    if opts.indirect || opts.loop_back || descs.len() > MAX_CHAIN {
        return Some(0);
    }
    let mut total = 0u64;
    for d in descs {
        if d.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            return Some(0);
        }
        if d.len == 0 {
            continue;
        }
        let inside = d
            .addr
            .checked_add(u64::from(d.len))
            .is_some_and(|end| end <= MEM_SIZE);
        if d.flags & VRING_DESC_F_WRITE as u16 == 0 || !inside {
            return Some(0);
        }
        total += u64::from(d.len);
    }
    Some(total.min(MAX_BYTES_PER_REQUEST as u64) as u32)
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut rig = RngRig::new(r.u8());
    let mut republish_left = REPUBLISH_BUDGET;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        let kick = op & 0x80 == 0;
        match op % 8 {
            0..=2 => {
                let (descs, opts) = read_raw_chain(&mut r, &rig.mem, &mut rig.bump);
                rig.add(&descs, opts);
                if kick {
                    rig.kick();
                }
            }
            3 => rig.kick(),
            4 => {
                let what = r.u8();
                let value = r.u16();
                let q = &rig.queue;
                let _ = rig.mem.write_obj(value, GuestAddress(ring_field(q, what)));
                rig.tampered = true;
            }
            5 => {
                let which = usize::from(r.u8());
                let count = (1 + usize::from(r.u8())).min(republish_left);
                republish_left -= count;
                if !rig.queue.heads.is_empty() && count > 0 {
                    let head = rig.queue.heads[which % rig.queue.heads.len()];
                    for _ in 0..count {
                        rig.queue.publish(&rig.mem, head);
                    }
                    if kick {
                        rig.kick();
                    }
                }
            }
            6 => {
                let flags = r.u8();
                rig.reset();
                rig.activate(flags);
            }
            _ => {
                let slot = u16::from(r.u8()) % QSIZE;
                let desc = Desc {
                    addr: r.u64(),
                    len: r.u32(),
                    flags: r.u16(),
                    next: r.u16(),
                };
                if desc.flags & VRING_DESC_F_WRITE as u16 != 0 {
                    if desc.addr < DATA_START {
                        rig.tampered = true;
                    }
                    rig.bump.note_foreign(desc.addr, desc.len.into());
                }
                rig.queue.write_descs(&rig.mem, slot, &[desc]);
                rig.claim(slot, 1, None);
                rig.queue.publish(&rig.mem, slot);
                if kick {
                    rig.kick();
                }
            }
        }
    }
    rig.kick();
});
