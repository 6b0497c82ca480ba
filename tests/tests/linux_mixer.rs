//! Issue 17 items 2 and 3 through the real Linux guest: the audio controls (VIRTIO_SND_F_CTLS)
//! pass the driver's strict validation and `amixer` lists and sets them; the gain they apply
//! reaches the WAV file exactly; the jack control follows the host's sound server.

use std::path::Path;
use std::time::{Duration, Instant};

use canto_devices::virtio::snd::mixer::Gain;
use canto_devices::virtio::snd::wire::PcmFormat;
use canto_tests::{kvm_available, Canto, GuestImage, PulseServer};

fn wav_pcm(path: &Path) -> (hound::WavSpec, Vec<u8>) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let spec = reader.spec();
    let samples: Vec<i16> = reader.into_samples::<i16>().map(|s| s.unwrap()).collect();
    (spec, samples.iter().flat_map(|s| s.to_le_bytes()).collect())
}

/// One guest at a time: two interpreted guest kernels side by side on a 2-core machine starve
/// each other (a boot takes minutes instead of one).
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

/// The text between `begin` and `end` in `stdout`.
fn section<'a>(stdout: &'a str, begin: &str, end: &str) -> &'a str {
    let start = stdout
        .find(begin)
        .unwrap_or_else(|| panic!("no {begin} in: {stdout}"));
    let rest = &stdout[start + begin.len()..];
    &rest[..rest
        .find(end)
        .unwrap_or_else(|| panic!("no {end} in: {stdout}"))]
}

/// An image without amixer (the lead's older build) cannot run these.
fn has_amixer(image: &GuestImage) -> bool {
    let initramfs = std::fs::read(&image.initramfs).unwrap_or_default();
    let found = initramfs.windows(10).any(|w| w == b"bin/amixer");
    if !found {
        eprintln!(
            "skipped: the guest image has no amixer (rebuild it: bash resources/build-guest.sh)"
        );
    }
    found
}

/// One boot: `amixer -D hw:0 contents` lists the volume, the switch (with its dB scale) and the
/// jack, and the probe logged no virtio_snd error; `amixer` sets the volume to -6 dB and aplay
/// plays test.wav, then `amixer sset PCM mute` and aplay plays it again. The WAV file holds
/// test.wav scaled by the documented gain, then only silence.
#[test]
fn amixer_sets_volume_and_mute_and_the_wav_holds_the_scaled_pcm() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    if !has_amixer(&image) {
        return;
    }
    let _serial = one_guest_at_a_time();
    let dir = scratch_dir("mixer");
    let script = br#"#!/bin/sh
dmesg -n 1
echo CANTO-CONTENTS-BEGIN
amixer -D hw:0 contents
echo "CANTO-CONTENTS-END rc=$?"
amixer -D hw:0 cset name='PCM Playback Volume' 88
echo "CANTO-CSET rc=$?"
aplay -D hw:0,0 --period-time=125000 --buffer-time=500000 /canto/test.wav
echo "CANTO-APLAY-1 rc=$?"
amixer -D hw:0 sset PCM mute
echo "CANTO-MUTE rc=$?"
aplay -D hw:0,0 --period-time=125000 --buffer-time=500000 /canto/test.wav
echo "CANTO-APLAY-2 rc=$?"
echo CANTO-DMESG-BEGIN
dmesg > /tmp/dmesg
while read -r line; do
  case "$line" in *virtio_snd*|*snd*error*) echo "$line" ;; esac
