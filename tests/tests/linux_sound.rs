//! The mission's smoke tests: the real Linux guest plays a WAV with real `aplay` through Canto's
//! virtio-snd device, to a WAV file and to real ALSA (alsa-lib's `pulse` PCM on a private,
//! headless PulseAudio server). Each boots Linux once (about a minute on kvm_pvm).

use std::path::Path;

use canto_tests::{kvm_available, newc_archive, Canto, GuestImage, PulseServer};

/// The interleaved PCM bytes of a WAV file.
fn wav_pcm(path: &Path) -> (hound::WavSpec, Vec<u8>) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let spec = reader.spec();
    let samples: Vec<i16> = reader.into_samples::<i16>().map(|s| s.unwrap()).collect();
    (spec, samples.iter().flat_map(|s| s.to_le_bytes()).collect())
}

/// `played` must be `expected` followed by nothing but silence.
fn assert_same_pcm_then_silence(expected: &[u8], played: &[u8]) {
    assert!(
        played.len() >= expected.len(),
        "played {} bytes, expected at least {}",
        played.len(),
        expected.len()
    );
    if let Some(i) = expected.iter().zip(played).position(|(a, b)| a != b) {
        panic!("PCM differs at byte {i} of {}", expected.len());
    }
    assert!(
        played[expected.len()..].iter().all(|b| *b == 0),
        "non-silence after the clip"
    );
}

/// The guest image plus a script that shows the PCI functions and their drivers, then plays.
fn image_with_pci_report(image: &GuestImage, dir: &Path) -> GuestImage {
    // Shell builtins where possible: the initramfs links only the busybox applets its own
    // scripts use, and each fork costs about 2 s on kvm_pvm. `dmesg -n 1` first: kernel messages
    // on the console would otherwise cut into these lines.
    let script = br#"#!/bin/sh
dmesg -n 1
for d in /sys/bus/pci/devices/*; do
  drv=$(busybox readlink "$d/driver")
  read -r vendor < "$d/vendor"
  read -r device < "$d/device"
  echo "CANTO-PCI ${d##*/} $vendor:$device driver=${drv##*/}"
done
n=0
while read -r line; do
  case "$line" in *PCI-MSIX*) n=$((n + 1)) ;; esac
done < /proc/interrupts
echo "CANTO-MSIX $n"
exec /canto/run/play
"#;
    let extra = newc_archive(&[
        ("canto", 0o040755, b""),
        ("canto/run", 0o040755, b""),
        ("canto/run/pci-play", 0o100755, script),
    ]);
    let mut initramfs = std::fs::read(&image.initramfs).expect("initramfs");
    initramfs.extend_from_slice(&extra);
    let path = dir.join("initramfs-pci-play.cpio");
    std::fs::write(&path, initramfs).expect("write initramfs");
    GuestImage {
        initramfs: path,
        ..image.clone()
    }
}

/// The guests here run one at a time: two interpreted guest kernels side by side on a 2-core
/// machine can starve a guest's audio and make it underrun, which is the guest's fault, not ours.
static ONE_GUEST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("canto-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn aplay_in_the_guest_writes_the_exact_pcm_to_a_wav_file() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let _serial = one_guest_at_a_time();
    let dir = scratch_dir("wav");
    let out_wav = dir.join("out.wav");
    let image = image_with_pci_report(&image, &dir);
    let out = Canto::linux(&image, "pci-play")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg(&format!("backend=wav,path={}", out_wav.display()))
        .run();
    out.expect_line("CANTO-APLAY rc=0");
    // The Linux driver found the devices on Canto's PCI bus and uses MSI-X.
    assert!(
        out.stdout.contains("0x1af4:0x1059 driver=virtio-pci"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("0x1af4:0x1044 driver=virtio-pci"),
        "{}",
        out.stdout
    );
    let msix: u32 = out
        .stdout
        .split_once("CANTO-MSIX ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no CANTO-MSIX count in: {}", out.stdout));
    assert!(msix >= 5, "expected MSI-X vectors in use: {}", out.stdout);

    let (want_spec, want) = wav_pcm(&image.test_wav);
    let (got_spec, got) = wav_pcm(&out_wav);
    assert_eq!(want_spec, got_spec);
    assert_same_pcm_then_silence(&want, &got);
    let _ = std::fs::remove_dir_all(dir);
}

