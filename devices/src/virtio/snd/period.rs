//! Period threads: one per prepared stream, paced by the backend.
//!
//! An output thread, each time the backend wants a period, takes messages from the front of the
//! stream's queue and copies one period of their PCM straight from guest memory into the
//! backend's period buffer: the only copy of the data on the device side, made as late as
//! possible (the Linux 6.1 driver re-queues a period before the application has refilled it).
//! A message goes back to the driver once all its bytes were handed to the backend, with status
//! OK and `latency_bytes` = the bytes the backend holds and has not played yet (0 for the
//! clock-paced null and WAV backends). With nothing queued, the backend gets silence (ALSA,
//! null) or nothing (WAV), and an underrun is counted.
//!
//! An input thread, each time the backend has captured a period, copies it into the queued RX
//! messages and returns each one once full.
//!
//! Neither thread holds a lock across backend I/O or a wait: the stream's queue lock is taken
//! only to pop a message, the queue's ring lock only to return finished ones.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::backend::{BackendError, InputStream, OutputStream, PcmParams, Readiness};
use super::io::{Completion, IoMessage};
use super::mailbox::{Command, StreamMailbox};
use super::stats::SoundStats;
use super::waker::Waker;
use super::wire::{S_IO_ERR, S_OK};
use crate::thread_start::ThreadKind;
use crate::virtio::queue::DeviceQueue;

/// How long a stopped thread sleeps between looks at its mailbox (commands wake it anyway).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The longest a RELEASE spends handing queued PCM to the backend before it drops the rest:
/// well under the mailbox's command timeout and the Linux driver's 1 s control timeout, even on
/// a busy host.
pub const RELEASE_FLUSH_TIME: Duration = Duration::from_millis(300);

/// What a period thread works with.
pub struct PeriodContext {
    pub mailbox: Arc<StreamMailbox>,
    /// The txq or rxq, where finished messages go back.
    pub queue: Arc<DeviceQueue>,
    pub stats: Arc<SoundStats>,
    pub params: PcmParams,
    /// The stream's gain (its controls) and its jack (its host device's state).
    pub topology: Arc<super::control::Topology>,
}

/// A message being consumed (TX) or filled (RX).
struct InFlight {
    message: IoMessage,
    /// PCM bytes consumed or filled so far.
    offset: usize,
    /// Some of its bytes could not be played or captured: it completes with IO_ERR.
    failed: bool,
}

impl InFlight {
    fn new(message: IoMessage) -> InFlight {
        InFlight {
            message,
            offset: 0,
            failed: false,
        }
    }

    fn remaining(&self) -> usize {
        self.message.data_len().saturating_sub(self.offset)
    }
}

/// Logs the first of a run of backend errors loudly, the rest quietly; the first also
/// disconnects the stream's jack, and the first success after a run connects it again.
struct ErrorLog {
    streak: u64,
    jacks: Arc<super::events::Jacks>,
}

impl ErrorLog {
    fn new(jacks: Arc<super::events::Jacks>) -> ErrorLog {
        ErrorLog { streak: 0, jacks }
    }

    fn failed(&mut self, stream: u32, error: &BackendError) {
        if self.streak == 0 {
            self.jacks.set(stream, false);
        }
        if self.streak == 0 {
            crate::warn_limited!("virtio-snd: stream {stream}: {error}");
        } else {
            log::debug!(
                "virtio-snd: stream {stream}: {error} (x{})",
                self.streak + 1
            );
        }
        self.streak += 1;
    }

    fn succeeded(&mut self, stream: u32) {
        if self.streak > 0 {
            self.jacks.set(stream, true);
        }
        self.streak = 0;
    }
}

/// The part of a period thread both directions share: the mailbox, the message in flight,
/// completions.
struct PeriodLoop {
    ctx: PeriodContext,
    running: bool,
    /// When the stream first started (the backend's clock begins there): the origin of the
    /// pacing report.
    first_start: Option<Instant>,
    current: Option<InFlight>,
    finished: Vec<InFlight>,
    completions: Vec<Completion>,
    errors: ErrorLog,
}

impl PeriodLoop {
    fn new(ctx: PeriodContext) -> PeriodLoop {
        let errors = ErrorLog::new(ctx.topology.jack_state.clone());
        PeriodLoop {
            ctx,
            running: false,
            first_start: None,
            current: None,
            finished: Vec::new(),
            completions: Vec::new(),
            errors,
        }
    }

