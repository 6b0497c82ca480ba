//! One virtqueue as a device uses it, with a pop side and a completion side.
//!
//! - Pop side ([`DeviceQueue::pop_available`]): every available chain, walked and checked with
//!   the device's [`ChainLimits`] (indirect tables only if negotiated), within the notification's
//!   [`KickBudget`]; then the after-drain policy, the same for every device: chains left over
//!   re-kick the queue (the event loop serves the others first), and a ring the driver broke
//!   stops the queue until reset and reports DEVICE_NEEDS_RESET once.
//! - Completion side ([`DeviceQueue::complete`]): used-ring entries, then the interrupt if the
//!   driver wants one (EVENT_IDX), then the device's counter hook. Any thread may complete (a
//!   sound period thread does), while the event loop pops.
//!
//! The ring is behind a lock that each side holds only for the ring update itself, never across
//! a device's I/O, so a completing thread never waits on the event loop's work or the reverse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{ChainLimits, Walk};
use super::drain::{drain_available, Drained, KickBudget};
use super::{
    ActiveQueue, VirtioInterrupt, VirtioInterruptType, VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_EVENT_IDX,
};

/// A used-ring entry to be written: the chain's head and the bytes the device wrote into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub head: u16,
    pub len: u32,
}

/// Counts the chains a queue returns (a device's statistics).
pub type CompletionHook = Box<dyn Fn(usize) + Send + Sync>;

/// A queue the driver enabled, as the device serves it.
pub struct DeviceQueue {
    /// The device's name, for log lines.
    device: &'static str,
    index: u16,
    ring: Mutex<Queue>,
    kick: EventFd,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    limits: ChainLimits,
    /// The driver broke the ring: nothing more is popped until the device is reset.
    broken: AtomicBool,
    /// Set at device reset: a device thread that outlives the reset (it was in a host I/O call
    /// the reset does not wait for) touches neither the guest's buffers nor the used ring.
    revoked: RwLock<bool>,
    /// Completions held while DMA was not allowed (Bus Master Enable clear), written once it is.
    /// Only chains popped before DMA stopped can complete, so this holds at most a queue's worth
    /// of in-flight chains.
    deferred: Mutex<Vec<Completion>>,
    on_completed: Option<CompletionHook>,
}

impl DeviceQueue {
    /// Takes over an activated queue. EVENT_IDX and indirect descriptors follow what the driver
    /// accepted (`acked_features`); `limits` is what the device accepts of one chain.
    pub fn new(
        device: &'static str,
        active: ActiveQueue,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        acked_features: u64,
        limits: ChainLimits,
    ) -> DeviceQueue {
        let mut queue = active.queue;
        queue.set_event_idx(acked_features & VIRTIO_F_RING_EVENT_IDX != 0);
        DeviceQueue {
            device,
            index: active.index,
            ring: Mutex::new(queue),
            kick: active.kick,
            mem,
            interrupt,
            limits: ChainLimits {
                indirect: acked_features & VIRTIO_F_INDIRECT_DESC != 0,
                ..limits
            },
            broken: AtomicBool::new(false),
            revoked: RwLock::new(false),
            deferred: Mutex::new(Vec::new()),
            on_completed: None,
        }
    }