/// Where `clip` starts in `capture`, found by its noise: a run of frames from inside the clip.
fn find_clip(capture: &[u8], clip: &[u8]) -> Option<usize> {
    const PROBE_AT: usize = 4 * 1000; // frame 1000: past any fade-in
    let probe = clip.get(PROBE_AT..PROBE_AT + 4 * 256)?;
    let at = capture.windows(probe.len()).position(|w| w == probe)?;
    at.checked_sub(PROBE_AT)
}

#[test]
fn aplay_in_the_guest_reaches_real_alsa_bit_exact_and_in_real_time() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let _serial = one_guest_at_a_time();
    let Some(pulse) = PulseServer::start("play") else {
        return;
    };
    let dir = scratch_dir("pulse");
    let capture_path = dir.join("capture.raw");
    let mut recorder = pulse.record(&capture_path);
    let out = Canto::linux(&image, "play")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg("backend=alsa,device=pulse")
        .envs(pulse.client_env())
        .envs([("RUST_LOG".to_string(), "info".to_string())])
        .run();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = recorder.kill();
    let _ = recorder.wait();
    out.expect_line("CANTO-APLAY rc=0");

    // What the PulseAudio sink played is the guest's clip, bit for bit and without a gap.
    let (_, clip) = wav_pcm(&image.test_wav);
    let capture = std::fs::read(&capture_path).expect("capture");
    let start = find_clip(&capture, &clip).expect("the clip's noise is not in the capture");
    assert_eq!(
        capture.get(start..start + clip.len()),
        Some(&clip[..]),
        "the captured audio differs from the clip"
    );

    // The host device paced the stream: its audio took its own duration to play (±5 %).
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("virtio-snd: stream 0: played"))
        .unwrap_or_else(|| panic!("no pacing line in canto's log: {}", out.stderr));
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (audio, wall) = (numbers[numbers.len() - 2], numbers[numbers.len() - 1]);
    assert!((audio - 2.0).abs() < 0.01, "{line}");
    assert!((wall / audio - 1.0).abs() <= 0.05, "not real time: {line}");
    assert!(out.stderr.contains(" tx_underruns=0 "), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

/// A second 2 s, 48 kHz stereo S16 signal, unlike test.wav: a square wave on the left and
/// noise from another generator on the right.
fn second_signal(path: &Path) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).expect("second.wav");
    let mut state: u32 = 0x5345_434f;
    let mut pcm = Vec::new();
    for frame in 0..96000u32 {
        let left: i16 = if (frame / 60) % 2 == 0 { 9000 } else { -9000 };
        state = state.wrapping_mul(22695477).wrapping_add(1);
        let right = ((state >> 16) as i16) >> 3;
        for sample in [left, right] {
            writer.write_sample(sample).expect("write second.wav");
            pcm.extend_from_slice(&sample.to_le_bytes());
        }
    }
    writer.finalize().expect("finalize second.wav");
    pcm
}

/// Issue 17 item 4: two output streams are two guest PCM devices, played at the same time by
/// two `aplay`s, each into its own WAV file, both bit-exact.
#[test]
fn two_aplays_at_once_on_two_pcm_devices_write_two_exact_wav_files() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let _serial = one_guest_at_a_time();
    let dir = scratch_dir("two-pcm");
    let second_wav = dir.join("second.wav");
    let second = second_signal(&second_wav);
    // `aplay -l` lists the card's PCM devices (one fork, ~2 s); then both players start
    // together in the background and the script waits for each.
    let script = br#"#!/bin/sh