    fn id(&self) -> u32 {
        self.ctx.mailbox.id
    }

    fn next_message(&mut self) -> Option<&mut InFlight> {
        if self.current.is_none() {
            self.current = self.ctx.mailbox.pop().map(InFlight::new);
        }
        self.current.as_mut()
    }

    /// Moves the current message to `finished` once it has no bytes left.
    fn retire_if_done(&mut self) {
        if self.current.as_ref().is_some_and(|c| c.remaining() == 0) {
            self.finished.extend(self.current.take());
        }
    }

    /// Returns the finished messages to the driver. `captured` RX bytes are each message's
    /// offset; TX messages report only their status.
    fn complete_finished(&mut self, latency_bytes: u32) {
        let queue = self.ctx.queue.clone();
        let Some(mem) = queue.dma() else {
            // The device was reset while this thread was in a host call: the messages are the
            // driver's again, and nothing of them may be written.
            self.finished.clear();
            return;
        };
        self.completions.clear();
        for done in self.finished.drain(..) {
            let status = if done.failed {
                self.ctx.stats.io_error();
                S_IO_ERR
            } else {
                S_OK
            };
            // A failed RX message reports no captured bytes, only its status.
            let captured = if done.failed { 0 } else { done.offset };
            self.completions
                .push(done.message.complete(&mem, status, latency_bytes, captured));
        }
        queue.complete_with(&mem, &self.completions);
    }

    /// Ends the thread's use of the queue: the message in flight goes back to the front.
    fn park(&mut self) {
        if let Some(current) = self.current.take() {
            self.ctx.mailbox.push_front(current.message);
        }
    }

    /// Takes every message: the one in flight, then the queued ones.
    fn take_all(&mut self) -> VecDeque<InFlight> {
        let mut all: VecDeque<InFlight> = self.current.take().into_iter().collect();
        all.extend(self.ctx.mailbox.take_all().into_iter().map(InFlight::new));
        all
    }

    /// One turn of a period thread's loop, the same in both directions: carries out START and
    /// STOP, parks the thread's messages and answers EXIT, or waits for the backend. Returns what
    /// is left for the direction to do.
    fn step<S: PacedStream + ?Sized>(&mut self, stream: &mut S) -> Option<Step> {
        if let Some(command) = self.ctx.mailbox.take_command() {
            match command {
                Command::Start => {
                    let result = stream.start();
                    self.running = result.is_ok();
                    if self.running {
                        self.first_start.get_or_insert_with(Instant::now);
                    }
                    self.ctx.mailbox.reply(result);
                }
                Command::Stop => {
                    self.running = false;
                    let result = stream.stop();
                    self.ctx.mailbox.reply(result);
                }
                Command::Release => return Some(Step::Release),
                Command::Exit => {
                    self.park();
                    self.ctx.mailbox.reply(Ok(()));
                    return Some(Step::Exit);
                }
            }
            return None;
        }
        if !self.running {
            self.ctx.mailbox.waker.wait_for(IDLE_WAIT);
            return None;
        }
        match stream.wait_ready(&self.ctx.mailbox.waker) {
            Ok(Readiness::Ready) => Some(Step::Period),
            Ok(Readiness::Woken | Readiness::TimedOut) => None,
            Err(e) => {
                self.errors.failed(self.id(), &e);
                // Keep the guest's clock running: the period's messages fail at the period's
                // pace instead of piling up.
                let period = self.ctx.params.period_duration();
                if self.ctx.mailbox.waker.wait_for(period) {
                    None
                } else {
                    Some(Step::FailedPeriod)
                }
            }
        }
    }
}

/// What [`PeriodLoop::step`] leaves to the direction.
enum Step {
    /// The backend wants (output) or has (input) a period.
    Period,
    /// The backend failed a period ago: that period's messages fail.
    FailedPeriod,
    /// RELEASE: return every message, reply, close the stream and end the thread.
    Release,
    /// EXIT, answered: close the stream and end the thread.
    Exit,
}

/// The calls [`PeriodLoop::step`] makes on either direction's backend stream.
trait PacedStream {
    fn start(&mut self) -> Result<(), BackendError>;
    fn stop(&mut self) -> Result<(), BackendError>;
    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError>;
}

impl PacedStream for dyn OutputStream {
    fn start(&mut self) -> Result<(), BackendError> {
        OutputStream::start(self)
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        OutputStream::stop(self)
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        OutputStream::wait_ready(self, waker)
    }
}

