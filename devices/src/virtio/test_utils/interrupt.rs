//! An interrupt line that records what the device raised.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::virtio::{VirtioInterrupt, VirtioInterruptType};

/// Counts the device's interrupts per queue, configuration changes and DEVICE_NEEDS_RESET
/// reports; can wait for the next interrupt and timestamp one queue's interrupts.
#[derive(Default)]
pub struct InterruptRecorder {
    state: Mutex<Recorded>,
    changed: Condvar,
    /// What the transport's Bus Master Enable would say, inverted (so the default allows DMA).
    dma_blocked: AtomicBool,
}

#[derive(Default)]
struct Recorded {
    queues: Vec<u64>,
    config: u64,
    needs_reset: u64,
    /// The queue whose interrupts are timestamped, and the timestamps.
    timed: Option<(u16, Vec<Instant>)>,
}

impl InterruptRecorder {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Interrupts raised for `queue`.
    pub fn count(&self, queue: u16) -> u64 {
        self.lock()
            .queues
            .get(usize::from(queue))
            .copied()
            .unwrap_or(0)
    }

    /// Queue interrupts raised, all queues together.
    pub fn total(&self) -> u64 {
        self.lock().queues.iter().sum()
    }

    /// Configuration change interrupts raised (other than for DEVICE_NEEDS_RESET).
    pub fn config_count(&self) -> u64 {
        self.lock().config
    }

    /// How many times the device reported DEVICE_NEEDS_RESET.
    pub fn needs_reset_count(&self) -> u64 {
        self.lock().needs_reset
    }

    /// Waits until more than `seen` interrupts of `queue` were raised, or `timeout` passes.
    /// Returns the count.
    pub fn wait_beyond(&self, queue: u16, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let count = state.queues.get(usize::from(queue)).copied().unwrap_or(0);
            let now = Instant::now();
            if count > seen || now >= deadline {
                return count;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Allows or forbids the device's DMA, as the transport does when the driver sets or clears
    /// Bus Master Enable.
    pub fn set_dma_allowed(&self, allowed: bool) {
        self.dma_blocked.store(!allowed, Ordering::SeqCst);
    }

    /// Starts timestamping `queue`'s interrupts (`Some`), or stops; returns the timestamps
    /// taken so far.
    pub fn record_times(&self, queue: Option<u16>) -> Vec<Instant> {
        let mut state = self.lock();
        let old = state.timed.take().map(|(_, times)| times);
        state.timed = queue.map(|q| (q, Vec::with_capacity(1 << 16)));
        old.unwrap_or_default()
    }
}

impl VirtioInterrupt for InterruptRecorder {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        let now = Instant::now();
        let mut state = self.lock();
        match kind {
            VirtioInterruptType::Queue(queue) => {
                let index = usize::from(queue);
                if state.queues.len() <= index {
                    state.queues.resize(index + 1, 0);
                }
                state.queues[index] += 1;
                if let Some((timed, times)) = state.timed.as_mut() {
                    if *timed == queue {
                        times.push(now);
                    }
                }
            }
            VirtioInterruptType::Config => state.config += 1,
        }
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    fn needs_reset(&self) -> std::io::Result<()> {
        self.lock().needs_reset += 1;
        self.changed.notify_all();
        Ok(())
    }

    fn dma_allowed(&self) -> bool {
        !self.dma_blocked.load(Ordering::SeqCst)
    }
}
