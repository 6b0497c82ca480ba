//! The ALSA backend: each prepared stream opens the configured PCM (`default` unless told
//! otherwise) in non-blocking mode with the guest's format, rate, channels, period and buffer
//! size, and its period thread is paced by the PCM itself: it polls the PCM's descriptors
//! (translated with `revents`, which plugins such as `pulse` need) together with the stream's
//! waker.
//!
//! Output keeps at most two guest periods in the ALSA buffer (the wake-up threshold `avail_min`
//! is set so), so the host adds about two periods of latency on top of the guest's buffer.
//! Xruns are recovered with `snd_pcm_recover` and counted. An error that cannot be recovered from
//! (the device went away) breaks the stream: the PCM is left alone and every call fails at once,
//! so the period thread fails the guest's messages at the period pace until the stream is
//! prepared again, which opens the PCM anew. PCMs that do not pace at all
//! (alsa-lib's `null` and `file` plugins accept any amount of audio at once) are held to real
//! time, +5 %, by a monotonic clock; a real device is never held back by it.
//!
//! Capture is the host's microphone: it is used only when granted (`capture=alsa`), and the
//! first START of an input stream on a backend prints one line on stderr naming the device, so
//! the user sees when the guest begins to listen.

use std::ffi::CString;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::alsa::pcm::{Access, Format, Frames, HwParams, State, PCM};
use ::alsa::poll::{pollfd, Descriptors, Flags};
use ::alsa::{Direction, ValueOr};

use super::{Backend, BackendError, InputStream, OutputStream, PcmParams, Readiness};
use crate::virtio::snd::stats::SoundStats;
use crate::virtio::snd::waker::Waker;
use crate::virtio::snd::wire::PcmFormat;

/// How much faster than real time a PCM that does not pace may be fed.
const REAL_TIME_SLACK_PERCENT: u64 = 5;
/// The longest a write (read) may wait for room (data) before it is given up as stalled.
const MAX_TRANSFER_WAIT: Duration = Duration::from_millis(500);
/// How much longer than the audio it waits for a transfer may take.
const TRANSFER_SLACK: Duration = Duration::from_millis(100);
/// The longest `close` lets the PCM drain (in the released stream's thread).
const MAX_DRAIN: Duration = Duration::from_millis(500);
/// How often a drain checks for completion.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// Recoveries allowed while writing or reading one period.
const MAX_RECOVERIES: u32 = 3;

/// Opens PCMs by name.
#[derive(Debug)]
pub struct AlsaBackend {
    device: String,
    /// Set once the guest has started recording from the device (and the user was told).
    recording_announced: Arc<AtomicBool>,
}