impl PacedStream for dyn InputStream {
    fn start(&mut self) -> Result<(), BackendError> {
        InputStream::start(self)
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        InputStream::stop(self)
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        InputStream::wait_ready(self, waker)
    }
}

/// How long a stream's guest audio took to play, against its duration: whether the host device
/// paced it in real time. Logged at RELEASE, after the backend has played out what it held.
struct PacingReport {
    stream: u32,
    started: Option<Instant>,
    audio_seconds: f64,
}

impl PacingReport {
    fn log(&self) {
        if let Some(first) = self.started.filter(|_| self.audio_seconds > 0.0) {
            crate::info_limited!(
                "virtio-snd: stream {}: played {:.3} s of guest audio in {:.3} s",
                self.stream,
                self.audio_seconds,
                first.elapsed().as_secs_f64()
            );
        }
    }
}

/// Starts an output stream's period thread.
pub fn spawn_output(
    ctx: PeriodContext,
    stream: Box<dyn OutputStream>,
    backend: &'static str,
) -> std::io::Result<JoinHandle<()>> {
    let name = format!("snd-out{}", ctx.mailbox.id);
    let thread = OutputThread {
        period: PeriodLoop::new(ctx),
        stream,
        pcm_bytes_written: 0,
    };
    std::thread::Builder::new().name(name).spawn(move || {
        crate::thread_start::started(ThreadKind::SoundPeriod { backend });
        thread.run()
    })
}

struct OutputThread {
    period: PeriodLoop,
    stream: Box<dyn OutputStream>,
    /// How many guest PCM bytes went to the backend: against the time from START until the
    /// backend finished playing them, this says whether the host device paced the stream in
    /// real time (logged at RELEASE).
    pcm_bytes_written: u64,
}

impl OutputThread {
    fn run(mut self) {
        loop {
            match self.period.step(&mut *self.stream) {
                Some(Step::Period) => self.play_period(true),
                Some(Step::FailedPeriod) => self.play_period(false),
                Some(Step::Release) => {
                    self.flush();
                    let pacing = self.pacing_report();
                    let mailbox = self.period.ctx.mailbox.clone();
                    if self.stream.latency_bytes() == 0 {
                        // Nothing to play out: close before answering, so that the next PREPARE
                        // finds what the stream held free (a WAV file) without waiting.
                        self.stream.close(None);
                        mailbox.reply(Ok(()));
                    } else {
                        // Let the backend play what it holds (bounded), the driver having its
                        // answer; the next PREPARE does not wait for it.
                        mailbox.reply(Ok(()));
                        self.stream.close(Some(&mailbox.drain_waker));
                    }
                    pacing.log();
                    return;
                }
                Some(Step::Exit) => {
                    self.stream.close(None);
                    return;
                }
                None => {}
            }
        }
    }

    /// Consumes one period of queued PCM. With `play`, it goes to the backend; without (the
    /// backend is failing), the messages complete with IO_ERR.
    fn play_period(&mut self, play: bool) {
        let period_loop = &mut self.period;
        let period = period_loop.ctx.params.period_bytes as usize;
        let format = period_loop.ctx.params.format;
        let buffer = self.stream.period_buffer();
        let period = period.min(buffer.len());
        let queue = period_loop.ctx.queue.clone();
        // Revoked (device reset): the thread is about to end, and guest memory is not its any
        // more.
        let Some(mem) = queue.dma() else {
            return;
        };
        let stream_id = period_loop.ctx.mailbox.id;
        // Once per period: a control changed now takes effect from the next period.
        let gain = period_loop.ctx.topology.controls.gain(stream_id);
        let mut filled = 0;
        let mut copied = 0u64;
        // Bus Master Enable clear: no message is read or returned; the backend gets silence.
        let dma_allowed = queue.dma_allowed();
        while filled < period && dma_allowed {
            let Some(current) = period_loop.next_message() else {
                break;
            };
            let n = (period - filled).min(current.remaining());
            if !play {
                current.failed = true;
            } else if let Err(e) = gain.copy_into(format, buffer, filled, n, |at, dst| {
                current.message.read_data(&mem, current.offset + at, dst)
            }) {
                log::debug!("virtio-snd: stream {stream_id}: cannot read PCM: {e}");
                current.failed = true;
                format.fill_silence(&mut buffer[filled..filled + n]);
            } else {
                copied += n as u64;
            }
            filled += n;
            current.offset += n;
            period_loop.retire_if_done();
        }
        // Not across the backend's I/O: a reset waits for the guard.
        drop(mem);
        period_loop.ctx.stats.tx_copied(copied);
        if play {
            match self.stream.play_period(filled) {
                Ok(silence) => {
                    self.pcm_bytes_written += copied;
                    period_loop.errors.succeeded(stream_id);
                    period_loop.ctx.stats.tx_played(copied);
                    period_loop.ctx.stats.tx_silence(silence as u64);
                }
                Err(e) => {
                    period_loop.errors.failed(period_loop.ctx.mailbox.id, &e);
                    period_loop
                        .finished
                        .iter_mut()
                        .for_each(|m| m.failed = true);
                    if let Some(current) = period_loop.current.as_mut() {
                        current.failed = true;
                    }
                }
            }
            if filled < period {
                period_loop.ctx.stats.tx_underrun();
                log::debug!(
                    "virtio-snd: stream {}: underrun, {filled} of {period} bytes queued",
                    period_loop.ctx.mailbox.id
                );
            }
        }
        if !period_loop.finished.is_empty() {
            let latency = self.stream.latency_bytes();
            period_loop.complete_finished(latency);
        }
    }

