//! The driver-guest (tests/driver-guest): a tiny freestanding guest that drives Canto's PCI bus and
//! virtio-pci devices through real KVM and reports on the serial port. It starts in milliseconds,
//! so each test here is one short `canto` run that must end with `DG PASS <name>`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canto_tests::{vm_rss_kib, Canto, PulseServer, RunOutput};

/// The guest to run: None when KVM or the toolchain is missing (printed, or a panic in CI), and
/// the test then skips.
fn guest_to_run() -> Option<PathBuf> {
    canto_tests::driver_guest_to_run()
}

/// The sound device most tests run with: the null backend (paced, nothing played, no host audio
/// device needed).
/// One output and one input stream (capturing silence): the topology the driver-guest expects.
const NULL_SOUND: &str = "backend=null,capture=null";

/// The one place the canto command line for a driver-guest run is built.
fn canto_args(elf: &Path, cmdline: &str, sound: &str) -> Canto {
    Canto::new()
        .arg("--kernel")
        .arg(elf.to_str().expect("utf-8 path"))
        .arg("--memory")
        .arg("64M")
        .arg("--serial")
        .arg("stdio")
        .arg("--sound")
        .arg(sound)
        .arg("--cmdline")
        .arg(cmdline)
        .timeout(Duration::from_secs(20))
}

/// Runs `test=<name>`; None when KVM or the toolchain is missing (the test then skips).
fn run_guest(name: &str, extra: &str) -> Option<RunOutput> {
    run_guest_with(name, extra, NULL_SOUND)
}

/// Runs `test=<name>` with the sound device `--sound <sound>`.
fn run_guest_with(name: &str, extra: &str, sound: &str) -> Option<RunOutput> {
    let elf = guest_to_run()?;
    let cmdline = format!("test={name} {extra}");
    let out = canto_args(&elf, cmdline.trim_end(), sound).run();
    print_run(cmdline.trim_end(), &out);
    Some(out)
}

/// Prints a run's serial output and canto's stderr (shown when the test fails).
fn print_run(cmdline: &str, out: &RunOutput) {
    eprintln!(
        "--- {cmdline}: {:?} in {:?}\n{}",
        out.status, out.elapsed, out.stdout
    );
    if !out.stderr.is_empty() {
        eprintln!("--- canto stderr:\n{}", out.stderr);
    }
}

/// Exit 0, no FAIL line, no timeout, and the line `DG PASS <name>`.
fn assert_passed(name: &str, out: &RunOutput) {
    let fails: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("DG FAIL"))
        .collect();
    assert!(fails.is_empty(), "test={name} failed: {fails:?}\n{out:#?}");
    assert!(!out.timed_out, "test={name} timed out: {out:#?}");
    out.expect_line(&format!("DG PASS {name}"));
}

/// Exit 0, exactly one result line, and it is `DG PASS <name>`.
fn expect_pass(name: &str, extra: &str) -> Option<RunOutput> {
    expect_pass_with(name, extra, NULL_SOUND)
}

/// `expect_pass` with the sound device `--sound <sound>`.
fn expect_pass_with(name: &str, extra: &str, sound: &str) -> Option<RunOutput> {
    let out = run_guest_with(name, extra, sound)?;
    assert_passed(name, &out);
    Some(out)
}

#[test]
fn driver_guest_boots() {
    expect_pass("hello", "");
}

#[test]
fn unknown_test_name_fails_cleanly() {
    let Some(out) = run_guest("no-such-test", "") else {
        return;
    };
    assert!(
        out.success(),
        "the guest resets (exit 0) after a failure too: {out:#?}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_end() == "DG FAIL unknown test"),
        "{out:#?}"
    );
}

