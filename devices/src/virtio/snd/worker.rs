//! The event-loop side of an active sound device: it reacts to the driver's queue
//! notifications.
//!
//! - controlq: each request is decoded, carried out and answered at once.
//! - txq (the TX worker) and rxq: each chain is validated and appended, as a reference to guest
//!   memory, to its stream's queue; the period thread consumes it later. Invalid messages are
//!   returned at once (IO_ERR, or length 0 when there is no room for a status); messages for
//!   a stream that is not prepared/started/stopped get IO_ERR, the I/O status for an operation
//!   the device cannot carry out.
//! - eventq: the driver's buffers are taken and held for events ([`SoundEvents`]): jack
//!   hot-plug (a jack watcher thread looks once a second whether a failed host device is back)
//!   and CTL_NOTIFY. No XRUN or PERIOD_ELAPSED events (Linux 6.12 ignores them).
//! - Every queue is a [`DeviceQueue`]: chains are walked with [`CHAIN_LIMITS`] within one
//!   kick's budget, and a broken ring stops its queue until reset (DEVICE_NEEDS_RESET, once).

use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_memory::GuestMemoryMmap;

use super::backend::Backend;
use super::control::{self, CtlRequest, Reply, Request, Topology};
use super::events::{Event, SoundEvents};
use super::io::{Completion, Direction, IoMessage};
use super::stats::SoundStats;
use super::stream::{join_within, StreamControl, StreamResources, RESET_JOIN_WAIT};
use super::waker::Waker;
use super::wire::{
    self, CONTROLQ, EVENTQ, MAX_REQUEST_SIZE, RXQ, S_BAD_MSG, S_IO_ERR, S_NOT_SUPP, TXQ,
};
use crate::thread_start::ThreadKind;
use crate::virtio::chain::{ChainBuffers, ChainLimits, Walk};
use crate::virtio::drain::KickBudget;
use crate::virtio::queue::DeviceQueue;

/// What the device accepts of one chain: a control request or an I/O message. Walking costs no
/// copy, so the byte cap is the spec's; the I/O path refuses messages over
/// [`super::io::MAX_IO_DATA_BYTES`] itself, with IO_ERR (§5.14.6.8), which a refused chain could
/// not get.
pub const CHAIN_LIMITS: ChainLimits = ChainLimits {
    max_descriptors: crate::virtio::chain::MAX_SEGMENTS,
    max_bytes: u32::MAX as u64,
    indirect: false,
};

/// The active device: its queues, streams and backend.
pub struct SoundWorker {
    controlq: DeviceQueue,
    /// Its buffers are held by `events` until an event fills them.
    eventq: Arc<DeviceQueue>,
    events: Arc<SoundEvents>,
    /// The driver accepted VIRTIO_SND_F_CTLS: control element requests are served.
    ctls: bool,
    /// Looks once a second whether a disconnected jack's host device is back.
    jack_watcher: Option<(Arc<Waker>, JoinHandle<()>)>,
    /// Whether starting the watcher was tried (once: a failure is not retried at every kick).
    jack_watcher_tried: bool,
    tx: Arc<DeviceQueue>,
    rx: Arc<DeviceQueue>,
    streams: Vec<StreamControl>,
    topology: Arc<Topology>,
    backend: Arc<dyn Backend>,
    stats: Arc<SoundStats>,
    stopped: bool,
}

/// What an activation adds to the queues: the event queue's state and the features.
pub struct Extras {
    pub events: Arc<SoundEvents>,
    pub ctls: bool,
}

/// How often the jack watcher tries to open a failed host device.
pub const JACK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The queues of an activation, in queue order.
pub struct WorkerQueues {
    pub controlq: DeviceQueue,
    pub eventq: DeviceQueue,
    pub txq: DeviceQueue,
    pub rxq: DeviceQueue,
}