dmesg -n 1
aplay -l
aplay -D hw:0,0 --period-time=125000 --buffer-time=500000 /canto/test.wav & first=$!
aplay -D hw:0,1 --period-time=125000 --buffer-time=500000 /canto/second.wav & second=$!
wait $first; rc0=$?
wait $second; rc1=$?
echo "CANTO-TWO-APLAY rc=$rc0,$rc1"
"#;
    let second_bytes = std::fs::read(&second_wav).expect("second.wav");
    let extra = newc_archive(&[
        ("canto", 0o040755, b""),
        ("canto/second.wav", 0o100644, &second_bytes),
        ("canto/run", 0o040755, b""),
        ("canto/run/two-play", 0o100755, script),
    ]);
    let mut initramfs = std::fs::read(&image.initramfs).expect("initramfs");
    initramfs.extend_from_slice(&extra);
    let initramfs_path = dir.join("initramfs-two-play.cpio");
    std::fs::write(&initramfs_path, initramfs).expect("write initramfs");
    let image = GuestImage {
        initramfs: initramfs_path,
        ..image.clone()
    };

    let out_wav = dir.join("out.wav");
    let out = Canto::linux(&image, "two-play")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg(&format!(
            "backend=wav,path={},streams=2:0",
            out_wav.display()
        ))
        .run();
    out.expect_line("CANTO-TWO-APLAY rc=0,0");
    // The guest sees two PCM devices on card 0.
    for device in ["device 0:", "device 1:"] {
        assert!(out.stdout.contains(device), "{device}: {}", out.stdout);
    }

    // Output stream 1 writes `<stem>-1.wav` (the WAV backend's documented naming).
    let (want_spec, want) = wav_pcm(&image.test_wav);
    let (got_spec, got) = wav_pcm(&out_wav);
    assert_eq!(want_spec, got_spec);
    assert_same_pcm_then_silence(&want, &got);
    let (got_spec, got) = wav_pcm(&dir.join("out-1.wav"));
    assert_eq!(want_spec, got_spec);
    assert_same_pcm_then_silence(&second, &got);
    let _ = std::fs::remove_dir_all(dir);
}