#[test]
fn exceptions_reach_the_guest_idt() {
    let Some(out) = run_guest("exception", "") else {
        return;
    };
    assert!(out.success(), "{out:#?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("DG FAIL exception: exception 6 (#UD")),
        "{out:#?}"
    );
}

#[test]
fn enumerate() {
    let Some(out) = expect_pass("enumerate", "") else {
        return;
    };
    assert!(
        out.stdout.lines().any(|l| l.starts_with("DG PCI 00:00.0 ")),
        "no host bridge line: {}",
        out.stdout
    );
}

#[test]
fn rng() {
    expect_pass("rng", "");
}

#[test]
fn rng_batch() {
    expect_pass("rng-batch", "");
}

#[test]
fn rng_event_idx() {
    expect_pass("rng-event-idx", "");
}

/// Issue 12 finding 5: no DMA and no MSI-X while Bus Master Enable is clear; the queued request
/// completes once it is set again.
#[test]
fn bus_master() {
    expect_pass("bus-master", "");
}

#[test]
fn reset() {
    expect_pass("reset", "");
}

#[test]
fn garbage() {
    expect_pass("garbage", "");
}

/// A short run of the benchmark mode, so that it keeps working (`make bench` runs it long).
#[test]
fn rtt_smoke() {
    let Some(out) = expect_pass("rtt", "n=20") else {
        return;
    };
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("DG RTT n=20 median_cycles=")),
        "{}",
        out.stdout
    );
}

// ---- virtio-blk ----------------------------------------------------------------------------

/// `test=blk` on a 1 MiB temp disk: the guest writes sector 7, flushes, reads it back, and gets
/// IOERR past the end, UNSUPP for an unknown type and its `--disk id` from GET_ID. Then the file
/// on the host holds the guest's sector, and nothing else changed.
#[test]
fn blk() {
    let Some(elf) = guest_to_run() else {
        return;
    };
    let path = std::env::temp_dir().join(format!("canto-dg-blk-{}.img", std::process::id()));
    let before: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &before).unwrap();
    let disk = format!("path={},id=dg-disk", path.display());
    let out = canto_args(&elf, "test=blk", NULL_SOUND)
        .arg("--disk")
        .arg(&disk)
        .run();
    print_run("test=blk", &out);
    let after = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_passed("blk", &out);
    let mut want: Vec<u8> = (0..512u32).map(|i| (i * 3 + 0x5a) as u8).collect();
    want[..22].copy_from_slice(b"canto driver-guest blk");
    assert_eq!(
        &after[7 * 512..8 * 512],
        &want[..],
        "sector 7 holds the guest's write"
    );
    assert_eq!(after.len(), before.len());
    assert_eq!(&after[..7 * 512], &before[..7 * 512]);
    assert_eq!(
        &after[8 * 512..],
        &before[8 * 512..],
        "nothing else changed"
    );
}

/// `test=blk ro=1` on a `readonly=on` disk: RO offered, the guest's write gets IOERR, FLUSH
/// and reads work, and the file is untouched.
#[test]
fn blk_read_only() {
    let Some(elf) = guest_to_run() else {
        return;
    };
    let path = std::env::temp_dir().join(format!("canto-dg-blk-ro-{}.img", std::process::id()));
    let before: Vec<u8> = (0..64u32 << 10).map(|i| (i % 241) as u8).collect();
    std::fs::write(&path, &before).unwrap();
    let disk = format!("path={},readonly=on,id=dg-disk", path.display());
    let out = canto_args(&elf, "test=blk ro=1", NULL_SOUND)
        .arg("--disk")
        .arg(&disk)
        .run();
    print_run("test=blk ro=1", &out);
    let after = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_passed("blk", &out);
    out.expect_line("DG write to a read-only disk: status 1, used len 1");
    assert!(after == before, "the read-only disk file changed");
}