done < /tmp/dmesg
echo CANTO-DMESG-END
"#;
    let image = image.with_script(&dir, "mixer", script);
    let out_wav = dir.join("out.wav");
    let out = Canto::linux(&image, "mixer")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg(&format!("backend=wav,path={}", out_wav.display()))
        .run();
    for marker in [
        "CANTO-CONTENTS-END rc=0",
        "CANTO-CSET rc=0",
        "CANTO-APLAY-1 rc=0",
        "CANTO-MUTE rc=0",
        "CANTO-APLAY-2 rc=0",
    ] {
        out.expect_line(marker);
    }
    let contents = section(&out.stdout, "CANTO-CONTENTS-BEGIN", "CANTO-CONTENTS-END");
    for want in [
        "name='PCM Playback Volume'",
        "type=INTEGER,access=rw---R--,values=1,min=0,max=112,step=1",
        "dBscale-min=-50.00dB,step=0.50dB,mute=0",
        "name='PCM Playback Switch'",
        "type=BOOLEAN,access=rw------,values=1",
        "name='Line Out Jack'",
    ] {
        assert!(contents.contains(want), "{want} not in: {contents}");
    }
    let dmesg = section(&out.stdout, "CANTO-DMESG-BEGIN", "CANTO-DMESG-END");
    for bad in ["control #", "error", "failed", "No soundcards"] {
        assert!(!dmesg.contains(bad), "{bad} in the guest's log: {dmesg}");
    }

    // test.wav at -6 dB (volume 88), then silence: aplay's last-period padding and the whole
    // muted second play (same format: the WAV backend appends).
    let (want_spec, clip) = wav_pcm(&image.test_wav);
    let (got_spec, got) = wav_pcm(&out_wav);
    assert_eq!(want_spec, got_spec);
    assert_eq!(want_spec.bits_per_sample, 16);
    let mut scaled = vec![0u8; clip.len()];
    Gain::new(88, true).apply(PcmFormat::S16, &clip, &mut scaled);
    assert_ne!(scaled, clip, "the gain changes the signal");
    assert!(
        got.len() >= 2 * clip.len(),
        "{} bytes, want two plays of {}",
        got.len(),
        clip.len()
    );
    if let Some(i) = scaled.iter().zip(&got).position(|(a, b)| a != b) {
        panic!("the WAV differs from test.wav at -6 dB at byte {i}");
    }
    assert!(
        got[clip.len()..].iter().all(|b| *b == 0),
        "not silence while muted"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The jack control reads `off` once the PulseAudio server behind the stream is killed (the
/// guest's aplay fails to open the host device) and `on` after it is restarted (the jack
/// watcher opens it again within about a second).
#[test]
fn the_line_out_jack_follows_the_pulseaudio_server() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    if !has_amixer(&image) {
        return;
    }
    let _serial = one_guest_at_a_time();
    let Some(mut pulse) = PulseServer::start("jack") else {
        return;
    };
    let dir = scratch_dir("jack");
    // The host acts on CANTO-KILL-PULSE and CANTO-RESTART-PULSE; the guest gives it time
    // (`sleep`), then looks. Each fork costs about 2 s here.
    let script = br#"#!/bin/sh
dmesg -n 1
echo CANTO-JACK-BEFORE
amixer -D hw:0 cget iface=CARD,name='Line Out Jack'
echo CANTO-KILL-PULSE
sleep 2
aplay -D hw:0,0 --period-time=125000 --buffer-time=500000 /canto/test.wav
echo "CANTO-APLAY-DEAD rc=$?"
echo CANTO-JACK-DEAD
amixer -D hw:0 cget iface=CARD,name='Line Out Jack'
echo CANTO-RESTART-PULSE
sleep 4
echo CANTO-JACK-BACK
amixer -D hw:0 cget iface=CARD,name='Line Out Jack'
echo CANTO-JACK-END
"#;
    let image = image.with_script(&dir, "jack", script);
    let mut killed = false;
    let mut restarted = false;
    let started = Instant::now();
    let out = Canto::linux(&image, "jack")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg("backend=alsa,device=pulse")
        .envs(pulse.client_env())
        .envs([("RUST_LOG".to_string(), "info".to_string())])
        .timeout(Duration::from_secs(240))
        .run_interacting(|_, so_far| {
            if !killed && so_far.contains("CANTO-KILL-PULSE") {
                pulse.kill();
                killed = true;
            }
            if !restarted && so_far.contains("CANTO-RESTART-PULSE") {
                pulse.restart();
                restarted = true;
            }
        });
    assert!(killed && restarted, "{:?}", out);
    let before = section(&out.stdout, "CANTO-JACK-BEFORE", "CANTO-KILL-PULSE");
    let dead = section(&out.stdout, "CANTO-JACK-DEAD", "CANTO-RESTART-PULSE");
    let back = section(&out.stdout, "CANTO-JACK-BACK", "CANTO-JACK-END");
    assert!(before.contains(": values=on"), "before: {before}");
    assert!(
        dead.contains(": values=off"),
        "after the kill: {dead}\n{}",
        out.stderr
    );
    assert!(
        back.contains(": values=on"),
        "after the restart: {back}\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("jack 0 disconnected") && out.stderr.contains("jack 0 connected"),
        "{}",
        out.stderr
    );
    eprintln!("jack test took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}
