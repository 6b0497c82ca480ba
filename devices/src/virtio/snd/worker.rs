//! The event-loop side of an active sound device: it reacts to the driver's queue
//! notifications.
//!
//! - controlq: each request is decoded, carried out and answered at once.
//! - txq (the TX worker) and rxq: each chain is validated and appended, as a reference to guest
//!   memory, to its stream's queue; the period thread consumes it later. Invalid messages are
//!   returned at once (BAD_MSG, or length 0 when there is no room for a status); messages for
//!   a stream that is not prepared/started/stopped get IO_ERR, the I/O status for an operation
//!   the device cannot carry out.
//! - eventq: the driver's buffers stay in the available ring, held for events; Canto sends none
//!   (no jack hot-plug, no XRUN or PERIOD_ELAPSED notifications).
//! - A queue whose available index runs more than a queue's worth ahead, or that makes a head
//!   outside the descriptor table available, is broken: it is not served again until a reset,
//!   and the device reports DEVICE_NEEDS_RESET (once).

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::Backend;
use super::chain::{read_chain, ChainBuffers, ChainError};
use super::control::{self, Reply, Request, Topology};
use super::io::{Completer, Completion, Direction, IoMessage};
use super::stats::SoundStats;
use super::stream::{StreamControl, StreamResources};
use super::wire::{CONTROLQ, EVENTQ, MAX_REQUEST_SIZE, RXQ, S_BAD_MSG, S_IO_ERR, TXQ};
use crate::virtio::drain::{drain_available, Drained};
use crate::virtio::{VirtioInterrupt, VirtioInterruptType};

/// Rounds of "pop everything, re-enable notifications" per kick before the worker yields the
/// event loop (re-kicking itself so nothing is left behind).
const MAX_ROUNDS: usize = 4;

/// Reads a chain, keeping its head for the length-0 return of an unusable chain.
fn read<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Result<ChainBuffers, (u16, ChainError)>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let head = chain.head_index();
    read_chain(chain, mem).map_err(|e| (head, e))
}

/// The active device: its queues, streams and backend.
pub struct SoundWorker {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    controlq: Queue,
    kicks: [EventFd; 4],
    /// Held, never used: Canto sends no events.
    _eventq: Queue,
    tx: Arc<Completer>,
    rx: Arc<Completer>,
    streams: Vec<StreamControl>,
    topology: Arc<Topology>,
    backend: Arc<dyn Backend>,
    stats: Arc<SoundStats>,
    stopped: bool,
    /// Queues whose ring the driver broke: not served until the device is reset.
    broken: [bool; 4],
}

/// The queues of an activation, in queue order.
pub struct WorkerQueues {
    pub controlq: (Queue, EventFd),
    pub eventq: (Queue, EventFd),
    pub txq: (Queue, EventFd),
    pub rxq: (Queue, EventFd),
}

