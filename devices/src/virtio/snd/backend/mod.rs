//! Audio backends: where output streams' PCM goes and where input streams' PCM comes from.
//!
//! A [`Backend`] opens one [`OutputStream`] or [`InputStream`] per prepared PCM stream. A stream
//! object belongs to its period thread, which calls it in a loop: wait until the backend wants a
//! period ([`OutputStream::wait_ready`], paced by the backend's clock), fill or drain the
//! stream's period buffer, hand it over. Backends report failures as [`BackendError`] values; the
//! device turns them into IO_ERR on the requests or messages affected and keeps running.
//!
//! - `alsa` (cargo feature `snd-alsa`, on by default): an ALSA PCM by name, paced by the PCM
//!   (non-blocking, poll). The only part of Canto that links libasound.
//! - `wav` (cargo feature `snd-wav`, on by default): one WAV file per output stream, holding
//!   exactly the PCM the guest sent; input streams capture silence. Paced by a monotonic clock.
//! - [`null`]: discards output, captures silence. Paced by a monotonic clock.
//!
//! Input streams record from the capture source the configuration grants (`capture=`), a
//! backend of its own: ALSA (the host's microphone, announced with one line on stderr the first
//! time the guest starts recording from it), a WAV file ([`wav_capture`]) or null. [`create`]
//! pairs the two in a [`SplitBackend`].
//!
//! A backend left out of the build is still understood on the command line: choosing it fails
//! with [`BackendError::NotBuilt`], which names the feature to build with.

#[cfg(feature = "snd-alsa")]
pub mod alsa;
pub mod clock;
pub mod null;
#[cfg(feature = "snd-wav")]
pub mod wav;
#[cfg(feature = "snd-wav")]
pub mod wav_capture;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{BackendConfig, CaptureConfig, SoundConfig};
use super::stats::SoundStats;
use super::waker::Waker;
use super::wire::PcmFormat;

/// The parameters of a prepared stream, as the driver set them and the device validated them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmParams {
    pub format: PcmFormat,
    pub rate_hz: u32,
    pub channels: u8,
    /// Bytes per period; a multiple of the frame size.
    pub period_bytes: u32,
    /// Bytes of the driver's buffer; a multiple of `period_bytes`.
    pub buffer_bytes: u32,
}

impl PcmParams {
    /// Bytes per frame: one sample per channel.
    pub fn frame_bytes(&self) -> u32 {
        self.format.sample_bytes() * u32::from(self.channels)
    }

    pub fn period_frames(&self) -> u32 {
        self.period_bytes / self.frame_bytes().max(1)
    }

    pub fn buffer_frames(&self) -> u32 {
        self.buffer_bytes / self.frame_bytes().max(1)
    }

    /// How long `bytes` of this stream's PCM last.
    pub fn duration_of(&self, bytes: u64) -> Duration {
        let frames = bytes / u64::from(self.frame_bytes().max(1));
        let nanos = u128::from(frames) * 1_000_000_000 / u128::from(self.rate_hz.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    pub fn period_duration(&self) -> Duration {
        self.duration_of(u64::from(self.period_bytes))
    }
}

/// What a backend failed to do.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("this Canto was built without the {backend} sound backend: rebuild with `--features {feature}`, or choose another backend")]
    NotBuilt {
        backend: &'static str,
        feature: &'static str,
    },
    #[cfg(feature = "snd-alsa")]
    #[error("cannot open ALSA PCM `{device}` for {direction}: {source}")]
    AlsaOpen {
        device: String,
        direction: &'static str,
        source: ::alsa::Error,
    },
    #[cfg(feature = "snd-alsa")]
    #[error("ALSA {op} failed: {source}")]
    Alsa {
        op: &'static str,
        source: ::alsa::Error,
    },
    #[cfg(feature = "snd-alsa")]
    #[error("ALSA PCM `{device}` failed and cannot recover ({source}): the stream must be prepared again")]
    AlsaBroken {
        device: String,
        source: ::alsa::Error,
    },
    #[error("ALSA PCM `{device}` cannot use {what}")]
    AlsaUnsupported { device: String, what: String },
    #[error("the ALSA device name `{0}` contains a NUL byte")]
    AlsaName(String),
    #[error("cannot create WAV file {path}: {source}")]
    WavCreate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write WAV file {path}: {source}")]
    WavWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[cfg(feature = "snd-wav")]
    #[error("cannot encode a WAV header for {format:?}: {source}")]
    WavHeader {
        format: PcmFormat,
        source: hound::Error,
    },
    #[error("the WAV backend cannot store {0:?} samples")]
    WavFormat(PcmFormat),
    #[error("stream {0} has no WAV file of its own")]
    WavNoFile(u32),
    #[error(
        "output stream {stream} has made {max} WAV files, the most it may; {path} not created"
    )]
    WavTooManyFiles {
        path: PathBuf,
        stream: u32,
        max: u32,
    },
    #[error("the backend accepted no data for {0:?}")]
    Stalled(Duration),
    #[error("cannot read the capture WAV file {path}: {reason}")]
    WavCaptureRead { path: PathBuf, reason: String },
    #[error("the capture WAV file {path} is {what}, which virtio-snd cannot offer")]
    WavCaptureFormat { path: PathBuf, what: String },
    #[error("the {0} backend has no {1} streams")]
    NoSuchDirection(&'static str, &'static str),
}

