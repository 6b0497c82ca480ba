//! The WAV backend: each output stream records into its own WAV file, paced in real time so the
//! guest sees a card running at its nominal rate. Input streams capture silence.
//!
//! The data chunk holds exactly the bytes the guest sent, in the guest's format, bit-exact: the
//! header comes from `hound` (so any WAV reader agrees with it), the samples are the guest's
//! bytes unchanged. S24 is stored as hound stores it, 24 valid bits in the low three bytes of a
//! 4-byte container. A host-side underrun records nothing (no silence is invented).
//!
//! Output stream 0 writes the configured path; output stream N > 0 writes `<stem>-N.<ext>` next
//! to it. Files are created when the backend is built, so a bad path fails at startup. Several
//! prepare/release cycles with the same format append to the file. A different format never
//! touches what was recorded: it starts the stream's next file, `<stem>.K.<ext>` for the K-th
//! change (`out.wav`, `out.1.wav`, `out.2.wav`, ...; stream 1: `out-1.wav`, `out-1.1.wav`, ...),
//! unless nothing was recorded yet, in which case the current file is reused for the new format.
//! A stream makes at most [`MAX_FILES_PER_STREAM`] files, so a guest that keeps changing formats
//! cannot fill the directory; past that, a format change fails the PREPARE. The header is brought
//! up to date on every release, on a format change and when the device goes away.

use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use hound::{SampleFormat, WavSpec, WavSpecEx, WavWriter};

use super::clock::{ClockedOutput, PeriodSink};
use super::null::SilentInput;
use super::{Backend, BackendError, InputStream, OutputStream, PcmParams};
use crate::virtio::snd::stats::SoundStats;
use crate::virtio::snd::wire::PcmFormat;

/// The formats a WAV file can hold bit-exactly.
const WAV_FORMATS: [PcmFormat; 6] = [
    PcmFormat::U8,
    PcmFormat::S16,
    PcmFormat::S24_3,
    PcmFormat::S24,
    PcmFormat::S32,
    PcmFormat::Float,
];

/// The format a fresh file's header describes until a stream is prepared.
const INITIAL_FORMAT: (PcmFormat, u32, u8) = (PcmFormat::S16, 48000, 2);

/// The most files one output stream writes (its first one and one per format change).
pub const MAX_FILES_PER_STREAM: u32 = 256;

/// `base` with `separator` and `n` appended to its file stem.
fn with_stem_suffix(base: &Path, separator: char, n: u32) -> PathBuf {
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match base.extension() {
        Some(ext) => format!("{stem}{separator}{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}{separator}{n}"),
    };
    base.with_file_name(name)
}

/// The path output stream `index` records into.
pub fn output_path(base: &Path, index: u32) -> PathBuf {
    if index == 0 {
        return base.to_path_buf();
    }
    with_stem_suffix(base, '-', index)
}

/// The file output stream `index` records into after its `change`-th format change (0: none).
/// Streams are told apart by `-N`, format changes by `.K`, so no two names collide.
pub fn output_file_path(base: &Path, index: u32, change: u32) -> PathBuf {
    let stream_path = output_path(base, index);
    if change == 0 {
        return stream_path;
    }
    with_stem_suffix(&stream_path, '.', change)
}

/// Encodes the RIFF/WAVE header (with zero lengths) for a format.
fn header(format: PcmFormat, rate_hz: u32, channels: u8) -> Result<Vec<u8>, BackendError> {
    let (bits_per_sample, bytes_per_sample, sample_format) = match format {
        PcmFormat::U8 => (8, 1, SampleFormat::Int),
        PcmFormat::S16 => (16, 2, SampleFormat::Int),
        PcmFormat::S24_3 => (24, 3, SampleFormat::Int),
        PcmFormat::S24 => (24, 4, SampleFormat::Int),
        PcmFormat::S32 => (32, 4, SampleFormat::Int),
        PcmFormat::Float => (32, 4, SampleFormat::Float),
        PcmFormat::S8 | PcmFormat::U16 => return Err(BackendError::WavFormat(format)),
    };
    let spec = WavSpecEx {
        spec: WavSpec {
            channels: u16::from(channels.max(1)),
            sample_rate: rate_hz,
            bits_per_sample,
            sample_format,
        },
        bytes_per_sample,
    };
    let mut out = Cursor::new(Vec::with_capacity(80));
    let wav_error = |source| BackendError::WavHeader { format, source };
    WavWriter::new_with_spec_ex(&mut out, spec)
        .and_then(|writer| writer.finalize())
        .map_err(wav_error)?;
    Ok(out.into_inner())
}