impl SoundWorker {
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: WorkerQueues,
        topology: Arc<Topology>,
        backend: Arc<dyn Backend>,
        stats: Arc<SoundStats>,
    ) -> std::io::Result<SoundWorker> {
        let tx_limit = usize::from(queues.txq.0.size().max(1));
        let rx_limit = usize::from(queues.rxq.0.size().max(1));
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
        let tx = Arc::new(Completer::new(
            queues.txq.0,
            mem.clone(),
            interrupt.clone(),
            TXQ,
            stats.clone(),
        ));
        let rx = Arc::new(Completer::new(
            queues.rxq.0,
            mem.clone(),
            interrupt.clone(),
            RXQ,
            stats.clone(),
        ));
        Ok(SoundWorker {
            mem,
            interrupt,
            controlq: queues.controlq.0,
            kicks: [
                queues.controlq.1,
                queues.eventq.1,
                queues.txq.1,
                queues.rxq.1,
            ],
            _eventq: queues.eventq.0,
            tx,
            rx,
            streams,
            topology,
            backend,
            stats,
            stopped: false,
            broken: [false; 4],
        })
    }

    /// Device reset: every period thread ends (joined), queued messages are dropped without
    /// touching the rings, and later notifications are ignored.
    pub fn shutdown(&mut self) {
        self.stopped = true;
        for stream in &mut self.streams {
            stream.reset();
        }
    }

    #[cfg(test)]
    pub fn streams(&self) -> &[StreamControl] {
        &self.streams
    }

    /// Handles a notification of queue `index`.
    pub fn handle_queue(&mut self, index: u16) {
        if self.stopped || self.broken.get(usize::from(index)).copied().unwrap_or(true) {
            return;
        }
        let drained = match index {
            CONTROLQ => self.process_controlq(),
            TXQ => self.process_io(Direction::Output),
            RXQ => self.process_io(Direction::Input),
            // The eventq's buffers stay available for events.
            EVENTQ => Drained::Empty,
            _ => Drained::Empty,
        };
        self.after_drain(index, drained);
    }

    /// Re-kicks a queue with chains left over, or stops one whose ring is broken.
    fn after_drain(&mut self, index: u16, drained: Drained) {
        match drained {
            Drained::Empty => {}
            Drained::MoreLeft => {
                // Come back after the event loop has served the others.
                if let Some(kick) = self.kicks.get(usize::from(index)) {
                    let _ = kick.write(1);
                }
            }
            Drained::Broken => {
                let Some(broken) = self.broken.get_mut(usize::from(index)) else {
                    return;
                };
                if std::mem::replace(broken, true) {
                    return;
                }
                log::warn!(
                    "virtio-snd: the driver broke queue {index}'s available ring (index past \
                     the ring, or a head outside the table); the queue is stopped until the \
                     device is reset"
                );
                if let Err(e) = self.interrupt.needs_reset() {
                    log::warn!("virtio-snd: reporting DEVICE_NEEDS_RESET: {e}");
                }
            }
        }
    }

    fn process_controlq(&mut self) -> Drained {
        let mem = self.mem.clone();
        let mut chains = Vec::new();
        let drained = drain_available(&mut self.controlq, &mem, MAX_ROUNDS, |_, chain| {
            chains.push(read(chain, &mem))
        });
        let mut used = false;
        for chain in chains {
            let completion = match chain {
                Ok(buffers) => {
                    let len = self.handle_request(&buffers);
                    Completion {
                        head: buffers.head,
                        len,
                    }
                }
                Err((head, e)) => {
                    log::debug!("virtio-snd: control chain {head} refused: {e}");
                    Completion { head, len: 0 }
                }
            };
            match self
                .controlq
                .add_used(&mem, completion.head, completion.len)
            {
                Ok(()) => used = true,
                Err(e) => log::warn!("virtio-snd: cannot return control chain: {e}"),
            }
        }
        if used && self.controlq.needs_notification(&mem).unwrap_or(true) {
            if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Queue(CONTROLQ)) {
                log::warn!("virtio-snd: controlq interrupt failed: {e}");
            }
        }
        drained
    }

    /// Carries out one control request; returns the reply's length.
    fn handle_request(&mut self, buffers: &ChainBuffers) -> u32 {
        self.stats.control_request();
        let mut request = [0u8; MAX_REQUEST_SIZE];
        // Bounded by MAX_REQUEST_SIZE.
        let len = buffers.readable.len().min(MAX_REQUEST_SIZE as u64) as usize;
        let reply = if buffers
            .readable
            .read_at(&self.mem, 0, &mut request[..len])
            .is_err()
        {
            Reply::Status(S_BAD_MSG)
        } else {
            let request = control::decode(&request[..len]);
            log::trace!("virtio-snd: control {request:?}");
            self.execute(request)
        };
        control::write_reply(&self.mem, &buffers.writable, reply, &self.topology)
    }

    fn execute(&mut self, request: Request) -> Reply {
        let status = match request {
            Request::Info { kind, query } => return self.topology.info(kind, query),
            Request::JackRemap { jack_id } => return self.topology.jack_remap(jack_id),
            Request::Malformed => S_BAD_MSG,
            Request::Unsupported(code) => {
                log::debug!("virtio-snd: unsupported control request {code:#x}");
                super::wire::S_NOT_SUPP
            }
            Request::SetParams(params) => match self.stream(params.stream_id) {
                Some(stream) => stream.set_params(&params),
                None => S_BAD_MSG,
            },
            Request::Prepare(id) => {
                let resources = StreamResources {
                    backend: &self.backend,
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
                if let Some(direction) = self.streams.get(id as usize).map(|s| s.info.direction) {
                    let queue = match direction {
                        Direction::Output => TXQ,
                        Direction::Input => RXQ,
                    };
                    if !self.broken[usize::from(queue)] {
                        let drained = self.process_io(direction);
                        self.after_drain(queue, drained);
                    }
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
    fn process_io(&mut self, direction: Direction) -> Drained {
        let completer = match direction {
            Direction::Output => self.tx.clone(),
            Direction::Input => self.rx.clone(),
        };
        let mem = completer.mem();
        let mut chains = Vec::new();
        let drained = {
            let mut queue = completer.lock_queue();
            drain_available(&mut queue, mem, MAX_ROUNDS, |_, chain| {
                chains.push(read(chain, mem))
            })
        };
        let mut done = Vec::new();
        for chain in chains {
            let buffers = match chain {
                Ok(buffers) => buffers,
                Err((head, e)) => {
                    log::debug!("virtio-snd: I/O chain {head} refused: {e}");
                    self.stats.bad_message();
                    done.push(Completion { head, len: 0 });
                    continue;
                }
            };
            let message = match IoMessage::parse(buffers, direction, mem) {
                Ok(message) => message,
                Err((completion, e)) => {
                    log::debug!("virtio-snd: I/O message {} refused: {e}", completion.head);
                    self.stats.bad_message();
                    done.push(completion);
                    continue;
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
                    done.push(message.reject(mem, S_IO_ERR));
                }
                Some(stream) if !stream.accepts_io() => {
                    log::debug!(
                        "virtio-snd: I/O message for stream {} in state {:?}",
                        message.stream_id,
                        stream.state()
                    );
                    self.stats.io_error();
                    done.push(message.reject(mem, S_IO_ERR));
                }
                Some(stream) => {
                    if let Err(message) = stream.enqueue(message) {
                        // More messages than the queue has entries: a driver re-using heads.
                        self.stats.io_error();
                        done.push(message.reject(mem, S_IO_ERR));
                    }
                }
            }
        }
        completer.complete(&done);
        drained
    }
}

impl MutEventSubscriber for SoundWorker {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, kick) in self.kicks.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(kick, index as u32, EventSet::IN)) {
                log::error!("virtio-snd: cannot watch queue {index}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data();
        let Some(kick) = self.kicks.get(index as usize) else {
            return;
        };
        if events.event_set().contains(EventSet::IN) {
            // The counter's value does not matter: the queue says what is new.
            let _ = kick.read();
        }
        // Bounded by the 4 queues.
        self.handle_queue(index as u16);
    }
}

impl Drop for SoundWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
