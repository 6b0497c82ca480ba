//! The event queue (§5.14.6.1): jack events and CTL_NOTIFY, and the jacks' state.
//!
//! The driver fills the eventq with 8-byte buffers; the worker takes them as they come
//! ([`SoundEvents::refill`]) and holds them. An event is posted by whoever sees it happen: a
//! period thread whose host device fails, the jack watcher that finds it back, the host side
//! that sets a control. It goes into the next held buffer, or waits until the driver gives one.
//! Waiting events are coalesced (one per jack, its latest state; one per control, masks
//! or-ed), so they are bounded by the number of jacks and controls whatever the guest does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::io::Completion;
use super::wire::*;
use crate::virtio::chain::ChainBuffers;
use crate::virtio::drain::KickBudget;
use crate::virtio::queue::DeviceQueue;

/// An event for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Jack { jack: u32, connected: bool },
    CtlNotify { control: u16, mask: u16 },
}

impl Event {
    fn encode(self) -> [u8; EVENT_SIZE] {
        match self {
            Event::Jack { jack, connected } => event(
                if connected {
                    EVT_JACK_CONNECTED
                } else {
                    EVT_JACK_DISCONNECTED
                },
                jack,
            ),
            Event::CtlNotify { control, mask } => ctl_event(control, mask),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// The eventq of the active device; None while the device is reset.
    queue: Option<Arc<DeviceQueue>>,
    /// Buffers taken from the eventq, waiting for an event (at most the queue's size).
    held: VecDeque<ChainBuffers>,
    /// Events waiting for a buffer, coalesced.
    pending: VecDeque<Event>,
}

/// The device's event queue, shared by everyone who posts events.
#[derive(Default)]
pub struct SoundEvents {
    inner: Mutex<Inner>,
}

impl SoundEvents {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Activation: events go to `queue` from now on. Nothing from before is kept.
    pub fn attach(&self, queue: Arc<DeviceQueue>) {
        let mut inner = self.lock();
        inner.queue = Some(queue);
        inner.held.clear();
        inner.pending.clear();
    }

    /// Device reset: the held buffers are the driver's again (the queue is revoked), and
    /// events are dropped until the next activation.
    pub fn detach(&self) {
        let mut inner = self.lock();
        inner.queue = None;
        inner.held.clear();
        inner.pending.clear();
    }

    /// The driver gave buffers: takes them (within `budget`) and fills them with what waits.
    pub fn refill(&self, budget: &mut KickBudget) {
        let mut inner = self.lock();
        let Some(queue) = inner.queue.clone() else {
            return;
        };
        take_available(&mut inner, &queue, budget);
        deliver(&mut inner, &queue);
    }

    /// Posts an event; it reaches the driver now if a buffer is held, else with the next one.
    pub fn post(&self, event: Event) {
        let mut inner = self.lock();
        let Some(queue) = inner.queue.clone() else {
            return;
        };
        let pending = &mut inner.pending;
        match event {
            Event::Jack { jack, .. } => {
                pending.retain(|e| !matches!(e, Event::Jack { jack: j, .. } if *j == jack));
                pending.push_back(event);
            }
            Event::CtlNotify { control, mask } => {
                let waiting = pending.iter_mut().find_map(|e| match e {
                    Event::CtlNotify { control: c, mask } if *c == control => Some(mask),
                    _ => None,
                });
                match waiting {
                    Some(old) => *old |= mask,
                    None => pending.push_back(event),
                }
            }
        }
        deliver(&mut inner, &queue);
    }

    /// Events waiting for a buffer (tests).
    #[cfg(test)]
    pub fn pending(&self) -> Vec<Event> {
        self.lock().pending.iter().copied().collect()
    }
}

/// Takes the buffers the driver made available (within `budget`) and holds them.
fn take_available(inner: &mut Inner, queue: &DeviceQueue, budget: &mut KickBudget) {
    let mut refused = Vec::new();
    for walk in queue.pop_available(budget) {
        match walk.result {
            Ok(buffers) if buffers.writable.len() >= EVENT_SIZE as u64 => {
                inner.held.push_back(buffers)
            }
            // No room for an event: back at once, empty.
            _ => refused.push(Completion {
                head: walk.head,
                len: 0,
            }),
        }
    }
    queue.complete(&refused);
}

/// Writes waiting events into held buffers and returns them to the driver. With none held, it
/// looks at the available ring first: the Linux driver fills the eventq at probe without a
/// notification (`virtsnd_find_vqs` adds every buffer with `notify` false), so the buffers may
/// be there with no kick ever telling the device.
fn deliver(inner: &mut Inner, queue: &DeviceQueue) {
    if !inner.pending.is_empty() && inner.held.is_empty() {
        take_available(inner, queue, &mut KickBudget::new());
    }
    let mut done = Vec::new();
    {
        let Some(mem) = queue.dma() else {
            return;
        };
        while !inner.pending.is_empty() {
            let Some(buffers) = inner.held.pop_front() else {
                break;
            };
            let Some(event) = inner.pending.pop_front() else {
                break;
            };
            let len = match buffers.writable.write_at(&mem, 0, &event.encode()) {
                Ok(()) => EVENT_SIZE as u32,
                Err(e) => {
                    log::debug!("virtio-snd: cannot write an event: {e}");
                    // The event goes into the next buffer.
                    inner.pending.push_front(event);
                    0
                }
            };
            done.push(Completion {
                head: buffers.head,
                len,
            });
        }
    }
    queue.complete(&done);
}

/// One jack per stream (jack N belongs to stream N): whether its host device works.
pub struct Jacks {
    connected: Vec<AtomicBool>,
    events: Arc<SoundEvents>,
}

impl Jacks {
    pub fn new(initial: &[bool], events: Arc<SoundEvents>) -> Jacks {
        Jacks {
            connected: initial.iter().map(|c| AtomicBool::new(*c)).collect(),
            events,
        }
    }

    pub fn count(&self) -> usize {
        self.connected.len()
    }

    pub fn is_connected(&self, jack: u32) -> bool {
        self.connected
            .get(jack as usize)
            .is_some_and(|c| c.load(Ordering::Acquire))
    }

    /// Records the jack's state; a change is posted as JACK_CONNECTED or JACK_DISCONNECTED.
    pub fn set(&self, jack: u32, connected: bool) {
        let Some(state) = self.connected.get(jack as usize) else {
            return;
        };
        if state.swap(connected, Ordering::AcqRel) != connected {
            crate::info_limited!(
                "virtio-snd: jack {jack} {}",
                if connected {
                    "connected: its host device works again"
                } else {
                    "disconnected: its host device failed"
                }
            );
            self.events.post(Event::Jack { jack, connected });
        }
    }

    /// The jacks that are disconnected now.
    pub fn disconnected(&self) -> Vec<u32> {
        (0..self.connected.len() as u32)
            .filter(|j| !self.is_connected(*j))
            .collect()
    }
}
