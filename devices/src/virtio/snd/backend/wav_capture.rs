//! The WAV capture source (`capture=wav:FILE`): input streams record a WAV file's PCM.
//!
//! The file is opened and its header read when the device is built, so a missing or unusable
//! file fails at startup. Input streams then offer exactly the file's format, rate and channel
//! count (the guest's ALSA `plug` converts if it wants another), and hand over the file's data
//! chunk unchanged, bit-exact, one period per period duration of a monotonic clock. The file is
//! played once per input stream, as a microphone would be heard: from its first frame at the
//! stream's first PREPARE, then on across STOP/START and later PREPAREs (the Linux driver
//! prepares again after an overrun: the recording goes on, it does not rewind) for as long as
//! the device exists. After the end of the data it captures silence (it does not loop), so a
//! guest recording longer than the file gets the file, then silence. What the guest had no
//! buffer for when it was captured is lost, as with any real-time source.
//!
//! The file is read a period at a time (nothing but one period is held in memory), with
//! positioned reads on one shared descriptor, so streams do not disturb each other.

use std::fs::File;
use std::io::{BufReader, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hound::SampleFormat;

use super::clock::PeriodClock;
use super::{Backend, BackendError, InputStream, OutputStream, PcmParams, Readiness, StreamCaps};
use crate::virtio::snd::stats::SoundStats;
use crate::virtio::snd::waker::Waker;
use crate::virtio::snd::wire::{rate_code, PcmFormat};

/// The most channels a capture file may have (what the topology offers).
const MAX_CHANNELS: u16 = 8;

/// A WAV file to record from.
#[derive(Debug)]
pub struct WavCaptureBackend {
    path: PathBuf,
    file: Arc<File>,
    format: PcmFormat,
    rate_hz: u32,
    channels: u8,
    /// Where the data chunk starts in the file, and its length in whole frames.
    data_offset: u64,
    data_len: u64,
    /// Per input stream id, bytes of the data chunk captured so far.
    positions: Arc<std::sync::Mutex<std::collections::HashMap<u32, Arc<AtomicU64>>>>,
}

impl WavCaptureBackend {
    /// Opens `path` and reads its header: PCM integer (8, 16, 24 in 3 or 4 bytes, 32 bits) or
    /// 32-bit float, at a rate virtio-snd knows, with 1 to 8 channels.
    pub fn open(path: &Path) -> Result<WavCaptureBackend, BackendError> {
        let read_error = |reason: String| BackendError::WavCaptureRead {
            path: path.to_path_buf(),
            reason,
        };
        let unusable = |what: String| BackendError::WavCaptureFormat {
            path: path.to_path_buf(),
            what,
        };
        let file = File::open(path).map_err(|e| read_error(e.to_string()))?;
        let file_len = file
            .metadata()
            .map_err(|e| read_error(e.to_string()))?
            .len();
        let reader = hound::WavReader::new(BufReader::new(
            file.try_clone().map_err(|e| read_error(e.to_string()))?,
        ))
        .map_err(|e| read_error(e.to_string()))?;
        let spec = reader.spec();
        let samples = u64::from(reader.len());
        // hound leaves the reader at the start of the data chunk; the chunk's size is the
        // 4 bytes before it.
        let data_offset = reader
            .into_inner()
            .stream_position()
            .map_err(|e| read_error(e.to_string()))?;
        let mut size = [0u8; 4];
        file.read_exact_at(&mut size, data_offset.saturating_sub(4))
            .map_err(|e| read_error(e.to_string()))?;
        // A streamed file may claim more than it has.
        let chunk_len =
            u64::from(u32::from_le_bytes(size)).min(file_len.saturating_sub(data_offset));
        // Only the 24-bit formats need the container size, which hound keeps to itself:
        // the data chunk's size over its sample count.
        let container = match samples {
            0 => u64::from(spec.bits_per_sample).div_ceil(8),
            n => chunk_len / n,
        };
        let format = match (spec.sample_format, spec.bits_per_sample, container) {
            (SampleFormat::Int, 8, 1) => PcmFormat::U8,
            (SampleFormat::Int, 16, 2) => PcmFormat::S16,
            (SampleFormat::Int, 24, 3) => PcmFormat::S24_3,
            (SampleFormat::Int, 24, 4) => PcmFormat::S24,
            (SampleFormat::Int, 32, 4) => PcmFormat::S32,
            (SampleFormat::Float, 32, 4) => PcmFormat::Float,
            (kind, bits, bytes) => {
                return Err(unusable(format!(
                    "{kind:?} with {bits} bits in {bytes} bytes per sample"
                )))
            }
        };
        if rate_code(spec.sample_rate).is_none() {
            return Err(unusable(format!("at {} Hz", spec.sample_rate)));
        }
        if spec.channels == 0 || spec.channels > MAX_CHANNELS {
            return Err(unusable(format!("{} channels", spec.channels)));
        }
        let channels = spec.channels as u8;
        let frame = u64::from(format.sample_bytes()) * u64::from(channels);
        let data_len = samples * u64::from(format.sample_bytes()) / frame * frame;
        Ok(WavCaptureBackend {
            path: path.to_path_buf(),
            file: Arc::new(file),
            format,
            rate_hz: spec.sample_rate,
            channels,
            data_offset,
            data_len: data_len.min(chunk_len),
            positions: Default::default(),
        })
    }
}

impl Backend for WavCaptureBackend {
    fn name(&self) -> &'static str {
        "wav"
    }

    fn formats(&self) -> u64 {
        self.format.bit()
    }

    fn open_output(
        &self,
        _stream_id: u32,
        _params: &PcmParams,
        _stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        Err(BackendError::NoSuchDirection("WAV capture", "output"))
    }

    fn open_input(
        &self,
        stream_id: u32,
        params: &PcmParams,
        _stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        // The stream's info offers only the file's format: anything else is a bug elsewhere,
        // refused rather than captured wrongly.
        if (params.format, params.rate_hz, params.channels)
            != (self.format, self.rate_hz, self.channels)
        {
            return Err(BackendError::WavCaptureFormat {
                path: self.path.clone(),
                what: format!(
                    "{:?} at {} Hz with {} channels (the stream asked {:?} at {} Hz with {})",
                    self.format,
                    self.rate_hz,
                    self.channels,
                    params.format,
                    params.rate_hz,
                    params.channels
                ),
            });
        }
        // Bounded: one entry per stream id the topology has.
        let position = self
            .positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(stream_id)
            .or_default()
            .clone();
        Ok(Box::new(WavCaptureStream {
            path: self.path.clone(),
            file: self.file.clone(),
            data_offset: self.data_offset,
            data_len: self.data_len,
            position,
            clock: PeriodClock::new(params),
            format: params.format,
            period: vec![0; params.period_bytes as usize],
        }))
    }

    fn input_caps(&self) -> Option<StreamCaps> {
        let rate = rate_code(self.rate_hz)?;
        Some(StreamCaps {
            formats: self.format.bit(),
            rates: 1u64 << rate,
            channels_min: self.channels,
            channels_max: self.channels,
        })
    }
}