    /// What [`PacingReport::log`] needs once the backend has played everything.
    fn pacing_report(&self) -> PacingReport {
        let params = &self.period.ctx.params;
        let bytes_per_second = u64::from(params.rate_hz) * u64::from(params.frame_bytes());
        PacingReport {
            stream: self.period.id(),
            started: self.period.first_start,
            audio_seconds: self.pcm_bytes_written as f64 / bytes_per_second.max(1) as f64,
        }
    }

    /// RELEASE: hands the queued bytes to the backend without pacing, for at most
    /// [`RELEASE_FLUSH_TIME`], then returns every message, all before the driver gets its
    /// answer. What the backend has not taken by then (a paced device whose buffer is full
    /// takes room only as it plays) is dropped and counted; its messages still complete OK,
    /// since the driver is done with the stream and only the host was too slow. A cancelled
    /// waker (device reset) ends the flush at once the same way.
    fn flush(&mut self) {
        let deadline = Instant::now() + RELEASE_FLUSH_TIME;
        let period_loop = &mut self.period;
        let queue = period_loop.ctx.queue.clone();
        let mut error = None;
        let mut out_of_time = false;
        let mut dropped = 0u64;
        for mut message in period_loop.take_all() {
            while message.remaining() > 0 && error.is_none() && !message.failed && !out_of_time {
                // Bus Master Enable clear: nothing more is read; the messages complete once it
                // is set again.
                if Instant::now() >= deadline
                    || period_loop.ctx.mailbox.waker.is_cancelled()
                    || !queue.dma_allowed()
                {
                    out_of_time = true;
                    break;
                }
                let buffer = self.stream.period_buffer();
                let n = message.remaining().min(buffer.len());
                if n == 0 {
                    break;
                }
                // Only across the copy, not the backend's I/O.
                let Some(mem) = queue.dma() else {
                    // Device reset: nothing is returned, nothing more is read.
                    out_of_time = true;
                    break;
                };
                if message
                    .message
                    .read_data(&mem, message.offset, &mut buffer[..n])
                    .is_err()
                {
                    message.failed = true;
                    break;
                }
                drop(mem);
                period_loop.ctx.stats.tx_copied(n as u64);
                match self.stream.flush_bytes(n, deadline) {
                    Ok(taken) => {
                        let taken = taken.min(n);
                        period_loop.ctx.stats.tx_played(taken as u64);
                        self.pcm_bytes_written += taken as u64;
                        if taken < n {
                            dropped += (n - taken) as u64;
                            out_of_time = true;
                        }
                    }
                    Err(e) => {
                        message.failed = true;
                        error = Some(e);
                    }
                }
                message.offset += n;
            }
            if message.remaining() > 0 {
                if out_of_time && !message.failed {
                    dropped += message.remaining() as u64;
                    message.offset = message.message.data_len();
                } else {
                    message.failed = true;
                }
            }
            period_loop.finished.push(message);
        }
        if let Some(e) = error {
            crate::warn_limited!(
                "virtio-snd: stream {}: release flush: {e}",
                period_loop.id()
            );
        }
        if dropped > 0 {
            period_loop.ctx.stats.tx_dropped_on_release(dropped);
            // Once per RELEASE, and a RELEASE is one control request: bounded by the guest's
            // request rate, like every control request's own work.
            log::debug!(
                "virtio-snd: stream {}: release flush: the backend took no more within {:?}, {} \
                 queued bytes ({:?} of audio) dropped",
                period_loop.id(),
                RELEASE_FLUSH_TIME,
                dropped,
                period_loop.ctx.params.duration_of(dropped)
            );
        }
        if let Err(e) = self.stream.finish() {
            crate::error_limited!("virtio-snd: stream {}: {e}", period_loop.id());
        }
        let latency = self.stream.latency_bytes();
        period_loop.complete_finished(latency);
    }
}