/// One output stream's file.
#[derive(Debug)]
struct WavFile {
    /// The stream's first file; later files are named from it.
    stream_path: PathBuf,
    stream: u32,
    /// How many times a format change started a new file.
    changes: u32,
    path: PathBuf,
    file: File,
    format: (PcmFormat, u32, u8),
    header_len: u64,
    data_len: u64,
    /// Data written since the header was last brought up to date.
    dirty: bool,
    /// Bytes appended since then, and how many may be before it is done again (about a
    /// second of audio), so a VMM that dies mid-stream leaves a nearly complete file.
    unfinalized: u64,
    finalize_every: u64,
    /// Bytes refused because the data chunk reached its 4 GiB limit.
    dropped: u64,
}

impl WavFile {
    fn create(path: PathBuf, stream: u32) -> Result<WavFile, BackendError> {
        let file = create_file(&path)?;
        let mut wav = WavFile {
            stream_path: path.clone(),
            stream,
            changes: 0,
            path,
            file,
            format: INITIAL_FORMAT,
            header_len: 0,
            data_len: 0,
            dirty: false,
            unfinalized: 0,
            finalize_every: u64::MAX,
            dropped: 0,
        };
        wav.restart(INITIAL_FORMAT)?;
        Ok(wav)
    }

    fn write_error(&self, source: std::io::Error) -> BackendError {
        BackendError::WavWrite {
            path: self.path.clone(),
            source,
        }
    }

    /// Empties the file and writes a header for `format`.
    fn restart(&mut self, format: (PcmFormat, u32, u8)) -> Result<(), BackendError> {
        let header = header(format.0, format.1, format.2)?;
        self.file.set_len(0).map_err(|e| self.write_error(e))?;
        self.file
            .write_all_at(&header, 0)
            .map_err(|e| self.write_error(e))?;
        self.format = format;
        self.header_len = header.len() as u64;
        self.data_len = 0;
        self.dirty = false;
        Ok(())
    }

    /// Gets the file ready for a prepared stream: appends if the format is unchanged; for a new
    /// format, reuses the file if it holds no audio yet, else starts the stream's next file and
    /// leaves this one complete.
    fn begin(&mut self, params: &PcmParams) -> Result<(), BackendError> {
        let format = (params.format, params.rate_hz, params.channels);
        if format != self.format {
            // Checked first so that an unstorable format changes nothing.
            header(format.0, format.1, format.2)?;
            if self.data_len > 0 {
                self.start_next_file()?;
            }
            self.restart(format)?;
        }
        self.finalize_every = u64::from(params.rate_hz) * u64::from(params.frame_bytes());
        Ok(())
    }

