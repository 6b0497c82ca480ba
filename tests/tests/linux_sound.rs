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
    let script = b"#!/bin/sh\nfor d in /sys/bus/pci/devices/*; do\n  echo \"CANTO-PCI $(basename $d) $(cat $d/vendor):$(cat $d/device) driver=$(basename \"$(readlink $d/driver)\")\"\ndone\ngrep -c PCI-MSIX /proc/interrupts | sed 's/^/CANTO-MSIX /'\nexec /canto/run/play\n";
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
        .lines()
        .find_map(|l| l.strip_prefix("CANTO-MSIX "))
        .and_then(|n| n.trim().parse().ok())
        .expect("CANTO-MSIX line");
    assert!(msix >= 5, "expected MSI-X vectors in use: {}", out.stdout);

    let (want_spec, want) = wav_pcm(&image.test_wav);
    let (got_spec, got) = wav_pcm(&out_wav);
    assert_eq!(want_spec, got_spec);
    assert_same_pcm_then_silence(&want, &got);
    let _ = std::fs::remove_dir_all(dir);
}
