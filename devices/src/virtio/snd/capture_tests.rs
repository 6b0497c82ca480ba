//! Capture at device level (issue 17 item 1; docs/virtio-snd.md, "Capture"): the fake driver of
//! `virtio::test_utils` records like the Linux driver ([`Recorder`]: a buffer's worth of RX
//! messages queued, one re-queued as each comes back), every RX buffer pre-filled with
//! [`STALE`] so that a byte the device did not write shows. The host capture xrun case needs a
//! paced ALSA device and lives with the other host faults (`fault_tests.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::wire::*;
use super::*;
use crate::virtio::test_utils::sound::{pattern, Captured, Recorder, SoundRig, STALE};

/// How long one RX message may take to come back: periods here are 10 ms; this is a stall.
const PATIENCE: Duration = Duration::from_secs(5);

/// A file removed on drop.
struct TempWav(PathBuf);

impl TempWav {
    /// A PCM WAV file (format tag 1) of `bits`-bit samples holding `data`.
    fn new(name: &str, bits: u16, channels: u16, rate: u32, data: &[u8]) -> TempWav {
        let path =
            std::env::temp_dir().join(format!("canto-capture-{}-{name}.wav", std::process::id()));
        write_wav(&path, bits, channels, rate, data);
        TempWav(path)
    }
}

impl Drop for TempWav {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes a canonical 44-byte-header PCM WAV file: what is in `data` is exactly the data chunk.
fn write_wav(path: &Path, bits: u16, channels: u16, rate: u32, data: &[u8]) {
    let block = channels * bits / 8;
    let mut file = Vec::with_capacity(44 + data.len() + 1);
    file.extend_from_slice(b"RIFF");
    file.extend_from_slice(&(36 + data.len() as u32 + (data.len() as u32 & 1)).to_le_bytes());
    file.extend_from_slice(b"WAVEfmt ");
    file.extend_from_slice(&16u32.to_le_bytes());
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&channels.to_le_bytes());
    file.extend_from_slice(&rate.to_le_bytes());
    file.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
    file.extend_from_slice(&block.to_le_bytes());
    file.extend_from_slice(&bits.to_le_bytes());
    file.extend_from_slice(b"data");
    file.extend_from_slice(&(data.len() as u32).to_le_bytes());
    file.extend_from_slice(data);
    if data.len() % 2 == 1 {
        file.push(0);
    }
    std::fs::write(path, file).unwrap();
}

/// Noise no silence pattern and no [`STALE`] run looks like: each byte differs from the last.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        })
        .collect()
}

/// Output stream 0 on null, input stream 1 recording from `capture`.
fn capture_config(capture: CaptureConfig) -> SoundConfig {
    SoundConfig {
        backend: BackendConfig::Null,
        capture: Some(capture),
        outputs: 1,
        inputs: 1,
        jacks: 0,
    }
}

fn wav_source(file: &TempWav) -> SoundConfig {
    capture_config(CaptureConfig::Wav {
        path: file.0.clone(),
    })
}

/// Input stream 1: `format`, `channels` at `rate` Hz, 10 ms periods, four per buffer.
fn params_10ms(format: PcmFormat, channels: u8, rate: u32) -> SetParams {
    let frame = format.sample_bytes() * u32::from(channels);
    let period_bytes = rate / 100 * frame;
    SetParams {
        stream_id: 1,
        buffer_bytes: 4 * period_bytes,
        period_bytes,
        features: 0,
        channels,
        format: format.code(),
        rate: rate_code(rate).unwrap(),
    }
}

/// Checks every message completed OK and full; returns their PCM back to back.
#[track_caller]
fn full_and_ok(captured: &[Captured]) -> Vec<u8> {
    let mut pcm = Vec::new();
    for (i, message) in captured.iter().enumerate() {
        assert_eq!(message.status, S_OK, "message {i}");
        assert_eq!(
            message.used_len as usize,
            message.data.len() + 8,
            "message {i} did not come back full"
        );
        pcm.extend_from_slice(&message.data);
    }
    pcm
}