/// Lists the capture devices between `CANTO-CAPTURE-LIST` and `CANTO-LISTED`, after the
/// playback devices; with `record`, records 1 s from the first capture device into /tmp and
/// plays the recording back on hw:0,0, where the WAV backend stores it for the host to compare.
/// The capture buffer is 1 s, 8 periods: a guest slowed down by a busy host still has buffers
/// queued for every period the device captures (what it has none for is lost, and the test
/// would see the gap).
/// Shell builtins only for the parsing (each fork costs about 2 s on kvm_pvm).
fn capture_script(record: bool) -> Vec<u8> {
    let mut script = String::from(
        r#"#!/bin/sh
dmesg -n 1
echo CANTO-PLAYBACK-LIST
aplay -l
echo CANTO-CAPTURE-LIST
arecord -l > /tmp/capture-list 2>&1
rc=$?
dev=
while read -r line; do
  echo "$line"
  case "$line" in
    card\ 0:*device\ *) [ -z "$dev" ] && { dev=${line#*device }; dev=${dev%%:*}; } ;;
  esac
done < /tmp/capture-list
echo "CANTO-LISTED rc=$rc"
"#,
    );
    if record {
        script.push_str(
            r#"arecord -D "hw:0,${dev:-0}" -d 1 -f S16_LE -r 48000 -c 2 --period-time=125000 --buffer-time=1000000 /tmp/rec.wav
echo "CANTO-ARECORD rc=$?"
aplay -D hw:0,0 --period-time=125000 --buffer-time=500000 /tmp/rec.wav
echo "CANTO-APLAY rc=$?"
"#,
        );
    }
    script.into_bytes()
}

/// The lines of `stdout` between the `CANTO-CAPTURE-LIST` marker and `CANTO-LISTED`.
fn capture_list(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip_while(|l| l.trim_end() != "CANTO-CAPTURE-LIST")
        .skip(1)
        .take_while(|l| !l.starts_with("CANTO-LISTED"))
        .collect()
}

/// The microphone is a permission: without `capture=` the guest has no capture device at all;
/// with `capture=wav:FILE` it records exactly that file's audio (from its first frame).
#[test]
fn the_guest_records_only_with_a_capture_grant() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let _serial = one_guest_at_a_time();
    let dir = scratch_dir("capture");

    // No grant: a playback device, and no capture device.
    let list_image = image.with_script(&dir, "capture-list", &capture_script(false));
    let out = Canto::linux(&list_image, "capture-list")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg(&format!(
            "backend=wav,path={}",
            dir.join("list.wav").display()
        ))
        .run();
    assert!(
        out.success() && out.stdout.contains("CANTO-LISTED"),
        "{out:#?}"
    );
    let playback = out
        .stdout
        .split_once("CANTO-PLAYBACK-LIST")
        .and_then(|(_, rest)| rest.split_once("CANTO-CAPTURE-LIST"))
        .map(|(list, _)| list)
        .unwrap_or_default();
    assert!(
        playback.contains("card 0"),
        "no playback card: {}",
        out.stdout
    );
    let cards: Vec<&str> = capture_list(&out.stdout)
        .into_iter()
        .filter(|l| l.starts_with("card "))
        .collect();
    assert!(
        cards.is_empty(),
        "the guest sees a capture device without a grant: {cards:?}\n{}",
        out.stdout
    );

    // capture=wav:FILE: the guest records the file, bit for bit, and plays the recording back.
    let record_image = image.with_script(&dir, "capture-record", &capture_script(true));
    let played = dir.join("played.wav");
    let out = Canto::linux(&record_image, "capture-record")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg(&format!(
            "backend=wav,path={},capture=wav:{}",
            played.display(),
            image.test_wav.display()
        ))
        .run();
    out.expect_line("CANTO-ARECORD rc=0");
    out.expect_line("CANTO-APLAY rc=0");
    assert!(
        capture_list(&out.stdout)
            .iter()
            .any(|l| l.starts_with("card 0")),
        "no capture device with a grant: {}",
        out.stdout
    );
    // What arecord and aplay said (an overrun would show here).
    for line in out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("CANTO-LISTED"))
    {
        eprintln!("guest: {line}");
    }
    let (want_spec, want) = wav_pcm(&image.test_wav);
    let (got_spec, got) = wav_pcm(&played);
    assert_eq!(want_spec, got_spec);
    // 1 s of S16 stereo at 48 kHz: the file's first second, bit-exact from its first frame.
    // A guest too slowed down by a busy host to read in time overruns (arecord says so): what
    // it had no buffer for is lost, as with a microphone, and the Linux driver prepares the
    // stream again. Then only what came before the first overrun can be compared: at least the
    // first 100 ms (the driver queues the whole buffer at START), compared bit-exact.
    let second = 48000 * 4;
    assert_eq!(got.len(), second, "arecord -d 1 records 48000 frames");
    if out.stdout.contains("overrun") {
        let first = 48000 * 4 / 10;
        assert_eq!(
            &got[..first],
            &want[..first],
            "the recording's first 100 ms"
        );
    } else {
        assert_same_pcm_then_silence(&want[..second], &got);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An SMP guest: with `--cpus 2` the kernel brings up both vCPUs (ACPI's MADT lists them), and
/// aplay to the WAV backend still writes the exact PCM.
#[test]
fn two_cpu_guest_brings_up_both_and_aplay_still_passes() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let _serial = one_guest_at_a_time();
    let dir = scratch_dir("smp");
    let out_wav = dir.join("out.wav");
    let start = std::time::Instant::now();
    let mut cpus_at = None;
    // The SMP kernel (the other tests boot the uniprocessor one when it is built).
    let image = GuestImage {
        kernel: image.smp_kernel.clone(),
        ..image
    };
    let out = Canto::linux(&image, "cpus")
        .arg("--cpus")
        .arg("2")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg(&format!("backend=wav,path={}", out_wav.display()))
        // Two interpreted vCPUs keep their lock prefixes and wait on each other (IPIs, locks
        // held by a descheduled vCPU): on a loaded 2-core host the boot took over 300 s.
        .timeout(std::time::Duration::from_secs(900))
        .run_interacting(|_, serial| {
            if cpus_at.is_none() && serial.contains("CANTO-CPUS") {
                cpus_at = Some(start.elapsed());
            }
        });
    out.expect_line("CANTO-APLAY rc=0");
    out.expect_line("CANTO-CPUS 2 online=0-1");
    if let Some(at) = cpus_at {
        eprintln!(
            "2-CPU guest ready (CANTO-CPUS) after {:.1} s",
            at.as_secs_f64()
        );
    }
    let (want_spec, want) = wav_pcm(&image.test_wav);
    let (got_spec, got) = wav_pcm(&out_wav);
    assert_eq!(want_spec, got_spec);
    assert_same_pcm_then_silence(&want, &got);
    let _ = std::fs::remove_dir_all(dir);
}