/// What a stream may be set to, as its `virtio_snd_pcm_info` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCaps {
    /// `VIRTIO_SND_PCM_FMT_*` bits.
    pub formats: u64,
    /// `VIRTIO_SND_PCM_RATE_*` bits.
    pub rates: u64,
    pub channels_min: u8,
    pub channels_max: u8,
}

/// What a pacing wait ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The backend wants (output) or has (input) the next period.
    Ready,
    /// The stream's waker fired: the period thread has a command to look at.
    Woken,
    /// Nothing happened within the backend's internal timeout; wait again.
    TimedOut,
}

/// A source of PCM streams.
pub trait Backend: Send + Sync {
    /// The backend's name as the command line spells it.
    fn name(&self) -> &'static str;
    /// The name of the backend that opens input streams (another one for a capture source).
    fn input_name(&self) -> &'static str {
        self.name()
    }
    /// The sample formats it accepts, as a `virtio_snd_pcm_info::formats` mask.
    fn formats(&self) -> u64;
    /// Opens output stream `stream_id` (0-based among all streams) with `params`.
    fn open_output(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError>;
    /// Opens input stream `stream_id` with `params`.
    fn open_input(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError>;
    /// What input streams may be set to when that is narrower than the usual (every rate, 1 to
    /// 8 channels, [`Backend::formats`]): a WAV capture source offers only its file's format.
    fn input_caps(&self) -> Option<StreamCaps> {
        None
    }
    /// Whether the host device behind streams of `direction` can be opened now: a stream's jack
    /// is connected while it can. ALSA opens and closes the PCM; files and null always can.
    /// Called off the event loop (the jack watcher), at most once a second per jack.
    fn device_available(&self, _direction: super::io::Direction) -> bool {
        true
    }
}

/// Output streams on one backend, input streams on the capture source's.
pub struct SplitBackend {
    output: Arc<dyn Backend>,
    capture: Arc<dyn Backend>,
}

impl SplitBackend {
    pub fn new(output: Arc<dyn Backend>, capture: Arc<dyn Backend>) -> SplitBackend {
        SplitBackend { output, capture }
    }
}

impl Backend for SplitBackend {
    /// The output backend's name.
    fn name(&self) -> &'static str {
        self.output.name()
    }

    fn input_name(&self) -> &'static str {
        self.capture.input_name()
    }

    fn formats(&self) -> u64 {
        self.output.formats()
    }

    fn open_output(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        self.output.open_output(stream_id, params, stats)
    }

    fn open_input(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        self.capture.open_input(stream_id, params, stats)
    }

    fn device_available(&self, direction: super::io::Direction) -> bool {
        match direction {
            super::io::Direction::Output => self.output.device_available(direction),
            super::io::Direction::Input => self.capture.device_available(direction),
        }
    }

    fn input_caps(&self) -> Option<StreamCaps> {
        // The capture source's formats, not the output's, even when it has no narrower caps.
        Some(self.capture.input_caps().unwrap_or(StreamCaps {
            formats: self.capture.formats(),
            rates: super::wire::all_rates_mask(),
            channels_min: 1,
            channels_max: 8,
        }))
    }
}

/// A prepared output stream, driven by its period thread.
pub trait OutputStream: Send {
    /// Starts or resumes playback; pacing restarts from now.
    fn start(&mut self) -> Result<(), BackendError>;
    /// Pauses playback. What the backend already holds stays there.
    fn stop(&mut self) -> Result<(), BackendError>;
    /// Blocks until the backend wants the next period, `waker` fires, or a bounded internal
    /// timeout passes. Only called while started.
    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError>;
    /// The buffer the device copies one period of guest PCM into: `period_bytes` long.
    fn period_buffer(&mut self) -> &mut [u8];
    /// Plays the first `filled` bytes of the period buffer as this period. Fewer than
    /// `period_bytes` means the guest had nothing more queued (underrun): ALSA and null play
    /// silence in its place, WAV records nothing. Returns the bytes of silence added.
    fn play_period(&mut self, filled: usize) -> Result<usize, BackendError>;
    /// Hands over the first `len` bytes of the period buffer without pacing (RELEASE flush),
    /// waiting for room no later than `deadline`. Returns how many of them the backend took:
    /// all of them, or fewer only once `deadline` has passed.
    fn flush_bytes(&mut self, len: usize, deadline: Instant) -> Result<usize, BackendError>;
    /// Bytes handed to the backend and not played yet.
    fn latency_bytes(&mut self) -> u32;
    /// Completes the release flush, before the device replies to RELEASE (WAV finalizes its
    /// header here).
    fn finish(&mut self) -> Result<(), BackendError>;
    /// Closes the stream. With `drain`, lets the backend play what it holds first: bounded,
    /// and cut short if that waker is cancelled (device reset). Without, drops what it holds.
    fn close(self: Box<Self>, drain: Option<&Waker>);
}