/// One input stream reading the file from the start of its data.
struct WavCaptureStream {
    path: PathBuf,
    file: Arc<File>,
    data_offset: u64,
    data_len: u64,
    /// Bytes of the data chunk this stream id captured so far (kept across PREPAREs).
    position: Arc<AtomicU64>,
    clock: PeriodClock,
    format: PcmFormat,
    period: Vec<u8>,
}

impl InputStream for WavCaptureStream {
    fn start(&mut self) -> Result<(), BackendError> {
        self.clock.start();
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.clock.stop();
        Ok(())
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        Ok(self.clock.wait(waker))
    }

    fn capture_period(&mut self) -> Result<&[u8], BackendError> {
        // Only this stream's period thread moves its position (one thread per prepared
        // stream; a released one is joined before the next PREPARE opens a stream).
        let position = self.position.load(Ordering::Relaxed);
        let left = self.data_len.saturating_sub(position);
        let take = (self.period.len() as u64).min(left) as usize;
        if take > 0 {
            self.file
                .read_exact_at(&mut self.period[..take], self.data_offset + position)
                .map_err(|e| BackendError::WavCaptureRead {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            self.position
                .store(position + take as u64, Ordering::Relaxed);
        }
        self.format.fill_silence(&mut self.period[take..]);
        Ok(&self.period)
    }

    fn latency_bytes(&mut self) -> u32 {
        0
    }

    fn close(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("canto-wavcap-{}-{name}", std::process::id()))
    }

    fn write_s16_stereo(path: &Path, rate: u32, samples: &[i16]) {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(path, spec).unwrap();
        for s in samples {
            writer.write_sample(*s).unwrap();
        }
        writer.finalize().unwrap();
    }

    fn params(period_frames: u32) -> PcmParams {
        PcmParams {
            format: PcmFormat::S16,
            rate_hz: 48000,
            channels: 2,
            period_bytes: 4 * period_frames,
            buffer_bytes: 16 * period_frames,
        }
    }

    #[test]
    fn yields_the_files_pcm_bit_exact_then_silence() {
        let path = temp_path("exact.wav");
        let samples: Vec<i16> = (0..1000).map(|i| (i * 37 - 15000) as i16).collect();
        write_s16_stereo(&path, 48000, &samples);
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let backend = WavCaptureBackend::open(&path).unwrap();
        assert_eq!(
            backend.input_caps(),
            Some(StreamCaps {
                formats: PcmFormat::S16.bit(),
                rates: 1 << rate_code(48000).unwrap(),
                channels_min: 2,
                channels_max: 2,
            })
        );
        let stats = Arc::new(SoundStats::default());
        // 48 frames (1 ms) per period: 500 frames of file are 10.4 periods.
        let mut input = backend.open_input(1, &params(48), &stats).unwrap();
        let waker = Waker::new().unwrap();
        input.start().unwrap();
        let mut captured = Vec::new();
        for _ in 0..12 {
            while input.wait_ready(&waker).unwrap() != Readiness::Ready {}
            captured.extend_from_slice(input.capture_period().unwrap());
        }
        assert_eq!(&captured[..pcm.len()], &pcm[..], "not the file's PCM");
        assert!(captured[pcm.len()..].iter().all(|b| *b == 0));
        input.close();
        // Preparing the stream again goes on where it was (past the end: silence); another
        // stream id starts at the beginning.
        let mut again = backend.open_input(1, &params(48), &stats).unwrap();
        again.start().unwrap();
        while again.wait_ready(&waker).unwrap() != Readiness::Ready {}
        assert!(again.capture_period().unwrap().iter().all(|b| *b == 0));
        let mut other = backend.open_input(2, &params(48), &stats).unwrap();
        other.start().unwrap();
        while other.wait_ready(&waker).unwrap() != Readiness::Ready {}
        assert_eq!(other.capture_period().unwrap(), &pcm[..4 * 48]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_prepared_again_stream_goes_on_where_it_was() {
        let path = temp_path("resume.wav");
        let samples: Vec<i16> = (0..400).map(|i| (i * 13) as i16).collect();
        write_s16_stereo(&path, 48000, &samples);
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let backend = WavCaptureBackend::open(&path).unwrap();
        let stats = Arc::new(SoundStats::default());
        let waker = Waker::new().unwrap();
        let mut captured = Vec::new();
        for _ in 0..2 {
            let mut input = backend.open_input(1, &params(50), &stats).unwrap();
            input.start().unwrap();
            while input.wait_ready(&waker).unwrap() != Readiness::Ready {}
            captured.extend_from_slice(input.capture_period().unwrap());
            input.stop().unwrap();
            input.start().unwrap();
            while input.wait_ready(&waker).unwrap() != Readiness::Ready {}
            captured.extend_from_slice(input.capture_period().unwrap());
            input.close();
        }
        assert_eq!(captured, pcm[..4 * 200], "a new PREPARE rewound or skipped");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_config_grant_gives_one_input_stream_reading_the_file() {
        use crate::virtio::snd::config::{CaptureConfig, SoundConfig};
        let path = temp_path("grant.wav");
        let samples: Vec<i16> = (0..200).map(|i| (i * 101) as i16).collect();
        write_s16_stereo(&path, 48000, &samples);
        let config: SoundConfig = format!("backend=null,capture=wav:{}", path.display())
            .parse()
            .unwrap();
        assert_eq!((config.outputs, config.inputs), (1, 1));
        assert_eq!(
            config.capture,
            Some(CaptureConfig::Wav { path: path.clone() })
        );
        super::super::probe(&config).unwrap();
        let backend = super::super::create(&config).unwrap();
        assert_eq!(backend.name(), "null");
        assert_eq!(
            backend.input_caps().map(|c| c.formats),
            Some(PcmFormat::S16.bit())
        );
        let stats = Arc::new(SoundStats::default());
        let mut input = backend.open_input(1, &params(100), &stats).unwrap();
        let waker = Waker::new().unwrap();
        input.start().unwrap();
        while input.wait_ready(&waker).unwrap() != Readiness::Ready {}
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(input.capture_period().unwrap(), &pcm[..400]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unusable_files_fail_at_open_with_their_name() {
        let missing = WavCaptureBackend::open(Path::new("/nonexistent/in.wav")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/in.wav"),
            "{missing}"
        );
        let path = temp_path("rate.wav");
        write_s16_stereo(&path, 12345, &[0, 0]);
        let err = WavCaptureBackend::open(&path).unwrap_err().to_string();
        assert!(err.contains("12345 Hz"), "{err}");
        std::fs::write(&path, b"not a wav file at all").unwrap();
        let err = WavCaptureBackend::open(&path).unwrap_err().to_string();
        assert!(err.contains("cannot read the capture WAV file"), "{err}");
        std::fs::remove_file(&path).unwrap();
        // A stream in another format than the file's is refused.
        let path = temp_path("other.wav");
        write_s16_stereo(&path, 48000, &[1, 2]);
        let backend = WavCaptureBackend::open(&path).unwrap();
        let mono = PcmParams {
            channels: 1,
            ..params(48)
        };
        let stats = Arc::new(SoundStats::default());
        assert!(backend.open_input(1, &mono, &stats).is_err());
        assert!(backend.open_output(0, &params(48), &stats).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