/// `test=garbage` with a disk attached: garbage into every register of the block function too,
/// garbage queues, DRIVER_OK and kicks; the guest's own checks pass and the disk file, which no
/// well-formed write ever reached, is unchanged.
#[test]
fn garbage_with_a_disk() {
    let Some(elf) = guest_to_run() else {
        return;
    };
    let path = std::env::temp_dir().join(format!("canto-dg-garbage-{}.img", std::process::id()));
    let before: Vec<u8> = (0..256u32 << 10).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &before).unwrap();
    let out = canto_args(&elf, "test=garbage", NULL_SOUND)
        .arg("--disk")
        .arg(&format!("path={},readonly=on", path.display()))
        .timeout(Duration::from_secs(120))
        .run();
    print_run("test=garbage (with a disk)", &out);
    let after = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_passed("garbage", &out);
    assert!(
        out.stdout.contains("(virtio type 2)"),
        "the block function got its garbage: {}",
        out.stdout
    );
    assert!(after == before, "a read-only disk file changed");
}

// ---- virtio-snd ----------------------------------------------------------------------------

/// A file (WAV, raw capture) in the temp directory for one test, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, ext: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("canto-dg-{name}-{}.{ext}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    /// `--sound` for the WAV backend recording into this file.
    fn sound(&self) -> String {
        format!("backend=wav,path={},capture=null", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The guest's PCM pattern (tests/driver-guest/tests/snd_util.h): S16 samples counting up from 0,
/// modulo 65536, over the whole stream.
fn counter_pcm(samples: usize) -> Vec<u8> {
    (0..samples)
        .flat_map(|i| (i as u16).to_le_bytes())
        .collect()
}

/// The WAV is S16 stereo 48 kHz and its data is exactly `samples` samples of the counter
/// pattern, byte for byte: nothing lost, nothing repeated, no silence added.
fn assert_counter_wav(path: &Path, samples: usize) {
    let reader = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(
        (
            spec.channels,
            spec.sample_rate,
            spec.bits_per_sample,
            spec.sample_format
        ),
        (2, 48000, 16, hound::SampleFormat::Int),
        "WAV format"
    );
    let len = reader.len() as usize;
    drop(reader);
    assert_eq!(
        len,
        samples,
        "the WAV holds {len} samples ({} ms of audio), expected {samples}",
        len as f64 / 96.0
    );
    // The data chunk is the end of the file: compare the raw bytes.
    let bytes = std::fs::read(path).expect("read the WAV");
    let expected = counter_pcm(samples);
    assert!(bytes.len() >= expected.len(), "WAV shorter than its data");
    let data = &bytes[bytes.len() - expected.len()..];
    if let Some(at) = data.iter().zip(&expected).position(|(a, b)| a != b) {
        let sample = at / 2;
        panic!(
            "WAV data differs from the guest's pattern at byte {at} (sample {sample}, frame {}): \
             got {:02x?}, expected {:02x?}",
            sample / 2,
            &data[at..(at + 8).min(data.len())],
            &expected[at..(at + 8).min(expected.len())]
        );
    }
}

#[test]
fn snd_control() {
    expect_pass("snd-control", "");
}

/// 40 periods of 25 ms through the WAV backend: paced (the guest fails if 1 s of audio completes
/// in under 0.5 s) and recorded bit-exact.
#[test]
fn snd_tx() {
    let wav = TempFile::new("snd-tx", "wav");
    let Some(out) = expect_pass_with("snd-tx", "", &wav.sound()) else {
        return;
    };
    let pacing = out
        .stdout
        .lines()
        .find(|l| l.starts_with("DG snd-tx: 40 periods"))
        .unwrap_or_else(|| panic!("no pacing line: {}", out.stdout));
    eprintln!("pacing: {pacing}");
    assert_counter_wav(&wav.0, 40 * 2400);
}

/// The same with VIRTIO_F_RING_EVENT_IDX negotiated, as the Linux driver does: completions from
/// the period thread must still raise one interrupt each (the guest counts them).
#[test]
fn snd_tx_event_idx() {
    let wav = TempFile::new("snd-tx-event-idx", "wav");
    if expect_pass_with("snd-tx", "event_idx=1", &wav.sound()).is_none() {
        return;
    }
    assert_counter_wav(&wav.0, 40 * 2400);
}

/// PCM the guest rewrites after queueing (before START, and after the previous period completed)
/// is what the device plays: it copies at consume time (the Linux 6.1 driver's case).
#[test]
fn snd_tx_late_write() {
    let wav = TempFile::new("snd-tx-late-write", "wav");
    if expect_pass_with("snd-tx-late-write", "", &wav.sound()).is_none() {
        return;
    }
    // Two 100 ms periods; the stale pattern (0xdead) must not appear.
    assert_counter_wav(&wav.0, 2 * 9600);
}

/// Capture: 8 paced periods of silence from the input stream, used length = status + PCM.
#[test]
fn snd_rx() {
    expect_pass("snd-rx", "");
}

#[test]
fn snd_bad_io() {
    expect_pass("snd-bad-io", "");
}

/// VIRTIO 1.2 §5.14.6.8: an I/O message's status "contains VIRTIO_SND_S_OK if an operation is
/// successful, and VIRTIO_SND_S_IO_ERR otherwise": malformed messages and unknown stream ids get
/// IO_ERR, never BAD_MSG (io.rs `IoMessage::parse`, worker.rs `process_io`).
#[test]
fn snd_bad_io_spec_status() {
    expect_pass("snd-bad-io", "strict=1");
}

#[test]
fn snd_release_flush() {
    expect_pass("snd-release-flush", "");
}

#[test]
fn snd_reset() {
    expect_pass("snd-reset", "");
}

/// Reset and re-initialization with EVENT_IDX: the device's ring state starts over.
#[test]
fn snd_reset_event_idx() {
    expect_pass("snd-reset", "event_idx=1");
}

// ---- hostile guests ------------------------------------------------------------------------

/// How long `snd_flood_memory_stays_bounded` floods: CANTO_FLOOD_SECS (e.g. 60), else 5 s.
fn flood_secs() -> u64 {
    match std::env::var("CANTO_FLOOD_SECS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .unwrap_or_else(|| panic!("CANTO_FLOOD_SECS={v}: expected 1..3600 seconds")),
        Err(_) => 5,
    }
}

/// The WAV backend's file for output stream `index` (devices/src/virtio/snd/backend/wav.rs:
/// stream 0 writes the path, stream N > 0 `<stem>-N.<ext>` next to it).
fn wav_output_path(base: &Path, index: u32) -> PathBuf {
    if index == 0 {
        return base.to_owned();
    }
    let stem = base.file_stem().expect("a file name").to_string_lossy();
    let name = match base.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    base.with_file_name(name)
}

/// VIRTIO 1.2 §5.14 under a flood: for CANTO_FLOOD_SECS (default 5) seconds the guest keeps the
/// txq full of junk for output stream 0 (4-byte and 1-byte PCM, garbage stream ids, header-only
/// messages, each re-queued as it returns) next to proper 10 ms periods for output stream 1,
/// 32 PCM_INFO requests in flight on the controlq and a full eventq it keeps kicking. Canto's
/// resident memory must not grow by more than 1 MiB between the first second and the end, and
/// stream 1's WAV must hold exactly the periods the guest sent: one stream plays on while
/// another is flooded.
#[test]
fn snd_flood_memory_stays_bounded() {
    let Some(elf) = guest_to_run() else {
        return;
    };
    let secs = flood_secs();
    let wav = TempFile::new("snd-flood", "wav");
    let stream1 = TempFile(wav_output_path(&wav.0, 1));
    let _ = std::fs::remove_file(&stream1.0);
    let sound = format!("{},streams=2:1", wav.sound());
    let cmdline = format!("test=snd-flood secs={secs}");
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let start = Instant::now();
    let out = canto_args(&elf, &cmdline, &sound)
        .timeout(Duration::from_secs(secs + 30))
        .run_watching(|pid| {
            if let Some(kib) = vm_rss_kib(pid) {
                samples.push((start.elapsed(), kib));
            }
        });
    print_run(&cmdline, &out);
    assert_passed("snd-flood", &out);

    // Memory: the baseline is the first sample after one second (the device is active and the
    // flood under way), the final one the last sample before the VMM exited.
    let (base_at, baseline) = *samples
        .iter()
        .find(|(t, _)| *t >= Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no VmRSS sample after 1 s: {samples:?}"));
    let (final_at, last) = *samples.last().expect("samples");
    let max = samples
        .iter()
        .filter(|(t, _)| *t >= base_at)
        .map(|(_, kib)| *kib)
        .max()
        .unwrap_or(baseline);
    let first = samples.first().map_or(0, |s| s.1);
    eprintln!(
        "snd-flood {secs} s: canto VmRSS first {first} KiB, baseline {baseline} KiB at {:.2} s, \
         max {max} KiB, final {last} KiB at {:.2} s ({} samples): growth {} KiB (max {} KiB)",
        base_at.as_secs_f64(),
        final_at.as_secs_f64(),
        samples.len(),
        last as i64 - baseline as i64,
        max as i64 - baseline as i64
    );
    // Every change of VmRSS, to tell a step from a slope.
    let changes: Vec<String> = samples
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| format!("{:.2} s: {} KiB", w[1].0.as_secs_f64(), w[1].1))
        .collect();
    eprintln!("snd-flood VmRSS changes: {}", changes.join(", "));
    assert!(
        final_at >= base_at + Duration::from_secs(secs.saturating_sub(1)),
        "the samples stop at {final_at:?}: not the end of a {secs} s flood"
    );
    assert!(
        last <= baseline + 1024,
        "canto's VmRSS grew from {baseline} KiB to {last} KiB during the flood (max {max} KiB): \
         more than 1 MiB"
    );
    assert!(
        max <= baseline + 1024,
        "canto's VmRSS peaked at {max} KiB during the flood, {} KiB over the {baseline} KiB \
         baseline",
        max - baseline
    );

    // Stream 1 played on: its WAV holds exactly the periods sent, in order, bit for bit.
    let periods: usize = out
        .stdout
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("DG snd-flood: stream1_periods="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stream1_periods line: {}", out.stdout));
    assert!(
        periods as u64 >= secs * 100 / 4,
        "stream 1 got only {periods} periods of 10 ms in {secs} s: starved by the flood"
    );
    assert_counter_wav(&stream1.0, periods * 960);
}

/// The soak mode behind `make soak` (docs/soak.md, tests/driver-guest/tests/soak.c), for 3 s
/// instead of an hour: stream 1 plays while every virtio-snd and virtio-rng queue is flooded,
/// stream 0 cycles through its lifecycle and virtio-rng is reset; every message comes back with the
/// status it must have. Keeps the mode working between soak runs.
#[test]
fn soak_mode_runs() {
    let Some(out) = expect_pass_with(
        "soak",
        "secs=3 report=1 rng_reset=1",
        "backend=null,capture=null,streams=2:1",
    ) else {
        return;
    };
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("DG soak: 3 s: stream 1 ")),
        "no final progress line: {}",
        out.stdout
    );
}

/// The host's sound device disappears mid-stream and comes back (tests/driver-guest/tests/
/// snd_fault.c): canto plays through ALSA into a private PulseAudio server, which this test kills
/// with SIGKILL once the guest says it is playing and starts again once the guest says PREPARE
/// fails. The guest checks IO_ERR on what was in flight, IO_ERR from PREPARE while the device is
/// missing, and paced OK periods after it is back; this test checks the VMM lived through it and
/// that the new server played the guest's PCM.
#[test]
fn snd_host_fault_sound_server_killed_and_restarted() {
    let Some(elf) = guest_to_run() else {
        return;
    };
    let Some(mut pulse) = PulseServer::start("dg-fault") else {
        return;
    };
    let capture = TempFile::new("snd-host-fault-capture", "raw");
    let capture_path = capture.0.clone();
    let mut recorder = None;
    let mut killed = false;
    let out = canto_args(
        &elf,
        "test=snd-host-fault",
        "backend=alsa,device=pulse,capture=null",
    )
    .envs(pulse.client_env())
    .timeout(Duration::from_secs(90))
    .run_interacting(|_, serial| {
        if !killed && serial.contains("DG snd-host-fault: playing") {
            pulse.kill();
            killed = true;
        }
        if killed && recorder.is_none() && serial.contains("waiting for the device") {
            pulse.restart();
            recorder = Some(pulse.record(&capture_path));
        }
    });
    // Let the recorder take what the sink played last, then stop it.
    std::thread::sleep(Duration::from_millis(300));
    if let Some(mut recorder) = recorder {
        let _ = recorder.kill();
        let _ = recorder.wait();
    }
    print_run("test=snd-host-fault", &out);
    assert_passed("snd-host-fault", &out);

    // The restarted server played the guest's post-recovery PCM (the constant sample 0x2345),
    // and nothing else but silence.
    let raw = std::fs::read(&capture_path).expect("the recorder's capture");
    let samples: Vec<u16> = raw
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let played = samples.iter().filter(|&&s| s == 0x2345).count();
    let other = samples.iter().filter(|&&s| s != 0x2345 && s != 0).count();
    eprintln!(
        "snd-host-fault: the restarted server played {played} samples of the guest's PCM \
         ({} captured, {other} other non-silent)",
        samples.len()
    );
    // 5 of the 20 periods (2400 samples each): parec may start after the first ones.
    assert!(
        played >= 5 * 2400,
        "only {played} samples of the guest's PCM were played"
    );
    assert_eq!(
        other, 0,
        "samples that are neither the guest's PCM nor silence"
    );
}

#[test]
fn virtq_attacks() {
    let Some(out) = expect_pass("virtq-attacks", "") else {
        return;
    };
    let attacks = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("DG attack "))
        .count();
    assert_eq!(attacks, 20, "one line per attack: {}", out.stdout);
    // A ring whose index runs past its size, or that names a head the table does not have, can
    // never be served again: only a reset helps, and the device must say so (VIRTIO 1.2 §2.1.2).
    let broken_rings: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("avail idx 1000 ahead") || l.contains("names descriptor 999"))
        .collect();
    assert_eq!(
        broken_rings.len(),
        4,
        "2 attacks on txq and controlq: {}",
        out.stdout
    );
    for line in broken_rings {
        assert!(line.contains(": DEVICE_NEEDS_RESET"), "{line}");
    }
}