    /// Finalizes this file and switches to the stream's next one (empty until `restart`).
    fn start_next_file(&mut self) -> Result<(), BackendError> {
        let change = self.changes + 1;
        let path = with_stem_suffix(&self.stream_path, '.', change);
        if change >= MAX_FILES_PER_STREAM {
            return Err(BackendError::WavTooManyFiles {
                path,
                stream: self.stream,
                max: MAX_FILES_PER_STREAM,
            });
        }
        self.finalize()?;
        let file = create_file(&path)?;
        self.file = file;
        self.path = path;
        self.changes = change;
        self.data_len = 0;
        self.dirty = false;
        self.unfinalized = 0;
        self.dropped = 0;
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> Result<(), BackendError> {
        // The RIFF size field counts the header and a pad byte too; keep everything in a u32.
        let room = u64::from(u32::MAX) - self.header_len - 1 - self.data_len;
        let keep = (data.len() as u64).min(room) as usize;
        if keep < data.len() {
            if self.dropped == 0 {
                crate::warn_limited!("virtio-snd: {} is full (4 GiB)", self.path.display());
            }
            self.dropped += (data.len() - keep) as u64;
        }
        if keep == 0 {
            return Ok(());
        }
        if let Err(e) = self
            .file
            .write_all_at(&data[..keep], self.header_len + self.data_len)
        {
            // A short write (a full disk) may have stored part of the data: none of it counts,
            // and the next header update cuts the file back to the data chunk (shrinking needs
            // no room), even if nothing was appended since the last one.
            self.dirty = true;
            return Err(self.write_error(e));
        }
        self.data_len += keep as u64;
        self.dirty = true;
        self.unfinalized += keep as u64;
        if self.unfinalized >= self.finalize_every {
            self.finalize()?;
        }
        Ok(())
    }

    /// Writes the chunk sizes (and the pad byte an odd-sized data chunk needs).
    fn finalize(&mut self) -> Result<(), BackendError> {
        if !self.dirty {
            return Ok(());
        }
        let data_end = self.header_len + self.data_len;
        let pad = self.data_len % 2;
        if pad == 1 {
            self.file
                .write_all_at(&[0], data_end)
                .map_err(|e| self.write_error(e))?;
        }
        // A later append overwrites the pad byte; the length is set again here each time.
        self.file
            .set_len(data_end + pad)
            .map_err(|e| self.write_error(e))?;
        // Bounded by `append`: all of these fit in a u32.
        let riff_size = (data_end + pad - 8) as u32;
        let data_size = self.data_len as u32;
        self.file
            .write_all_at(&riff_size.to_le_bytes(), 4)
            .and_then(|_| {
                self.file
                    .write_all_at(&data_size.to_le_bytes(), self.header_len - 4)
            })
            .map_err(|e| self.write_error(e))?;
        self.dirty = false;
        self.unfinalized = 0;
        Ok(())
    }
}

fn create_file(path: &Path) -> Result<File, BackendError> {
    File::create(path).map_err(|source| BackendError::WavCreate {
        path: path.to_path_buf(),
        source,
    })
}

impl Drop for WavFile {
    fn drop(&mut self) {
        if let Err(e) = self.finalize() {
            crate::error_limited!("virtio-snd: {e}");
        }
    }
}

/// One slot per output stream; a prepared stream takes its file out and puts it back on close.
type Slots = Vec<Mutex<Option<WavFile>>>;

/// Records output streams into WAV files.
#[derive(Debug)]
pub struct WavBackend {
    slots: Arc<Slots>,
}

impl WavBackend {
    /// Creates (or truncates) the file of each of `outputs` output streams.
    pub fn new(path: &Path, outputs: u32) -> Result<WavBackend, BackendError> {
        let slots = (0..outputs)
            .map(|index| {
                WavFile::create(output_path(path, index), index).map(|f| Mutex::new(Some(f)))
            })
            .collect::<Result<Slots, _>>()?;
        Ok(WavBackend {
            slots: Arc::new(slots),
        })
    }
}

fn lock_slot(slots: &Slots, index: usize) -> Option<std::sync::MutexGuard<'_, Option<WavFile>>> {
    slots
        .get(index)
        .map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner))
}