/// STOP and RELEASE input stream 1: every message still queued comes back before the reply.
#[track_caller]
fn release(h: &mut SoundRig, recorder: &mut Recorder) -> Vec<(u16, u32)> {
    assert_eq!(h.pcm(R_PCM_STOP, 1), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 1), S_OK);
    let used = h.take_used(RXQ);
    assert_eq!(used.len(), recorder.in_flight(), "RELEASE kept messages");
    recorder.forget();
    h.assert_all_returned(RXQ, "after RELEASE");
    used
}

/// A WAV capture source reaches the RX messages bit-exact and in order, one full message per
/// period of the host's clock: the k-th comes back no earlier than k periods after START.
#[test]
fn a_wav_source_fills_rx_messages_in_order_bit_exact_one_per_period() {
    const PERIODS: usize = 25;
    let period = Duration::from_millis(10);
    // 40 periods of S16 stereo noise at 48 kHz.
    let pcm = noise(40 * 1920, 0x5eed);
    let file = TempWav::new("order", 16, 2, 48000, &pcm);
    let mut h = SoundRig::new(wav_source(&file));
    h.prepare(params_10ms(PcmFormat::S16, 2, 48000));
    let mut recorder = Recorder::new(1, 1920, 4);
    recorder.fill(&mut h);
    // Before START nothing is captured.
    std::thread::sleep(3 * period);
    assert!(h.take_used(RXQ).is_empty(), "RX completed before START");
    let started = Instant::now();
    assert_eq!(h.pcm(R_PCM_START, 1), S_OK);
    let captured = recorder.record(&mut h, PERIODS, PATIENCE);
    for (k, message) in captured.iter().enumerate() {
        let due = (k as u32 + 1) * period;
        assert!(
            message.at.duration_since(started) >= due,
            "message {k} came back {:?} after START, before its period ended ({due:?})",
            message.at.duration_since(started)
        );
    }
    // Paced, not stalled (the bound only catches a device that waits far too long).
    let took = captured[PERIODS - 1].at.duration_since(started);
    assert!(
        took < PERIODS as u32 * period + Duration::from_secs(3),
        "{took:?}"
    );
    let got = full_and_ok(&captured);
    if let Some(i) = got.iter().zip(&pcm).position(|(a, b)| a != b) {
        panic!(
            "captured PCM differs from the file at byte {i} (period {})",
            i / 1920
        );
    }
    release(&mut h, &mut recorder);
    let stats = h.sound.stats();
    assert!(
        stats.rx_bytes_copied >= (PERIODS * 1920) as u64,
        "{stats:?}"
    );
    assert_eq!(stats.rx_overruns, 0, "{stats:?}");
    assert_eq!(stats.io_errors, 0, "{stats:?}");
}

/// Past the end of a WAV source the guest captures silence of the stream's format (0x80 for
/// U8, 0 for S16), the last partial period included; no byte of any message is left stale.
#[test]
fn an_exhausted_wav_source_gives_silence_never_stale_data() {
    for (format, bits, channels, rate, silence) in [
        (PcmFormat::U8, 8u16, 1u8, 8000u32, 0x80u8),
        (PcmFormat::S16, 16, 2, 48000, 0),
    ] {
        let p = params_10ms(format, channels, rate);
        let period = p.period_bytes as usize;
        // Two and a half periods of file.
        let pcm = noise(period * 5 / 2, u32::from(bits));
        let file = TempWav::new(&format!("short-{bits}"), bits, channels.into(), rate, &pcm);
        let mut h = SoundRig::new(wav_source(&file));
        h.prepare(p);
        let mut recorder = Recorder::new(1, p.period_bytes, 4);
        recorder.fill(&mut h);
        assert_eq!(h.pcm(R_PCM_START, 1), S_OK);
        let got = full_and_ok(&recorder.record(&mut h, 6, PATIENCE));
        assert_eq!(
            &got[..pcm.len()],
            &pcm[..],
            "{format:?}: not the file's PCM"
        );
        if let Some(i) = got[pcm.len()..].iter().position(|b| *b != silence) {
            let at = pcm.len() + i;
            panic!(
                "{format:?}: byte {at} (period {}) after the file's end is {:#04x}, not silence \
                 {silence:#04x}{}",
                at / period,
                got[at],
                if got[at] == STALE { " (stale)" } else { "" }
            );
        }
        release(&mut h, &mut recorder);
    }
}