/// A prepared input stream, driven by its period thread.
pub trait InputStream: Send {
    /// Starts or resumes capture; pacing restarts from now.
    fn start(&mut self) -> Result<(), BackendError>;
    fn stop(&mut self) -> Result<(), BackendError>;
    /// Blocks until a period of capture is available, `waker` fires, or a bounded internal
    /// timeout passes. Only called while started.
    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError>;
    /// Captures one period (`period_bytes`) and returns it.
    fn capture_period(&mut self) -> Result<&[u8], BackendError>;
    /// Bytes captured by the backend and not handed to the device yet.
    fn latency_bytes(&mut self) -> u32;
    fn close(self: Box<Self>);
}

/// Builds the backend a configuration names. ALSA devices are opened only when a stream is
/// prepared; WAV files are created here, so a bad path fails at startup.
pub fn create(config: &SoundConfig) -> Result<Arc<dyn Backend>, BackendError> {
    let output = create_output(config)?;
    Ok(match &config.capture {
        Some(capture) if config.inputs > 0 => {
            Arc::new(SplitBackend::new(output, create_capture(capture)?))
        }
        _ => output,
    })
}

/// The capture source a grant names. A WAV file is opened and its header read here.
fn create_capture(capture: &CaptureConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(match capture {
        #[cfg(feature = "snd-alsa")]
        CaptureConfig::Alsa { device } => Arc::new(alsa::AlsaBackend::new(device)?),
        #[cfg(feature = "snd-wav")]
        CaptureConfig::Wav { path } => Arc::new(wav_capture::WavCaptureBackend::open(path)?),
        CaptureConfig::Null => Arc::new(null::NullBackend),
        #[allow(unreachable_patterns)]
        other => return Err(capture_not_built(other)),
    })
}

/// The error for a capture source this build left out.
#[allow(dead_code)]
fn capture_not_built(config: &CaptureConfig) -> BackendError {
    let (backend, feature) = match config {
        CaptureConfig::Alsa { .. } => ("ALSA", "snd-alsa"),
        CaptureConfig::Wav { .. } => ("WAV", "snd-wav"),
        CaptureConfig::Null => ("null", "none"),
    };
    BackendError::NotBuilt { backend, feature }
}

fn create_output(config: &SoundConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(match &config.backend {
        #[cfg(feature = "snd-alsa")]
        BackendConfig::Alsa { device } => Arc::new(alsa::AlsaBackend::new(device)?),
        #[cfg(feature = "snd-wav")]
        BackendConfig::Wav { path } => Arc::new(wav::WavBackend::new(path, config.outputs)?),
        BackendConfig::Null => Arc::new(null::NullBackend),
        #[allow(unreachable_patterns)]
        other => return Err(not_built(other)),
    })
}

/// The error for a backend this build left out.
#[allow(dead_code)]
fn not_built(config: &BackendConfig) -> BackendError {
    let (backend, feature) = match config {
        BackendConfig::Alsa { .. } => ("ALSA", "snd-alsa"),
        BackendConfig::Wav { .. } => ("WAV", "snd-wav"),
        BackendConfig::Null => ("null", "none"),
    };
    BackendError::NotBuilt { backend, feature }
}

/// Checks that the configured backend can work: ALSA opens (and closes) the PCM in each
/// direction the topology uses; WAV creates its files; null always works. The VMM calls it at
/// startup and falls back to null when ALSA fails.
pub fn probe(config: &SoundConfig) -> Result<(), BackendError> {
    if let Some(capture) = config.capture.as_ref().filter(|_| config.inputs > 0) {
        match capture {
            #[cfg(feature = "snd-alsa")]
            CaptureConfig::Alsa { device } => alsa::probe(device, false, true)?,
            other => drop(create_capture(other)?),
        }
    }
    match &config.backend {
        #[cfg(feature = "snd-alsa")]
        BackendConfig::Alsa { device } => alsa::probe(device, config.outputs > 0, false),
        #[cfg(feature = "snd-wav")]
        BackendConfig::Wav { path } => wav::WavBackend::new(path, config.outputs).map(|_| ()),
        BackendConfig::Null => Ok(()),
        #[allow(unreachable_patterns)]
        other => Err(not_built(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_derive_frames_and_durations() {
        let params = PcmParams {
            format: PcmFormat::S24_3,
            rate_hz: 48000,
            channels: 2,
            period_bytes: 6 * 480,
            buffer_bytes: 6 * 480 * 4,
        };
        assert_eq!(params.frame_bytes(), 6);
        assert_eq!(params.period_frames(), 480);
        assert_eq!(params.buffer_frames(), 1920);
        assert_eq!(params.period_duration(), Duration::from_millis(10));
    }
}
