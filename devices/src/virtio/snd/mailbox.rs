//! The half of a stream that its control side (the event loop) and its period thread share:
//! the queue of I/O messages waiting to be consumed, and a one-slot command mailbox. Both
//! [`super::stream`] and [`super::period`] use it; it uses neither.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::backend::{BackendError, PcmParams};
use super::io::IoMessage;
use super::waker::Waker;

/// How long a control request waits for the period thread to carry out a command. Well under
/// the Linux driver's 1 s control timeout.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(800);

/// A command from the control side to the period thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start (or resume) the backend and consume messages at its pace.
    Start,
    /// Stop consuming; queued and partly consumed messages stay.
    Stop,
    /// Flush: hand the queued messages to the backend (for a bounded time, dropping what it does
    /// not take by then), return them all, then end the thread.
    Release,
    /// End the thread, leaving queued messages queued (a partly consumed one goes back first).
    Exit,
}

/// Why a command did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the stream has no period thread")]
    NoThread,
    #[error("the period thread did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Default)]
struct Shared {
    pending: VecDeque<IoMessage>,
    /// PCM bytes of the messages in `pending`.
    pending_bytes: u64,
    /// The most PCM bytes `pending` may hold: twice the driver's buffer. A driver has at most
    /// its buffer in flight, so only a misbehaving one meets the limit.
    byte_limit: u64,
    command: Option<Command>,
    reply: Option<Result<(), BackendError>>,
}

/// What a stream's control side and its period thread share: the queue of messages waiting to
/// be consumed, and a one-slot command mailbox.
pub struct StreamMailbox {
    pub id: u32,
    /// Wakes the stream's period thread for a command (and cancels its waits at reset).
    pub waker: Waker,
    /// Cancels the drains of the stream's released threads (device reset, or too many of them
    /// at once); nothing else wakes it. Apart from [`StreamMailbox::waker`], so that a drain
    /// never takes a wake-up meant for the stream's next period thread.
    pub drain_waker: Waker,
    shared: Mutex<Shared>,
    replied: Condvar,
    pending_limit: usize,
}

impl StreamMailbox {
    pub fn new(id: u32, pending_limit: usize) -> std::io::Result<StreamMailbox> {
        Ok(StreamMailbox {
            id,
            waker: Waker::new()?,
            drain_waker: Waker::new()?,
            shared: Mutex::new(Shared::default()),
            replied: Condvar::new(),
            pending_limit,
        })
    }

    /// A new mailbox for the same stream, holding this one's queued messages, for a stream whose
    /// thread would not end (stuck in a host call): that thread keeps this mailbox, its waits
    /// cancelled, and can take neither the next thread's commands nor its messages.
    pub fn successor(&self) -> std::io::Result<StreamMailbox> {
        let next = StreamMailbox::new(self.id, self.pending_limit)?;
        self.waker.cancel();
        self.drain_waker.cancel();
        let mut old = self.lock();
        let mut new = next.lock();
        new.pending = std::mem::take(&mut old.pending);
        new.pending_bytes = std::mem::take(&mut old.pending_bytes);
        new.byte_limit = old.byte_limit;
        drop(new);
        drop(old);
        Ok(next)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Every update leaves `Shared` consistent, so a poisoned lock is still usable.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message behind the others, unless `pending_limit` messages or the byte limit
    /// are already reached.
    pub fn push(&self, message: IoMessage) -> Result<(), IoMessage> {
        let mut shared = self.lock();
        let bytes = shared.pending_bytes + message.data_len() as u64;
        if shared.pending.len() >= self.pending_limit || bytes > shared.byte_limit {
            return Err(message);
        }
        shared.pending_bytes = bytes;
        shared.pending.push_back(message);
        Ok(())
    }

    /// Puts a partly consumed message back at the front.
    pub fn push_front(&self, message: IoMessage) {
        let mut shared = self.lock();
        shared.pending_bytes += message.data_len() as u64;
        shared.pending.push_front(message);
    }

    pub fn pop(&self) -> Option<IoMessage> {
        let mut shared = self.lock();
        let message = shared.pending.pop_front()?;
        shared.pending_bytes -= message.data_len() as u64;
        Some(message)
    }

    #[cfg(all(test, feature = "snd-alsa", feature = "snd-wav"))]
    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Takes every queued message, oldest first.
    pub fn take_all(&self) -> VecDeque<IoMessage> {
        let mut shared = self.lock();
        shared.pending_bytes = 0;
        std::mem::take(&mut shared.pending)
    }

    pub fn set_byte_limit(&self, params: &PcmParams) {
        self.lock().byte_limit = 2 * u64::from(params.buffer_bytes);
    }

    /// The period thread takes the command posted to it, if any.
    pub fn take_command(&self) -> Option<Command> {
        self.lock().command.take()
    }

    /// The period thread answers the command it took.
    pub fn reply(&self, result: Result<(), BackendError>) {
        self.lock().reply = Some(result);
        self.replied.notify_all();
    }

    /// Posts a command and wakes the period thread, without waiting for its answer.
    pub fn post(&self, command: Command) {
        let mut shared = self.lock();
        shared.command = Some(command);
        shared.reply = None;
        drop(shared);
        self.waker.wake();
    }

    /// Posts a command, wakes the period thread and waits (bounded) for its answer.
    pub fn send(&self, command: Command) -> Result<(), CommandError> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        self.post(command);
        let mut shared = self.lock();
        loop {
            if let Some(result) = shared.reply.take() {
                return result.map_err(CommandError::from);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CommandError::Timeout(COMMAND_TIMEOUT));
            }
            shared = self
                .replied
                .wait_timeout(shared, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