impl SoundWorker {
    pub fn new(
        queues: WorkerQueues,
        topology: Arc<Topology>,
        backend: Arc<dyn Backend>,
        stats: Arc<SoundStats>,
        extras: Extras,
    ) -> std::io::Result<SoundWorker> {
        let tx_limit = usize::from(queues.txq.size().max(1));
        let rx_limit = usize::from(queues.rxq.size().max(1));
        let streams = topology
            .streams
            .iter()
            .map(|info| {
                let limit = match info.direction {
                    Direction::Output => tx_limit,
                    Direction::Input => rx_limit,
                };
                StreamControl::new(*info, limit)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let counted =
            |queue: DeviceQueue| {
                let stats = stats.clone();
                let index = queue.index();
                Arc::new(queue.with_completion_hook(Box::new(move |n| {
                    stats.messages_completed(index, n as u64)
                })))
            };
        let eventq = Arc::new(queues.eventq);
        extras.events.attach(eventq.clone());
        Ok(SoundWorker {
            controlq: queues.controlq,
            eventq,
            events: extras.events,
            ctls: extras.ctls,
            jack_watcher: None,
            jack_watcher_tried: false,
            tx: counted(queues.txq),
            rx: counted(queues.rxq),
            streams,
            topology,
            backend,
            stats,
            stopped: false,
        })
    }

    /// Starts the jack watcher on first use, from the event loop's thread: the worker is built
    /// on a vCPU (at DRIVER_OK), whose confinement may not open host devices, while the
    /// watcher re-opens them and starts from the thread that opens PCMs anyway.
    fn ensure_jack_watcher(&mut self) {
        if self.jack_watcher_tried || self.stopped {
            return;
        }
        self.jack_watcher_tried = true;
        match spawn_jack_watcher(&self.topology, &self.backend) {
            Ok(watcher) => self.jack_watcher = Some(watcher),
            Err(e) => crate::error_limited!("virtio-snd: cannot start the jack watcher: {e}"),
        }
    }

    fn queue(&self, index: u16) -> Option<&DeviceQueue> {
        match index {
            CONTROLQ => Some(&self.controlq),
            EVENTQ => Some(&self.eventq),
            TXQ => Some(&self.tx),
            RXQ => Some(&self.rx),
            _ => None,
        }
    }

    /// Device reset: the TX and RX queues are revoked (no period thread touches them or their
    /// buffers again), every period thread is told to end and joined if it does within
    /// [`RESET_JOIN_WAIT`], queued messages are dropped without touching the rings, and later
    /// notifications are ignored. Returns the threads still running: each is in a host call
    /// that has not returned (a hung sound server), which a reset must not wait for.
    #[must_use = "threads still running are to be joined later"]
    pub fn shutdown(&mut self) -> Vec<JoinHandle<()>> {
        self.stopped = true;
        self.tx.revoke();
        self.rx.revoke();
        self.eventq.revoke();
        self.events.detach();
        let mut watcher = self.jack_watcher.take().map(|(waker, thread)| {
            waker.cancel();
            thread
        });
        let threads = self
            .streams
            .iter_mut()
            .flat_map(|stream| stream.reset())
            .chain(watcher.take())
            .collect();
        let running = join_within(threads, RESET_JOIN_WAIT);
        if !running.is_empty() {
            crate::warn_limited!(
                "virtio-snd: {} period thread(s) still in a host audio call after the device \
                 reset; the reset goes on without them",
                running.len()
            );
        }
        running
    }

    #[cfg(test)]
    pub fn streams(&self) -> &[StreamControl] {
        &self.streams
    }

    /// Handles a notification of queue `index`, within one kick's budget.
    pub fn handle_queue(&mut self, index: u16) {
        self.ensure_jack_watcher();
        if self.stopped {
            return;
        }
        let mut budget = KickBudget::new();
        match index {
            CONTROLQ => self.process_controlq(&mut budget),
            TXQ => self.process_io(Direction::Output, &mut budget),
            RXQ => self.process_io(Direction::Input, &mut budget),
            EVENTQ => self.events.refill(&mut budget),
            _ => {}
        }
    }

    fn process_controlq(&mut self, budget: &mut KickBudget) {
        let walks = self.controlq.pop_available(budget);
        let mut done = Vec::with_capacity(walks.len());
        for walk in walks {
            let len = match walk.result {
                Ok(buffers) => self.handle_request(&buffers, budget),
                Err(e) => {
                    log::debug!("virtio-snd: control chain {} refused: {e}", walk.head);
                    0
                }
            };
            done.push(Completion {
                head: walk.head,
                len,
            });
        }
        self.controlq.complete(&done);
    }

    /// Carries out one control request; returns the reply's length.
    fn handle_request(&mut self, buffers: &ChainBuffers, budget: &mut KickBudget) -> u32 {
        self.stats.control_request();
        let mut request = [0u8; MAX_REQUEST_SIZE];
        // Bounded by MAX_REQUEST_SIZE.
        let len = buffers.readable.len().min(MAX_REQUEST_SIZE as u64) as usize;
        let reply = if buffers
            .readable
            .read_at(self.controlq.mem(), 0, &mut request[..len])
            .is_err()
        {
            Reply::Status(S_BAD_MSG)
        } else {
            let request = control::decode_for(&request[..len], self.ctls);
            log::trace!("virtio-snd: control {request:?}");
            self.execute(request, budget)
        };
        control::write_reply(
            self.controlq.mem(),
            &buffers.writable,
            reply,
            &self.topology,
        )
    }

    fn execute(&mut self, request: Request, budget: &mut KickBudget) -> Reply {
        let status = match request {
            Request::Info { kind, query } => return self.topology.info(kind, query),
            Request::Ctl(request) => {
                let (reply, changed) = self.topology.ctl(request);
                // The guest's own write that changed a value is notified too, and before the
                // reply: Linux's put callback returns 0, so its ALSA core sends no event of its
                // own, and applications (the kernel's mixer-test) expect the event by the time
                // their write returns. The event's interrupt goes out first, so the guest has
                // handled it when it sees the reply.
                if let (true, CtlRequest::Write(id, _)) = (changed, request) {
                    self.events.post(Event::CtlNotify {
                        control: id as u16,
                        mask: wire::CTL_EVT_MASK_VALUE,
                    });
                }
                return reply;
            }
            Request::JackRemap { jack_id } => return self.topology.jack_remap(jack_id),
            Request::Malformed => S_BAD_MSG,
            Request::Unsupported(code) => {
                log::debug!("virtio-snd: unsupported control request {code:#x}");
                S_NOT_SUPP
            }
            Request::SetParams(params) => match self.stream(params.stream_id) {
                Some(stream) => stream.set_params(&params),
                None => S_BAD_MSG,
            },
            Request::Prepare(id) => {
                let resources = StreamResources {
                    backend: &self.backend,
                    topology: &self.topology,
                    tx: &self.tx,
                    rx: &self.rx,
                    stats: &self.stats,
                };
                match self.streams.get_mut(id as usize) {
                    Some(stream) => stream.prepare(&resources),
                    None => S_BAD_MSG,
                }
            }
            Request::Start(id) => self.stream(id).map_or(S_BAD_MSG, |s| s.start()),
            Request::Stop(id) => self.stream(id).map_or(S_BAD_MSG, |s| s.stop()),
            Request::Release(id) => {
                // Messages the driver queued before RELEASE are pending too: take them first.
                // They count against the same kick's budget.
                if let Some(direction) = self.streams.get(id as usize).map(|s| s.info.direction) {
                    self.process_io(direction, budget);
                }
                self.stream(id).map_or(S_BAD_MSG, |s| s.release())
            }
        };
        Reply::Status(status)
    }

    fn stream(&mut self, id: u32) -> Option<&mut StreamControl> {
        self.streams.get_mut(id as usize)
    }

    /// The TX worker (and its RX twin): validates new messages and queues them on their
    /// streams; nothing is copied here.
    fn process_io(&mut self, direction: Direction, budget: &mut KickBudget) {
        let queue = match direction {
            Direction::Output => self.tx.clone(),
            Direction::Input => self.rx.clone(),
        };
        let mem = queue.mem();
        let mut done = Vec::new();
        for walk in queue.pop_available(budget) {
            if let Some(completion) = self.enqueue_io(walk, direction, mem) {
                done.push(completion);
            }
        }
        queue.complete(&done);
    }

    /// Queues one I/O message on its stream, or returns its completion when it is refused.
    fn enqueue_io(
        &mut self,
        walk: Walk,
        direction: Direction,
        mem: &GuestMemoryMmap,
    ) -> Option<Completion> {
        let buffers = match walk.result {
            Ok(buffers) => buffers,
            Err(e) => {
                log::debug!("virtio-snd: I/O chain {} refused: {e}", walk.head);
                self.stats.bad_message();
                return Some(Completion {
                    head: walk.head,
                    len: 0,
                });
            }
        };
        let message = match IoMessage::parse(buffers, direction, mem) {
            Ok(message) => message,
            Err((completion, e)) => {
                log::debug!("virtio-snd: I/O message {} refused: {e}", completion.head);
                self.stats.bad_message();
                return Some(completion);
            }
        };
        let stream = self
            .streams
            .get(message.stream_id as usize)
            .filter(|s| s.info.direction == direction);
        match stream {
            None => {
                log::debug!(
                    "virtio-snd: I/O message for stream {} on the {direction:?} queue",
                    message.stream_id
                );
                self.stats.bad_message();
                // §5.14.6.8 names only OK and IO_ERR for I/O messages.
                Some(message.reject(mem, S_IO_ERR))
            }
            Some(stream) if !stream.accepts_io() => {
                log::debug!(
                    "virtio-snd: I/O message for stream {} in state {:?}",
                    message.stream_id,
                    stream.state()
                );
                self.stats.io_error();
                Some(message.reject(mem, S_IO_ERR))
            }
            Some(stream) => match stream.enqueue(message) {
                Ok(()) => None,
                Err(message) => {
                    // More messages than the queue has entries: a driver re-using heads.
                    self.stats.io_error();
                    Some(message.reject(mem, S_IO_ERR))
                }
            },
        }
    }
}

/// Starts the thread that, once every [`JACK_RETRY`], tries to open the host device of each
/// disconnected jack (off the event loop: an ALSA open may take a while) and reports it
/// connected when that works. It sleeps on a waker the device reset cancels.
fn spawn_jack_watcher(
    topology: &Arc<Topology>,
    backend: &Arc<dyn Backend>,
) -> std::io::Result<(Arc<Waker>, JoinHandle<()>)> {
    let waker = Arc::new(Waker::new()?);
    let topology = topology.clone();
    let backend = backend.clone();
    let stop = waker.clone();
    let thread = std::thread::Builder::new()
        .name("snd-jacks".into())
        .spawn(move || {
            // It may re-open either side's device: ALSA's, if either side is ALSA.
            let name = match (backend.name(), backend.input_name()) {
                ("alsa", _) | (_, "alsa") => "alsa",
                (name, _) => name,
            };
            crate::thread_start::started(ThreadKind::JackWatcher { backend: name });
            // `wait_for` returns true when woken or cancelled; only cancellation ends it.
            while !stop.is_cancelled() {
                stop.wait_for(JACK_RETRY);
                if stop.is_cancelled() {
                    break;
                }
                for jack in topology.jack_state.disconnected() {
                    let Some(stream) = topology.streams.get(jack as usize) else {
                        continue;
                    };
                    if backend.device_available(stream.direction) {
                        topology.jack_state.set(jack, true);
                    }
                }
            }
        })?;
    Ok((waker, thread))
}

impl MutEventSubscriber for SoundWorker {
    fn init(&mut self, ops: &mut EventOps) {
        self.ensure_jack_watcher();
        for index in [CONTROLQ, EVENTQ, TXQ, RXQ] {
            let Some(queue) = self.queue(index) else {
                continue;
            };
            let events = Events::with_data(queue.kick(), u32::from(index), EventSet::IN);
            if let Err(e) = ops.add(events) {
                crate::error_limited!("virtio-snd: cannot watch queue {index}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // Bounded by the 4 queues.
        let Ok(index) = u16::try_from(events.data()) else {
            return;
        };
        let Some(queue) = self.queue(index) else {
            return;
        };
        if events.event_set().contains(EventSet::IN) {
            // The counter's value does not matter: the queue says what is new.
            let _ = queue.kick().read();
        }
        self.handle_queue(index);
    }
}

impl Drop for SoundWorker {
    fn drop(&mut self) {
        // Threads still running end on their own: their waits are cancelled and their queues
        // revoked.
        drop(self.shutdown());
    }
}