impl Backend for WavBackend {
    fn name(&self) -> &'static str {
        "wav"
    }

    fn formats(&self) -> u64 {
        PcmFormat::mask_of(&WAV_FORMATS)
    }

    fn open_output(
        &self,
        stream_id: u32,
        params: &PcmParams,
        _stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        let index = stream_id as usize;
        let mut file = lock_slot(&self.slots, index)
            .and_then(|mut slot| slot.take())
            .ok_or(BackendError::WavNoFile(stream_id))?;
        if let Err(e) = file.begin(params) {
            if let Some(mut slot) = lock_slot(&self.slots, index) {
                *slot = Some(file);
            }
            return Err(e);
        }
        let sink = WavSink {
            slots: self.slots.clone(),
            index,
            file: Some(file),
        };
        Ok(Box::new(ClockedOutput::new(params, sink)))
    }

    fn open_input(
        &self,
        _stream_id: u32,
        params: &PcmParams,
        _stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        Ok(Box::new(SilentInput::new(params)))
    }
}

/// A WAV output stream's periods go to its file (nothing for the part of a period the guest did
/// not fill); the file goes back to its slot when the stream is dropped.
struct WavSink {
    slots: Arc<Slots>,
    index: usize,
    /// Always `Some` until the stream is dropped.
    file: Option<WavFile>,
}

impl WavSink {
    fn write(&mut self, data: &[u8]) -> Result<(), BackendError> {
        match self.file.as_mut() {
            Some(file) => file.append(data),
            None => Ok(()),
        }
    }
}

impl PeriodSink for WavSink {
    fn play(&mut self, data: &[u8], _period_bytes: usize) -> Result<usize, BackendError> {
        self.write(data)?;
        Ok(0)
    }

