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
        kernel: image.kernel.clone(),
        initramfs: path,
        test_wav: image.test_wav.clone(),
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
    assert!(out.stderr.contains("tx_underruns: 0"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}