/// The same attacks where a device that makes sense of a looping or over-long chain fails:
/// only len 0, an error status, ignoring the chain or DEVICE_NEEDS_RESET pass.
#[test]
fn virtq_attacks_strict() {
    expect_pass("virtq-attacks", "strict=1");
}

/// The instruction bytes each `insn=` of test=internal-error starts with (tests/unrunnable.S).
const UNRUNNABLE: [(&str, &str); 3] = [("int3", "cc"), ("xsave", "0f ae 27"), ("fwait", "9b")];

/// kvm_pvm's emulator cannot run int3, xsave or fwait at CPL0: KVM ends the VM with
/// KVM_EXIT_INTERNAL_ERROR and Canto must say so in one stderr line with the RIP and the bytes
/// there, and exit non-zero. Only on a kvm_pvm host (hardware KVM runs these instructions).
#[test]
fn kvm_internal_error_is_reported() {
    if !Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!(
            "SKIPPED: /sys/module/kvm_pvm does not exist: this KVM runs int3/xsave/fwait, so \
             there is no internal error to provoke"
        );
        return;
    }
    for (insn, encoding) in UNRUNNABLE {
        let Some(out) = run_guest("internal-error", &format!("insn={insn}")) else {
            return;
        };
        assert!(!out.timed_out, "insn={insn}: timed out: {out:#?}");
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "insn={insn}: canto must exit non-zero: {out:#?}"
        );
        // "DG internal-error: running int3 at rip 0x10ba90, bytes: cc 0f 0b ..."
        let guest = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("DG internal-error: running {insn} at rip ")))
            .unwrap_or_else(|| panic!("insn={insn}: no 'running' line: {out:#?}"));
        let (rip, bytes) = guest
            .trim_end()
            .split_once(", bytes: ")
            .unwrap_or_else(|| panic!("insn={insn}: cannot parse '{guest}'"));
        assert!(
            bytes.starts_with(encoding),
            "insn={insn}: the guest's code at {rip} is {bytes}, expected {encoding} first"
        );
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| {
                l.contains("KVM internal error")
                    && l.contains("rip")
                    && l.contains("instruction bytes")
            })
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "insn={insn}: expected one stderr line with 'KVM internal error', 'rip' and \
             'instruction bytes': {out:#?}"
        );
        let line = lines[0];
        eprintln!("insn={insn}: {line}");
        assert!(
            line.contains(&format!("rip {rip} ")) || line.contains(&format!("rip {rip},")),
            "insn={insn}: the error names another rip than the guest's {rip}: {line}"
        );
        let reported = line
            .split_once("instruction bytes: ")
            .map(|(_, b)| b.trim())
            .unwrap_or_default();
        assert_eq!(
            reported, bytes,
            "insn={insn}: the reported instruction bytes differ from the guest's code at {rip}"
        );
        assert!(
            !out.stdout.lines().any(|l| l.starts_with("DG PASS")),
            "insn={insn}: the guest went on after the instruction: {out:#?}"
        );
    }
}