/// The null capture source overwrites every byte of every message with the silence of the
/// stream's format.
#[test]
fn null_capture_overwrites_every_byte_with_the_formats_silence() {
    let mut h = SoundRig::new(capture_config(CaptureConfig::Null));
    let formats: [(PcmFormat, &[u8]); 8] = [
        (PcmFormat::S8, &[0]),
        (PcmFormat::U8, &[0x80]),
        (PcmFormat::S16, &[0, 0]),
        (PcmFormat::U16, &[0, 0x80]),
        (PcmFormat::S24_3, &[0, 0, 0]),
        (PcmFormat::S24, &[0, 0, 0, 0]),
        (PcmFormat::S32, &[0, 0, 0, 0]),
        (PcmFormat::Float, &[0, 0, 0, 0]),
    ];
    for (format, sample) in formats {
        let p = params_10ms(format, 2, 48000);
        h.prepare(p);
        let mut recorder = Recorder::new(1, p.period_bytes, 4);
        recorder.fill(&mut h);
        assert_eq!(h.pcm(R_PCM_START, 1), S_OK);
        let got = full_and_ok(&recorder.record(&mut h, 2, PATIENCE));
        let silence: Vec<u8> = sample.iter().copied().cycle().take(got.len()).collect();
        assert!(
            got == silence,
            "{format:?}: not silence: {:02x?}",
            &got[..8]
        );
        release(&mut h, &mut recorder);
    }
}

/// RX messages of another size than the period (here 1.5 periods) are filled across periods,
/// contiguously, and come back only when full; RELEASE returns a partly filled one with exactly
/// the bytes it holds in its used length.
#[test]
fn rx_messages_of_other_sizes_are_filled_whole_and_contiguously() {
    let p = params_10ms(PcmFormat::U8, 1, 8000);
    let pcm = pattern(80 * 20, 3);
    let file = TempWav::new("sizes", 8, 1, 8000, &pcm);
    let mut h = SoundRig::new(wav_source(&file));
    h.prepare(p);
    // Three messages of 120 bytes: 360 bytes, 4.5 periods.
    let mut recorder = Recorder::new(1, 120, 3);
    recorder.fill(&mut h);
    assert_eq!(h.pcm(R_PCM_START, 1), S_OK);
    let got = full_and_ok(&recorder.record(&mut h, 8, PATIENCE));
    assert_eq!(got, pcm[..8 * 120], "not contiguous");
    // Stop between periods: the message being filled may hold part of a period.
    assert_eq!(h.pcm(R_PCM_STOP, 1), S_OK);
    let captured = h.sound.stats().rx_bytes_copied as usize;
    assert_eq!(h.pcm(R_PCM_RELEASE, 1), S_OK);
    let used = h.take_used(RXQ);
    assert_eq!(used.len(), 3, "every queued message comes back");
    // Full messages (that came back since), then at most one partly filled one, whose used
    // length says exactly what it holds (the driver reads no further), then empty ones.
    let lens: Vec<usize> = used.iter().map(|(_, len)| *len as usize - 8).collect();
    let full = lens.iter().take_while(|len| **len == 120).count();
    assert!(lens[full..].iter().skip(1).all(|len| *len == 0), "{lens:?}");
    assert_eq!(
        8 * 120 + lens.iter().sum::<usize>(),
        captured,
        "used lengths {lens:?} do not add up to what was captured"
    );
    recorder.forget();
}