impl AlsaBackend {
    pub fn new(device: &str) -> Result<AlsaBackend, BackendError> {
        if device.contains('\0') {
            return Err(BackendError::AlsaName(device.to_string()));
        }
        Ok(AlsaBackend {
            device: device.to_string(),
            recording_announced: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Prints the one line saying the guest started recording from `device`, unless `announced`
/// says it was printed already. Returns whether it printed.
fn announce_recording(announced: &AtomicBool, device: &str) -> bool {
    if announced.swap(true, Ordering::Relaxed) {
        return false;
    }
    eprintln!("canto: sound: the guest started recording from the ALSA capture device '{device}'");
    true
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Playback => "playback",
        Direction::Capture => "capture",
    }
}

fn open_pcm(device: &str, direction: Direction) -> Result<PCM, BackendError> {
    let name = CString::new(device).map_err(|_| BackendError::AlsaName(device.to_string()))?;
    PCM::open(&name, direction, true).map_err(|source| BackendError::AlsaOpen {
        device: device.to_string(),
        direction: direction_name(direction),
        source,
    })
}

/// Opens and closes the PCM in each direction asked for.
pub fn probe(device: &str, playback: bool, capture: bool) -> Result<(), BackendError> {
    if playback {
        open_pcm(device, Direction::Playback)?;
    }
    if capture {
        open_pcm(device, Direction::Capture)?;
    }
    Ok(())
}

fn alsa_format(format: PcmFormat) -> Format {
    match format {
        PcmFormat::S8 => Format::S8,
        PcmFormat::U8 => Format::U8,
        PcmFormat::S16 => Format::s16(),
        PcmFormat::U16 => Format::u16(),
        PcmFormat::S24_3 => Format::s24_3(),
        PcmFormat::S24 => Format::s24(),
        PcmFormat::S32 => Format::s32(),
        PcmFormat::Float => Format::float(),
    }
}

fn alsa_error(op: &'static str) -> impl Fn(::alsa::Error) -> BackendError {
    move |source| BackendError::Alsa { op, source }
}

fn is_errno(e: &::alsa::Error, errno: i32) -> bool {
    // alsa-lib returns negative codes; be indifferent to the sign the crate keeps.
    e.errno().abs() == errno
}

/// A configured PCM and the sizes ALSA granted.
struct Setup {
    pcm: PCM,
    buffer_frames: Frames,
    can_pause: bool,
}

fn configure(
    device: &str,
    direction: Direction,
    params: &PcmParams,
) -> Result<Setup, BackendError> {
    let pcm = open_pcm(device, direction)?;
    let unsupported = |what: String| BackendError::AlsaUnsupported {
        device: device.to_string(),
        what,
    };
    let period = Frames::from(params.period_frames());
    // ALSA devices commonly need two periods in their buffer.
    let buffer = Frames::from(params.buffer_frames()).max(2 * period);
    {
        let hw = HwParams::any(&pcm).map_err(alsa_error("hw_params_any"))?;
        hw.set_access(Access::RWInterleaved)
            .map_err(|_| unsupported("interleaved read/write access".into()))?;
        hw.set_format(alsa_format(params.format))
            .map_err(|_| unsupported(format!("format {:?}", params.format)))?;
        hw.set_channels(u32::from(params.channels))
            .map_err(|_| unsupported(format!("{} channels", params.channels)))?;
        hw.set_rate(params.rate_hz, ValueOr::Nearest)
            .map_err(|_| unsupported(format!("{} Hz", params.rate_hz)))?;
        hw.set_period_size_near(period, ValueOr::Nearest)
            .map_err(alsa_error("set_period_size_near"))?;
        hw.set_buffer_size_near(buffer)
            .map_err(alsa_error("set_buffer_size_near"))?;
        pcm.hw_params(&hw).map_err(alsa_error("hw_params"))?;
    }
    let (rate, buffer_frames, can_pause) = {
        let hw = pcm
            .hw_params_current()
            .map_err(alsa_error("hw_params_current"))?;
        (
            hw.get_rate().map_err(alsa_error("get_rate"))?,
            hw.get_buffer_size()
                .map_err(alsa_error("get_buffer_size"))?,
            hw.can_pause(),
        )
    };
    if rate != params.rate_hz {
        return Err(unsupported(format!(
            "{} Hz (it offers {rate} Hz)",
            params.rate_hz
        )));
    }
    Ok(Setup {
        pcm,
        buffer_frames: buffer_frames.max(1),
        can_pause,
    })
}

fn set_sw_params(
    pcm: &PCM,
    start_threshold: Frames,
    avail_min: Frames,
) -> Result<(), BackendError> {
    let sw = pcm
        .sw_params_current()
        .map_err(alsa_error("sw_params_current"))?;
    sw.set_start_threshold(start_threshold)
        .map_err(alsa_error("set_start_threshold"))?;
    sw.set_avail_min(avail_min)
        .map_err(alsa_error("set_avail_min"))?;
    pcm.sw_params(&sw).map_err(alsa_error("sw_params"))
}

/// Holds PCMs that do not pace to real time (+ slack): at most `allowance` frames ahead of the
/// frames that have elapsed since the first transfer.
#[derive(Debug)]
struct RealTimeGuard {
    rate_hz: u64,
    allowance: u64,
    origin: Option<Instant>,
    frames: u64,
}

impl RealTimeGuard {
    fn new(rate_hz: u32, allowance: u64) -> RealTimeGuard {
        RealTimeGuard {
            rate_hz: u64::from(rate_hz.max(1)),
            allowance,
            origin: None,
            frames: 0,
        }
    }

    fn reset(&mut self) {
        self.origin = None;
        self.frames = 0;
    }

    fn transferred(&mut self, frames: u64) {
        self.origin.get_or_insert_with(Instant::now);
        self.frames += frames;
    }

    /// When `next` more frames may be transferred, if not now.
    fn hold_until(&self, next: u64) -> Option<Instant> {
        let origin = self.origin?;
        let ahead = (self.frames + next).saturating_sub(self.allowance);
        let nanos = u128::from(ahead) * 1_000_000_000 * 100
            / (u128::from(self.rate_hz) * u128::from(100 + REAL_TIME_SLACK_PERCENT));
        let at = origin + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        (at > Instant::now()).then_some(at)
    }
}

/// Common plumbing of both directions: descriptors, polling, recovery.
struct Pcm {
    pcm: PCM,
    device: String,
    params: PcmParams,
    frame_bytes: usize,
    /// Frames that must be available before the thread is told the PCM is ready.
    ready_frames: Frames,
    can_pause: bool,
    paused: bool,
    needs_prepare: bool,
    /// Set when an error could not be recovered from (the device went away: a PulseAudio
    /// server died, a USB card was unplugged). The PCM is not touched again: every call fails
    /// at once, and the stream works again only once it is prepared anew (a new PCM).
    broken: Option<::alsa::Error>,
    fds: Vec<pollfd>,
    guard: RealTimeGuard,
    stats: Arc<SoundStats>,
}

impl Pcm {
    fn new(
        setup: Setup,
        device: &str,
        params: &PcmParams,
        ready_frames: Frames,
        allowance: u64,
        stats: &Arc<SoundStats>,
    ) -> Pcm {
        Pcm {
            pcm: setup.pcm,
            device: device.to_string(),
            params: *params,
            frame_bytes: params.frame_bytes() as usize,
            ready_frames,
            can_pause: setup.can_pause,
            paused: false,
            needs_prepare: false,
            broken: None,
            fds: Vec::new(),
            guard: RealTimeGuard::new(params.rate_hz, allowance),
            stats: stats.clone(),
        }
    }

    /// Fails if the PCM is broken.
    fn check(&self) -> Result<(), BackendError> {
        match self.broken {
            Some(source) => Err(BackendError::AlsaBroken {
                device: self.device.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Recovers from an xrun or suspend (counted) or an interrupted call; any other error, or a
    /// failed recovery, breaks the PCM.
    fn recover(&mut self, error: ::alsa::Error) -> Result<(), BackendError> {
        self.check()?;
        log::debug!(
            "virtio-snd: ALSA `{}`: recovering from {error}",
            self.device
        );
        self.guard.reset();
        match self.pcm.try_recover(error, true) {
            Ok(()) => {
                if is_errno(&error, libc::EPIPE) || is_errno(&error, libc::ESTRPIPE) {
                    self.stats.backend_xrun();
                }
                Ok(())
            }
            Err(e) => {
                crate::warn_limited!(
                    "virtio-snd: ALSA `{}` failed ({error}) and cannot recover ({e})",
                    self.device
                );
                self.broken = Some(e);
                self.check()
            }
        }
    }

    /// A capture PCM holds more than its buffer: drops what it holds and starts again (the
    /// recovery of an EPIPE overrun, which a running PCM does not give), counted as an xrun.
    fn overrun(&mut self) -> Result<(), BackendError> {
        self.check()?;
        log::debug!("virtio-snd: ALSA `{}`: capture overrun", self.device);
        self.guard.reset();
        let restarted = self
            .pcm
            .drop()
            .and_then(|()| self.pcm.prepare())
            .and_then(|()| self.pcm.start());
        match restarted {
            Ok(()) => {
                self.stats.backend_xrun();
                Ok(())
            }
            Err(e) => self.recover(e),
        }
    }

    fn poll_timeout_ms(&self) -> i32 {
        let ms = self.params.period_duration().as_millis().saturating_mul(2);
        i32::try_from(ms.clamp(1, 1000)).unwrap_or(1000)
    }

    /// Waits until `ready_frames` are available, the waker fires, or two periods pass.
    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        self.check()?;
        let want = u64::from(self.params.period_frames());
        if let Some(at) = self.guard.hold_until(want) {
            if waker.wait_until(at) {
                return Ok(Readiness::Woken);
            }
        }
        for attempt in 0..2 {
            match self.pcm.avail_update() {
                Ok(avail) if avail >= self.ready_frames => return Ok(Readiness::Ready),
                Ok(_) => {}
                Err(e) => {
                    self.recover(e)?;
                    continue;
                }
            }
            if attempt == 1 {
                break;
            }
            let count = self.pcm.count();
            self.fds.resize(
                count + 1,
                pollfd {
                    fd: -1,
                    events: 0,
                    revents: 0,
                },
            );
            let filled = self
                .pcm
                .fill(&mut self.fds[..count])
                .map_err(alsa_error("poll_descriptors"))?;
            self.fds[filled] = pollfd {
                fd: waker.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout_ms = self.poll_timeout_ms();
            let ready = match ::alsa::poll::poll(&mut self.fds[..=filled], timeout_ms) {
                Ok(ready) => ready,
                Err(e) if is_errno(&e, libc::EINTR) => return Ok(Readiness::TimedOut),
                Err(e) => return Err(alsa_error("poll")(e)),
            };
            if self.fds[filled].revents & libc::POLLIN != 0 {
                waker.consume();
                return Ok(Readiness::Woken);
            }
            if ready == 0 {
                return Ok(Readiness::TimedOut);
            }
            let revents = self
                .pcm
                .revents(&self.fds[..filled])
                .map_err(alsa_error("poll_descriptors_revents"))?;
            if revents.contains(Flags::ERR) {
                match self.pcm.state() {
                    State::XRun => self.recover(::alsa::Error::new("poll", -libc::EPIPE))?,
                    State::Suspended => {
                        self.recover(::alsa::Error::new("poll", -libc::ESTRPIPE))?
                    }
                    _ => {}
                }
            }
        }
        Ok(Readiness::TimedOut)
    }

    /// Stops the stream. A PCM that can pause keeps what it holds for a later START or drain.
    /// One that cannot: output plays out what it holds (dropping it would lose the last
    /// periods of every stream, which the driver already counts as played) and underruns;
    /// input drops its buffer.
    fn pause(&mut self, play_out: bool) -> Result<(), BackendError> {
        self.guard.reset();
        if self.broken.is_some() {
            // Nothing plays any more: stopped already.
            return Ok(());
        }
        match self.pcm.state() {
            State::Running if self.can_pause => {
                self.pcm.pause(true).map_err(alsa_error("pause"))?;
                self.paused = true;
            }
            State::Running if play_out => {}
            State::Running | State::XRun | State::Draining => {
                self.pcm.drop().map_err(alsa_error("drop"))?;
                self.needs_prepare = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// Undoes `pause`: the PCM is ready to take or give data again.
    fn resume(&mut self) -> Result<(), BackendError> {
        self.guard.reset();
        self.check()?;
        if self.paused {
            self.pcm.pause(false).map_err(alsa_error("pause release"))?;
            self.paused = false;
        }
        if self.needs_prepare || matches!(self.pcm.state(), State::Setup | State::XRun) {
            self.pcm.prepare().map_err(alsa_error("prepare"))?;
            self.needs_prepare = false;
        }
        Ok(())
    }

    fn latency_bytes(&mut self) -> u32 {
        if self.broken.is_some() {
            return 0;
        }
        match self.pcm.delay() {
            Ok(frames) if frames > 0 => {
                let bytes = (frames as u64).saturating_mul(self.frame_bytes as u64);
                u32::try_from(bytes).unwrap_or(u32::MAX)
            }
            _ => 0,
        }
    }

    /// How long a transfer may wait for the device: two periods and some slack, never more
    /// than [`MAX_TRANSFER_WAIT`] whatever periods the guest chose.
    fn max_wait(&self) -> Duration {
        let two_periods = self
            .params
            .duration_of(2 * u64::from(self.params.period_bytes));
        (two_periods + TRANSFER_SLACK).min(MAX_TRANSFER_WAIT)
    }

    /// Starts a prepared capture PCM: capture is started explicitly, never by a read.
    fn start_capture(&self) -> Result<(), BackendError> {
        if self.pcm.state() == State::Prepared {
            self.pcm.start().map_err(alsa_error("start"))?;
        }
        Ok(())
    }

    /// Moves `len` bytes (whole frames) in `direction`, waiting (bounded) for room or data and
    /// recovering from xruns: `io` writes (reads) the bytes from `done` on and returns the
    /// frames it moved.
    fn transfer(
        &mut self,
        direction: Direction,
        len: usize,
        io: impl FnMut(&PCM, usize) -> Result<usize, ::alsa::Error>,
    ) -> Result<(), BackendError> {
        self.transfer_until(direction, len, None, io).map(|_| ())
    }

    /// [`Pcm::transfer`], but waiting for room or data no later than `until`: once it has
    /// passed, returns the bytes moved so far (possibly fewer than `len`) instead of failing.
    fn transfer_until(
        &mut self,
        direction: Direction,
        len: usize,
        until: Option<Instant>,
        mut io: impl FnMut(&PCM, usize) -> Result<usize, ::alsa::Error>,
    ) -> Result<usize, BackendError> {
        self.check()?;
        let frame_bytes = self.frame_bytes.max(1);
        let stalled_at = Instant::now() + self.max_wait();
        let deadline = until.map_or(stalled_at, |until| until.min(stalled_at));
        let mut done = 0;
        let mut recoveries = 0;
        while done < len {
            match io(&self.pcm, done) {
                Ok(frames) if frames > 0 => {
                    done += frames * frame_bytes;
                    self.guard.transferred(frames as u64);
                    continue;
                }
                Ok(_) => {}
                Err(e) if is_errno(&e, libc::EAGAIN) => {}
                Err(e) if recoveries < MAX_RECOVERIES => {
                    recoveries += 1;
                    self.recover(e)?;
                    if direction == Direction::Capture {
                        // A recovered overrun leaves the PCM prepared, not running.
                        self.start_capture()?;
                    }
                    continue;
                }
                Err(e) => {
                    let op = match direction {
                        Direction::Playback => "writei",
                        Direction::Capture => "readi",
                    };
                    return Err(alsa_error(op)(e));
                }
            }
            let now = Instant::now();
            if until.is_some_and(|until| now >= until) {
                return Ok(done.min(len));
            }
            if now >= deadline {
                return Err(BackendError::Stalled(self.max_wait()));
            }
            // Room (data) comes as the device plays (captures); a failed wait just retries.
            let _ = self.pcm.wait(Some(10));
        }
        Ok(len)
    }
}

/// Opens output and input streams on the configured PCM.
impl Backend for AlsaBackend {
    fn name(&self) -> &'static str {
        "alsa"
    }

    fn formats(&self) -> u64 {
        PcmFormat::mask_of(&PcmFormat::ALL)
    }

    fn device_available(&self, direction: crate::virtio::snd::io::Direction) -> bool {
        let output = direction == crate::virtio::snd::io::Direction::Output;
        probe(&self.device, output, !output).is_ok()
    }

    fn open_output(
        &self,
        _stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        let setup = configure(&self.device, Direction::Playback, params)?;
        let period = Frames::from(params.period_frames());
        let buffer = setup.buffer_frames;
        // Keep about two periods queued in ALSA: wake when the fill drops below that.
        let target_fill = buffer.min(2 * period);
        let ready_frames = (buffer - target_fill + period).clamp(1, buffer);
        set_sw_params(&setup.pcm, period.min(buffer), ready_frames)?;
        let allowance = target_fill.max(0) as u64;
        Ok(Box::new(AlsaOutput {
            pcm: Pcm::new(setup, &self.device, params, ready_frames, allowance, stats),
            period: vec![0; params.period_bytes as usize],
        }))
    }

    fn open_input(
        &self,
        _stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        let setup = configure(&self.device, Direction::Capture, params)?;
        let period = Frames::from(params.period_frames()).min(setup.buffer_frames);
        // Capture is started explicitly at START, never by a read.
        set_sw_params(&setup.pcm, setup.buffer_frames * 2, period.max(1))?;
        let buffer_frames = setup.buffer_frames;
        let buffer_time =
            params.duration_of(buffer_frames as u64 * u64::from(params.frame_bytes()));
        Ok(Box::new(AlsaInput {
            buffer_frames,
            buffer_time,
            last_read: None,
            pcm: Pcm::new(setup, &self.device, params, period.max(1), 0, stats),
            period: vec![0; params.period_bytes as usize],
            device: self.device.clone(),
            recording_announced: self.recording_announced.clone(),
        }))
    }
}

struct AlsaOutput {
    pcm: Pcm,
    period: Vec<u8>,
}

impl AlsaOutput {
    /// Writes `len` bytes (whole frames) of the period buffer, waiting (bounded) for room.
    fn write(&mut self, len: usize) -> Result<(), BackendError> {
        let period = &self.period;
        self.pcm.transfer(Direction::Playback, len, |pcm, done| {
            pcm.io_bytes().writei(&period[done..len])
        })
    }

    /// Pads `len` to whole frames with silence; returns the padded length.
    fn pad_to_frame(&mut self, len: usize) -> usize {
        let frame_bytes = self.pcm.frame_bytes.max(1);
        let padded = len.div_ceil(frame_bytes) * frame_bytes;
        let padded = padded.min(self.period.len());
        self.pcm
            .params
            .format
            .fill_silence(&mut self.period[len.min(padded)..padded]);
        padded
    }
}

impl OutputStream for AlsaOutput {
    fn start(&mut self) -> Result<(), BackendError> {
        self.pcm.resume()
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.pcm.pause(true)
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        self.pcm.wait_ready(waker)
    }

    fn period_buffer(&mut self) -> &mut [u8] {
        &mut self.period
    }

    fn play_period(&mut self, filled: usize) -> Result<usize, BackendError> {
        let filled = filled.min(self.period.len());
        if filled == 0 {
            // Underrun: never replay what the buffer held before.
            self.pcm.params.format.fill_silence(&mut self.period);
            let len = self.period.len();
            self.write(len)?;
            return Ok(len);
        }
        let len = self.pad_to_frame(filled);
        self.write(len)?;
        Ok(len - filled)
    }

    fn flush_bytes(&mut self, len: usize, deadline: Instant) -> Result<usize, BackendError> {
        // After a STOP the PCM may be paused, dropped or underrun.
        self.pcm.resume()?;
        let len = len.min(self.period.len());
        let padded = self.pad_to_frame(len);
        let period = &self.period;
        // Once the PCM's buffer is full it takes room only as it plays: at the deadline, the
        // rest is left to the caller to drop.
        let taken =
            self.pcm
                .transfer_until(Direction::Playback, padded, Some(deadline), |pcm, done| {
                    pcm.io_bytes().writei(&period[done..padded])
                })?;
        Ok(taken.min(len))
    }

    fn latency_bytes(&mut self) -> u32 {
        self.pcm.latency_bytes()
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn close(mut self: Box<Self>, drain: Option<&Waker>) {
        let pcm = &mut self.pcm;
        if let Some(waker) = drain {
            // What the PCM holds was accepted (its messages are back with the driver): play it,
            // even after a STOP.
            if pcm.resume().is_ok() {
                let held_bytes = u64::from(pcm.latency_bytes());
                let held = pcm.params.duration_of(held_bytes);
                if pcm.pcm.state() == State::Prepared && !held.is_zero() {
                    let _ = pcm.pcm.start();
                }
                let deadline = Instant::now() + (held + TRANSFER_SLACK).min(MAX_DRAIN);
                // A wake-up left from the RELEASE command is not a reason to stop.
                waker.consume();
                if held <= MAX_DRAIN {
                    // snd_pcm_drain, non-blocking where the PCM allows (EAGAIN: still
                    // draining). Some plugins block in it until everything is played (`pulse`
                    // does): that is at most `held` here, and nothing waits for this thread
                    // beyond a bound (a reset leaves it behind after 250 ms).
                    while matches!(pcm.pcm.state(), State::Running | State::Draining) {
                        match pcm.pcm.drain() {
                            Ok(()) => break,
                            Err(e) if is_errno(&e, libc::EAGAIN) => {}
                            Err(_) => break,
                        }
                        if Instant::now() >= deadline || waker.is_cancelled() {
                            break;
                        }
                        waker.wait_for(DRAIN_POLL);
                    }
                } else {
                    // More than the drain may take (a RELEASE flush filled the PCM's buffer):
                    // no snd_pcm_drain, which could block for all of it. Let it play until the
                    // deadline, watching its delay; the rest is dropped below. An xrun is not
                    // the end: `pulse` reports one once its ring is empty while its server
                    // still plays (a device's delay fails in an xrun, which ends the wait).
                    while matches!(pcm.pcm.state(), State::Running | State::XRun)
                        && pcm.latency_bytes() > 0
                        && Instant::now() < deadline
                        && !waker.is_cancelled()
                    {
                        waker.wait_for(DRAIN_POLL);
                    }
                }
            }
        }
        // What is still held is lost: the drain ran out of time, was cut short, or was not
        // asked for.
        let held = pcm.latency_bytes();
        pcm.stats.tx_dropped_at_close(u64::from(held));
        let _ = pcm.pcm.drop();
    }
}

struct AlsaInput {
    pcm: Pcm,
    /// The capture buffer the PCM was configured with, in frames and in time: a buffer held full
    /// after the thread read nothing for that long is an overrun.
    buffer_frames: Frames,
    buffer_time: Duration,
    /// When the thread last read a period (or started the stream).
    last_read: Option<Instant>,
    period: Vec<u8>,
    device: String,
    /// Shared by the backend's input streams: one line per device.
    recording_announced: Arc<AtomicBool>,
}

impl InputStream for AlsaInput {
    fn start(&mut self) -> Result<(), BackendError> {
        self.pcm.resume()?;
        self.pcm.start_capture()?;
        self.last_read = Some(Instant::now());
        announce_recording(&self.recording_announced, &self.device);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.pcm.pause(false)
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        let readiness = self.pcm.wait_ready(waker)?;
        // A recovered overrun leaves the PCM prepared, not running.
        self.pcm.start_capture()?;
        Ok(readiness)
    }

    fn capture_period(&mut self) -> Result<&[u8], BackendError> {
        // A device that overruns reports EPIPE (recovered in `transfer`), but a sound server's
        // plugin does not: `pulse` keeps its buffer full to within a frame and refills it from
        // what the server buffered, so after a stall of the period thread the guest would get
        // that old audio as a burst faster than real time (and overrun there). A buffer held
        // full when nothing was read for a whole buffer's time is an overrun all the same:
        // recovered, the stale audio dropped, and counted. (PCMs that do not pace, such as
        // `null`, are always full, but read every period: no overrun.)
        let stalled = self
            .last_read
            .is_some_and(|at| at.elapsed() >= self.buffer_time);
        if stalled
            && matches!(self.pcm.pcm.avail_update(), Ok(avail) if avail + 1 >= self.buffer_frames)
        {
            self.pcm.overrun()?;
        }
        let len = self.period.len();
        let period = &mut self.period;
        self.pcm.transfer(Direction::Capture, len, |pcm, done| {
            pcm.io_bytes().readi(&mut period[done..len])
        })?;
        self.last_read = Some(Instant::now());
        Ok(&self.period)
    }

    fn latency_bytes(&mut self) -> u32 {
        self.pcm.latency_bytes()
    }

    fn close(self: Box<Self>) {
        let _ = self.pcm.pcm.drop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::snd::waker::Waker;
    use crate::virtio::test_utils::sound::paced_alsa_pcm;

    fn params() -> PcmParams {
        PcmParams {
            format: PcmFormat::S16,
            rate_hz: 48000,
            channels: 2,
            period_bytes: 4 * 480,
            buffer_bytes: 4 * 480 * 4,
        }
    }

    fn stats() -> Arc<SoundStats> {
        Arc::new(SoundStats::default())
    }

    #[test]
    fn the_null_pcm_captures_silence_at_real_time() {
        let backend = AlsaBackend::new("null").unwrap();
        let p = PcmParams {
            format: PcmFormat::U8,
            channels: 1,
            period_bytes: 480,
            buffer_bytes: 480 * 4,
            ..params()
        };
        let stats = stats();
        let mut input = backend.open_input(1, &p, &stats).unwrap();
        let waker = Waker::new().unwrap();
        input.start().unwrap();
        let start = Instant::now();
        for _ in 0..6 {
            while input.wait_ready(&waker).unwrap() != Readiness::Ready {}
            let period = input.capture_period().unwrap();
            assert_eq!(period.len(), 480);
        }
        // 6 periods of 10 ms; the first may come at once.
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "{:?}",
            start.elapsed()
        );
        input.stop().unwrap();
        input.start().unwrap();
        while input.wait_ready(&waker).unwrap() != Readiness::Ready {}
        input.capture_period().unwrap();
        input.close();
        // The null PCM is held to real time by the guard, not by a buffer: reading it is no
        // overrun.
        assert_eq!(stats.snapshot().backend_xruns, 0);
    }

    /// Plays 2 s of a tone through a real, paced PCM; run with a PulseAudio server reachable
    /// (PULSE_SERVER set) and `CANTO_ALSA_TEST_PCM=pulse`: `cargo test -- --ignored`.
    #[test]
    #[ignore]
    fn a_paced_pcm_takes_periods_in_real_time() {
        let Some(device) = paced_alsa_pcm() else {
            return;
        };
        let backend = AlsaBackend::new(&device).unwrap();
        let p = params();
        let stats = stats();
        let mut out = backend.open_output(0, &p, &stats).unwrap();
        let waker = Waker::new().unwrap();
        out.start().unwrap();
        let start = Instant::now();
        let mut phase = 0f32;
        for _ in 0..200 {
            while out.wait_ready(&waker).unwrap() != Readiness::Ready {}
            for frame in out.period_buffer().chunks_mut(4) {
                let sample = ((phase.sin() * 8000.0) as i16).to_le_bytes();
                frame[..2].copy_from_slice(&sample);
                frame[2..].copy_from_slice(&sample);
                phase += 2.0 * std::f32::consts::PI * 440.0 / 48000.0;
            }
            out.play_period(p.period_bytes as usize).unwrap();
        }
        let elapsed = start.elapsed();
        out.close(Some(&waker));
        let total = start.elapsed();
        eprintln!(
            "200 periods in {elapsed:?}, closed after {total:?}, {:?}",
            stats.snapshot()
        );
        // Never faster than real time; slower only on a busy machine (a benchmark's business).
        assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    }

    /// Captures 1 s from a real, paced PCM (see `a_paced_pcm_takes_periods_in_real_time`).
    #[test]
    #[ignore]
    fn a_paced_pcm_captures_periods_in_real_time() {
        let Some(device) = paced_alsa_pcm() else {
            return;
        };
        let backend = AlsaBackend::new(&device).unwrap();
        let stats = stats();
        let mut input = backend.open_input(1, &params(), &stats).unwrap();
        let waker = Waker::new().unwrap();
        input.start().unwrap();
        let start = Instant::now();
        for _ in 0..100 {
            while input.wait_ready(&waker).unwrap() != Readiness::Ready {}
            assert_eq!(input.capture_period().unwrap().len(), 1920);
        }
        let elapsed = start.elapsed();
        input.close();
        eprintln!(
            "100 periods captured in {elapsed:?}, {:?}",
            stats.snapshot()
        );
        assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    }

    #[test]
    fn the_first_recording_start_is_announced_once_per_device() {
        let backend = AlsaBackend::new("null").unwrap();
        assert!(!backend.recording_announced.load(Ordering::Relaxed));
        let p = PcmParams {
            format: PcmFormat::U8,
            channels: 1,
            period_bytes: 480,
            buffer_bytes: 480 * 4,
            ..params()
        };
        // Preparing is not recording: nothing is announced until START.
        let mut first = backend.open_input(1, &p, &stats()).unwrap();
        let mut second = backend.open_input(2, &p, &stats()).unwrap();
        assert!(!backend.recording_announced.load(Ordering::Relaxed));
        first.start().unwrap();
        assert!(backend.recording_announced.load(Ordering::Relaxed));
        // Another stream, or another START, on the same device says nothing more.
        second.start().unwrap();
        first.stop().unwrap();
        first.start().unwrap();
        assert!(!announce_recording(&backend.recording_announced, "null"));
        first.close();
        second.close();
        // Another device is announced on its own.
        let other = AlsaBackend::new("null").unwrap();
        assert!(announce_recording(&other.recording_announced, "null"));
    }

    #[test]
    fn a_missing_device_fails_to_probe_and_open() {
        let err = probe("canto_no_such_pcm", true, false).unwrap_err();
        assert!(matches!(err, BackendError::AlsaOpen { .. }), "{err}");
        assert!(err.to_string().contains("canto_no_such_pcm"), "{err}");
        let backend = AlsaBackend::new("canto_no_such_pcm").unwrap();
        assert!(backend.open_output(0, &params(), &stats()).is_err());
        assert!(AlsaBackend::new("a\0b").is_err());
    }

    #[test]
    fn the_file_plugin_records_bit_exactly_and_is_held_to_real_time() {
        let path = std::env::temp_dir().join(format!("canto-alsa-{}.raw", std::process::id()));
        let device = format!("file:'{}',raw", path.display());
        let backend = AlsaBackend::new(&device).unwrap();
        let p = params();
        let mut out = backend.open_output(0, &p, &stats()).unwrap();
        let waker = Waker::new().unwrap();
        out.start().unwrap();
        let mut sent = Vec::new();
        let start = Instant::now();
        for period in 0..10u32 {
            while out.wait_ready(&waker).unwrap() != Readiness::Ready {}
            let buf = out.period_buffer();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (i as u32 * 31 + period * 7) as u8;
            }
            sent.extend_from_slice(buf);
            assert_eq!(out.play_period(p.period_bytes as usize).unwrap(), 0);
        }
        // One underrun period: silence, never the previous data.
        while out.wait_ready(&waker).unwrap() != Readiness::Ready {}
        assert_eq!(out.play_period(0).unwrap(), p.period_bytes as usize);
        sent.extend(std::iter::repeat_n(0u8, p.period_bytes as usize));
        let elapsed = start.elapsed();
        out.close(Some(&waker));
        let recorded = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(recorded.len(), sent.len());
        assert!(recorded == sent, "the recording differs from the data sent");
        // 11 periods of 10 ms, of which about 2 may be buffered ahead.
        assert!(elapsed >= Duration::from_millis(70), "{elapsed:?}");
    }
}