/// Starts an input stream's period thread.
pub fn spawn_input(
    ctx: PeriodContext,
    stream: Box<dyn InputStream>,
    backend: &'static str,
) -> std::io::Result<JoinHandle<()>> {
    let name = format!("snd-in{}", ctx.mailbox.id);
    let thread = InputThread {
        period: PeriodLoop::new(ctx),
        stream,
    };
    std::thread::Builder::new().name(name).spawn(move || {
        crate::thread_start::started(ThreadKind::SoundPeriod { backend });
        thread.run()
    })
}

struct InputThread {
    period: PeriodLoop,
    stream: Box<dyn InputStream>,
}

impl InputThread {
    fn run(mut self) {
        loop {
            match self.period.step(&mut *self.stream) {
                Some(Step::Period) => self.capture_period(),
                Some(Step::FailedPeriod) => self.fail_period(),
                Some(Step::Release) => {
                    // The end of the stream: messages return with what they hold.
                    let all = self.period.take_all();
                    self.period.finished.extend(all);
                    let latency = self.stream.latency_bytes();
                    self.period.complete_finished(latency);
                    self.period.ctx.mailbox.reply(Ok(()));
                    self.stream.close();
                    return;
                }
                Some(Step::Exit) => {
                    self.stream.close();
                    return;
                }
                None => {}
            }
        }
    }

    /// Copies one captured period into the queued RX messages.
    fn capture_period(&mut self) {
        let period_loop = &mut self.period;
        let queue = period_loop.ctx.queue.clone();
        let stats = period_loop.ctx.stats.clone();
        let data = match self.stream.capture_period() {
            Ok(data) => {
                period_loop.errors.succeeded(period_loop.ctx.mailbox.id);
                data
            }
            Err(e) => {
                period_loop.errors.failed(period_loop.ctx.mailbox.id, &e);
                self.fail_period();
                return;
            }
        };
        // After the backend's I/O, and only across the copies.
        let Some(mem) = queue.dma() else {
            return;
        };
        let mut offset = 0;
        let stream_id = period_loop.ctx.mailbox.id;
        let gain = period_loop.ctx.topology.controls.gain(stream_id);
        let format = period_loop.ctx.params.format;
        // Bus Master Enable clear: the captured period is dropped, no message is written.
        let dma_allowed = queue.dma_allowed();
        while offset < data.len() && dma_allowed {
            let Some(current) = period_loop.next_message() else {
                period_loop.ctx.stats.rx_overrun();
                log::debug!(
                    "virtio-snd: stream {}: overrun, {} captured bytes dropped",
                    period_loop.ctx.mailbox.id,
                    data.len() - offset
                );
                break;
            };
            let n = (data.len() - offset).min(current.remaining());
            // The capture volume and switch, in the same copy.
            let written = gain.copy_from(format, data, offset, offset + n, |at, bytes| {
                current.message.write_data(&mem, current.offset + at, bytes)
            });
            match written {
                Ok(()) => stats.rx_copied(n as u64),
                Err(_) => current.failed = true,
            }
            offset += n;
            current.offset += n;
            period_loop.retire_if_done();
        }
        drop(mem);
        if !period_loop.finished.is_empty() {
            let latency = self.stream.latency_bytes();
            period_loop.complete_finished(latency);
        }
    }

    /// The backend failed: one period's worth of messages complete with IO_ERR, unfilled.
    fn fail_period(&mut self) {
        let period_loop = &mut self.period;
        let mut budget = period_loop.ctx.params.period_bytes as usize;
        // Bus Master Enable clear: no message is returned.
        if !period_loop.ctx.queue.dma_allowed() {
            budget = 0;
        }
        while budget > 0 {
            let Some(current) = period_loop.next_message() else {
                break;
            };
            let n = budget.min(current.remaining());
            current.failed = true;
            current.offset += n;
            budget -= n;
            period_loop.retire_if_done();
        }
        period_loop.complete_finished(0);
    }
}