/// The host's side of the `vsock` test: Firecracker's hybrid protocol on the device's Unix socket.
/// Connects, sends `CONNECT 52`, expects `OK <port>`, sends `message`, reads the echo, closes its
/// write half and reads to EOF (the guest's SHUTDOWN, then the device's RST).
fn vsock_echo_client(socket: &Path, message: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"CONNECT 52\n")
        .map_err(|e| format!("CONNECT: {e}"))?;
    // Byte at a time up to the newline, so the echo is not read into a buffer here.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        stream
            .read_exact(&mut byte)
            .map_err(|e| format!("reading the OK line (got {line:?}): {e}"))?;
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let port = line
        .strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse::<u32>().ok())
        .ok_or_else(|| format!("expected `OK <port>`, got {line:?}"))?;
    stream
        .write_all(message)
        .map_err(|e| format!("send: {e}"))?;
    let mut echo = vec![0u8; message.len()];
    stream
        .read_exact(&mut echo)
        .map_err(|e| format!("reading the echo (host port {port}): {e}"))?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .map_err(|e| format!("waiting for the end: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the echo", rest.len()));
    }
    Ok(echo)
}

/// virtio-vsock through real KVM: the guest echoes on port 52, a host program reaches it
/// through the Unix socket with `CONNECT 52`.
#[test]
fn vsock_echo_through_the_hybrid_socket() {
    let Some(elf) = guest_to_run() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("canto-dg-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("v.sock");
    // More than one rx buffer's worth (4 KiB in the guest), so several packets and credit.
    let message: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let result = Arc::new(Mutex::new(None));
    let mut client = None;
    let out = canto_args(&elf, "test=vsock", NULL_SOUND)
        .arg("--vsock")
        .arg(&format!("cid=3,socket={}", socket.display()))
        .timeout(Duration::from_secs(60))
        .run_interacting(|_, serial| {
            if client.is_none() && serial.contains("listening on port 52") {
                let (socket, message, result) = (socket.clone(), message.clone(), result.clone());
                client = Some(std::thread::spawn(move || {
                    let got = vsock_echo_client(&socket, &message);
                    *result.lock().unwrap() = Some(got);
                }));
            }
        });
    if let Some(client) = client {
        client.join().unwrap();
    }
    print_run("test=vsock", &out);
    let _ = std::fs::remove_dir_all(&dir);
    assert_passed("vsock", &out);
    let got = result.lock().unwrap().take().expect("the host client ran");
    assert_eq!(got.expect("the host client"), message, "the echo");
    out.expect_line("DG vsock: echoed 20000 bytes; RST after our SHUTDOWN");
    assert!(!socket.exists(), "canto removed its socket");
}