    fn flush(&mut self, data: &[u8]) -> Result<(), BackendError> {
        self.write(data)
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        match self.file.as_mut() {
            Some(file) => file.finalize(),
            None => Ok(()),
        }
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        if let Some(mut file) = self.file.take() {
            if let Err(e) = file.finalize() {
                crate::error_limited!("virtio-snd: {e}");
            }
            if let Some(mut slot) = lock_slot(&self.slots, self.index) {
                *slot = Some(file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(format: PcmFormat, channels: u8) -> PcmParams {
        let frame = format.sample_bytes() * u32::from(channels);
        PcmParams {
            format,
            rate_hz: 44100,
            channels,
            period_bytes: frame * 4,
            buffer_bytes: frame * 16,
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("canto-wav-{}-{name}", std::process::id()))
    }

    fn stats() -> Arc<SoundStats> {
        Arc::new(SoundStats::default())
    }

    #[test]
    fn names_one_file_per_output() {
        let base = Path::new("/tmp/out.wav");
        assert_eq!(output_path(base, 0), base);
        assert_eq!(output_path(base, 2), Path::new("/tmp/out-2.wav"));
        assert_eq!(output_path(Path::new("rec"), 1), Path::new("rec-1"));
        assert_eq!(output_file_path(base, 0, 0), base);
        assert_eq!(output_file_path(base, 0, 3), Path::new("/tmp/out.3.wav"));
        assert_eq!(output_file_path(base, 2, 1), Path::new("/tmp/out-2.1.wav"));
        assert_eq!(
            output_file_path(Path::new("rec"), 1, 2),
            Path::new("rec-1.2")
        );
    }

    #[test]
    fn a_path_that_cannot_be_created_fails_with_its_name() {
        let err = WavBackend::new(Path::new("/nonexistent-dir/x.wav"), 1).unwrap_err();
        assert!(matches!(err, BackendError::WavCreate { .. }));
        assert!(err.to_string().contains("/nonexistent-dir/x.wav"), "{err}");
    }

    #[test]
    fn stores_every_format_bit_exactly() {
        for format in WAV_FORMATS {
            let path = temp_path(&format!("{format:?}.wav"));
            let backend = WavBackend::new(&path, 1).unwrap();
            let p = params(format, 2);
            let mut out = backend.open_output(0, &p, &stats()).unwrap();
            let data: Vec<u8> = (0..p.period_bytes).map(|i| (i * 7 + 3) as u8).collect();
            out.period_buffer().copy_from_slice(&data);
            assert_eq!(out.play_period(data.len()).unwrap(), 0);
            out.finish().unwrap();
            out.close(None);
            drop(backend);

            let bytes = std::fs::read(&path).unwrap();
            let reader = hound::WavReader::open(&path).unwrap();
            let spec = reader.spec();
            assert_eq!(spec.channels, 2);
            assert_eq!(spec.sample_rate, 44100);
            assert_eq!(reader.len() * format.sample_bytes(), data.len() as u32);
            assert_eq!(&bytes[bytes.len() - data.len()..], &data[..], "{format:?}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn underruns_record_nothing_and_releases_append() {
        let path = temp_path("append.wav");
        let backend = WavBackend::new(&path, 1).unwrap();
        let p = params(PcmFormat::U8, 1);
        for round in 0..2u8 {
            let mut out = backend.open_output(0, &p, &stats()).unwrap();
            out.period_buffer().fill(round + 1);
            out.play_period(3).unwrap();
            out.play_period(0).unwrap();
            out.finish().unwrap();
            out.close(None);
        }
        // Another format starts the file over.
        drop(backend);
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.len(), 6);
        let samples: Vec<i32> = reader.into_samples::<i32>().map(|s| s.unwrap()).collect();
        // hound reads unsigned 8-bit data as signed (x - 128).
        assert_eq!(
            samples,
            vec![1 - 128, 1 - 128, 1 - 128, 2 - 128, 2 - 128, 2 - 128]
        );
        // The odd data chunk is padded to an even RIFF size.
        let bytes = std::fs::read(&path).unwrap();
        let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(riff + 8, bytes.len());
        assert_eq!(bytes.len() % 2, 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_header_is_kept_up_to_date_while_recording() {
        let path = temp_path("live.wav");
        let backend = WavBackend::new(&path, 1).unwrap();
        // 100 frames per second of U8 mono: a period of 40 bytes is 0.4 s.
        let p = PcmParams {
            rate_hz: 100,
            period_bytes: 40,
            buffer_bytes: 160,
            ..params(PcmFormat::U8, 1)
        };
        let mut out = backend.open_output(0, &p, &stats()).unwrap();
        for _ in 0..3 {
            out.play_period(40).unwrap();
        }
        // 1.2 s recorded, no release yet: the header covers at least the first second.
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.len(), 120);
        drop(reader);
        out.close(None);
        drop(backend);
        std::fs::remove_file(&path).unwrap();
    }

    /// Plays one period of `data` in `format` on stream `index`, then releases it.
    fn play_once(backend: &WavBackend, index: u32, format: PcmFormat, channels: u8, data: &[u8]) {
        let mut p = params(format, channels);
        p.period_bytes = data.len() as u32;
        p.buffer_bytes = p.period_bytes * 4;
        let mut out = backend.open_output(index, &p, &stats()).unwrap();
        out.period_buffer()[..data.len()].copy_from_slice(data);
        assert_eq!(out.play_period(data.len()).unwrap(), 0);
        out.finish().unwrap();
        out.close(None);
    }

    fn assert_wav(path: &Path, format: SampleFormat, bits: u16, channels: u16, data: &[u8]) {
        let reader = hound::WavReader::open(path).unwrap();
        let spec = reader.spec();
        assert_eq!(
            (spec.sample_format, spec.bits_per_sample, spec.channels),
            (format, bits, channels),
            "{}",
            path.display()
        );
        assert_eq!(reader.len() as usize * usize::from(bits / 8), data.len());
        drop(reader);
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            &bytes[bytes.len() - data.len()..],
            data,
            "{}",
            path.display()
        );
    }

    #[test]
    fn a_new_format_starts_a_new_file_and_keeps_the_old_one_whole() {
        let path = temp_path("formats.wav");
        let second = output_file_path(&path, 0, 1);
        let third = output_file_path(&path, 0, 2);
        let backend = WavBackend::new(&path, 1).unwrap();
        let s16: Vec<u8> = (0..64u32).map(|i| (i * 5 + 1) as u8).collect();
        let float: Vec<u8> = (0..32u32).map(|i| (i * 11 + 2) as u8).collect();
        // Two releases in S16 stereo append; Float mono then starts the next file; S16 again
        // starts a third (files keep the order of the guest's streams).
        play_once(&backend, 0, PcmFormat::S16, 2, &s16[..32]);
        play_once(&backend, 0, PcmFormat::S16, 2, &s16[32..]);
        play_once(&backend, 0, PcmFormat::Float, 1, &float);
        play_once(&backend, 0, PcmFormat::S16, 2, &s16[..8]);
        drop(backend);
        assert_wav(&path, SampleFormat::Int, 16, 2, &s16);
        assert_wav(&second, SampleFormat::Float, 32, 1, &float);
        assert_wav(&third, SampleFormat::Int, 16, 2, &s16[..8]);
        for file in [path, second, third] {
            std::fs::remove_file(&file).unwrap();
        }
    }

    #[test]
    fn a_new_format_before_any_audio_reuses_the_file() {
        let path = temp_path("first-format.wav");
        let backend = WavBackend::new(&path, 1).unwrap();
        // Prepared and released without audio in S16, then played in Float: one file.
        let out = backend
            .open_output(0, &params(PcmFormat::S16, 2), &stats())
            .unwrap();
        out.close(None);
        let float = [1u8, 2, 3, 4, 5, 6, 7, 8];
        play_once(&backend, 0, PcmFormat::Float, 1, &float);
        drop(backend);
        assert_wav(&path, SampleFormat::Float, 32, 1, &float);
        assert!(!output_file_path(&path, 0, 1).exists());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn format_changes_make_a_bounded_number_of_files() {
        let path = temp_path("many.wav");
        let backend = WavBackend::new(&path, 1).unwrap();
        let formats = [(PcmFormat::S16, 2), (PcmFormat::U8, 1)];
        for change in 0..MAX_FILES_PER_STREAM {
            let (format, channels) = formats[change as usize % 2];
            play_once(&backend, 0, format, channels, &[7; 4]);
        }
        let (format, channels) = formats[MAX_FILES_PER_STREAM as usize % 2];
        let Err(err) = backend.open_output(0, &params(format, channels), &stats()) else {
            panic!("format change {MAX_FILES_PER_STREAM} was accepted");
        };
        assert!(matches!(err, BackendError::WavTooManyFiles { .. }), "{err}");
        // The last file is still the stream's, complete, and the same format still appends.
        let (format, channels) = formats[(MAX_FILES_PER_STREAM as usize - 1) % 2];
        play_once(&backend, 0, format, channels, &[9; 4]);
        drop(backend);
        let last = output_file_path(&path, 0, MAX_FILES_PER_STREAM - 1);
        let bytes = std::fs::read(&last).unwrap();
        assert_eq!(&bytes[bytes.len() - 8..], &[7, 7, 7, 7, 9, 9, 9, 9]);
        assert!(!output_file_path(&path, 0, MAX_FILES_PER_STREAM).exists());
        for change in 0..MAX_FILES_PER_STREAM {
            std::fs::remove_file(output_file_path(&path, 0, change)).unwrap();
        }
    }

    #[test]
    fn refuses_formats_and_streams_it_cannot_store() {
        let path = temp_path("refuse.wav");
        let backend = WavBackend::new(&path, 1).unwrap();
        assert!(matches!(
            backend.open_output(0, &params(PcmFormat::S8, 1), &stats()),
            Err(BackendError::WavFormat(PcmFormat::S8))
        ));
        // The file went back to its slot: the stream can still be prepared.
        assert!(backend
            .open_output(0, &params(PcmFormat::S16, 1), &stats())
            .is_ok());
        assert!(matches!(
            backend.open_output(1, &params(PcmFormat::S16, 1), &stats()),
            Err(BackendError::WavNoFile(1))
        ));
        drop(backend);
        std::fs::remove_file(&path).unwrap();
    }
}