    /// Calls `hook(n)` each time `n` chains went back to the driver.
    pub fn with_completion_hook(mut self, hook: CompletionHook) -> DeviceQueue {
        self.on_completed = Some(hook);
        self
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Signalled when the driver notifies the queue; the device's event-loop subscriber waits on
    /// it.
    pub fn kick(&self) -> &EventFd {
        &self.kick
    }

    /// The size the driver gave the queue.
    pub fn size(&self) -> u16 {
        self.lock_ring().size()
    }

    pub fn limits(&self) -> &ChainLimits {
        &self.limits
    }

    /// Whether the device may touch guest memory now ([`VirtioInterrupt::dma_allowed`]). A
    /// device thread that reads or writes buffers it holds checks this first.
    pub fn dma_allowed(&self) -> bool {
        self.interrupt.dma_allowed()
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Locks the ring. Nothing that holds the lock sleeps or does device I/O.
    pub fn lock_ring(&self) -> MutexGuard<'_, Queue> {
        // The queue's state stays consistent at every step, so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes every available chain (within `budget`), walked; a refused walk is the device's to
    /// return (length 0 unless it knows better). Applies the after-drain policy: chains left
    /// over re-kick the queue, a broken ring stops it and reports DEVICE_NEEDS_RESET.
    pub fn pop_available(&self, budget: &mut KickBudget) -> Vec<Walk> {
        let mut walks = Vec::new();
        // While DMA is not allowed the ring is not read; the transport kicks the queue again
        // once it is.
        if self.is_broken() || !self.complete_deferred() {
            return walks;
        }
        let drained = {
            let mut ring = self.lock_ring();
            drain_available(&mut ring, &self.mem, &self.limits, budget, |_, walk| {
                walks.push(walk)
            })
        };
        match drained {
            Drained::Empty => {}
            // Come back after the event loop has served the others.
            Drained::MoreLeft => {
                if let Err(e) = self.kick.write(1) {
                    crate::error_limited!("{}: re-kicking queue {}: {e}", self.device, self.index);
                }
            }
            Drained::Broken => {
                if !self.broken.swap(true, Ordering::AcqRel) {
                    crate::warn_limited!(
                        "{}: the driver broke queue {}'s available ring (index past the ring, \
                         or a head outside the table); the queue is stopped until the device is \
                         reset",
                        self.device,
                        self.index
                    );
                    if let Err(e) = self.interrupt.needs_reset() {
                        crate::error_limited!("{}: reporting DEVICE_NEEDS_RESET: {e}", self.device);
                    }
                }
            }
        }
        walks
    }

    /// Guest memory for a device thread's access to the queue's buffers, until the queue is
    /// revoked (device reset): None from then on. [`DeviceQueue::revoke`] waits while a returned
    /// guard lives, so hold one only across copies and ring updates, never across host I/O or a
    /// wait, and never take a second one (or call [`DeviceQueue::complete`]) while holding one.
    pub fn dma(&self) -> Option<Dma<'_>> {
        let revoked = self.revoked.read().unwrap_or_else(PoisonError::into_inner);
        if *revoked {
            return None;
        }
        Some(Dma {
            _not_revoked: revoked,
            mem: &self.mem,
        })
    }

    /// Device reset: no device thread reads or writes the queue's buffers or used ring any more.
    /// Waits only for a copy or ring update in progress.
    pub fn revoke(&self) {
        *self.revoked.write().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Writes the completions held while DMA was not allowed; returns whether DMA is allowed
    /// (never once the queue is revoked).
    fn complete_deferred(&self) -> bool {
        match self.dma() {
            Some(dma) => self.complete_deferred_with(&dma),
            None => false,
        }
    }

    fn complete_deferred_with(&self, dma: &Dma<'_>) -> bool {
        if !self.dma_allowed() {
            return false;
        }
        let deferred = std::mem::take(&mut *self.lock_deferred());
        self.complete_now(dma, &deferred);
        true
    }

    fn lock_deferred(&self) -> MutexGuard<'_, Vec<Completion>> {
        self.deferred.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts the entries on the used ring and raises the queue's interrupt if the driver wants
    /// one. While DMA is not allowed they are held, and written (in order) once it is; once the
    /// queue is revoked, nothing is written.
    pub fn complete(&self, done: &[Completion]) {
        if let Some(dma) = self.dma() {
            self.complete_with(&dma, done);
        }
    }

    /// [`DeviceQueue::complete`] for a caller that holds the queue's [`Dma`] guard already.
    pub fn complete_with(&self, dma: &Dma<'_>, done: &[Completion]) {
        if done.is_empty() {
            return;
        }
        if !self.complete_deferred_with(dma) {
            self.lock_deferred().extend_from_slice(done);
            // DMA may have come back meanwhile, after the transport's kick was served: look
            // again, so nothing stays held until the next kick.
            self.complete_deferred_with(dma);
            return;
        }
        self.complete_now(dma, done);
    }

    /// Writes used-ring entries: only under the queue's [`Dma`] guard.
    fn complete_now(&self, _dma: &Dma<'_>, done: &[Completion]) {
        if done.is_empty() {
            return;
        }
        let notify = {
            let mut ring = self.lock_ring();
            for entry in done {
                if let Err(e) = ring.add_used(&self.mem, entry.head, entry.len) {
                    // Guest-caused (a head the guest made up): debug only, or a guest could
                    // fill the host's log.
                    log::debug!(
                        "{}: queue {}: cannot return chain {}: {e}",
                        self.device,
                        self.index,
                        entry.head
                    );
                }
            }
            ring.needs_notification(&self.mem).unwrap_or(true)
        };
        if let Some(hook) = &self.on_completed {
            hook(done.len());
        }
        if notify {
            if let Err(e) = self
                .interrupt
                .trigger(VirtioInterruptType::Queue(self.index))
            {
                crate::warn_limited!(
                    "{}: queue {} interrupt failed: {e}",
                    self.device,
                    self.index
                );
            }
        }
    }
}

/// Guest memory while a [`DeviceQueue`] is not revoked; see [`DeviceQueue::dma`].
pub struct Dma<'a> {
    _not_revoked: RwLockReadGuard<'a, bool>,
    mem: &'a GuestMemoryMmap,
}

impl std::ops::Deref for Dma<'_> {
    type Target = GuestMemoryMmap;

    fn deref(&self) -> &GuestMemoryMmap {
        self.mem
    }
}
