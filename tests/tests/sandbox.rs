//! `canto run -- COMMAND`: the real Linux guest `make guest` built (found by `canto run` itself,
//! without `--kernel`), its agent over virtio-vsock, the command's output and exit status on
//! Canto's. Each `canto run` boots Linux once (30-50 s on kvm_pvm), so a test checks several
//! things in its one boot.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use canto_tests::{canto_bin, kvm_available, GuestImage};

/// One guest at a time: two interpreted guest kernels side by side on a 2-core machine starve
/// each other's audio.
static ONE_GUEST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("canto-sandbox-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `canto run ARGS`, stdin closed, with a generous bound (a boot is under a minute here).
fn canto_run(args: &[&str]) -> Output {
    let mut child = Command::new(canto_bin())
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start canto");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(400) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn guest() -> Option<GuestImage> {
    if !kvm_available() {
        return None;
    }
    GuestImage::find()
}

/// The interleaved PCM bytes of a WAV file.
fn wav_pcm(path: &Path) -> (hound::WavSpec, Vec<u8>) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let spec = reader.spec();
    let samples: Vec<i16> = reader.into_samples::<i16>().map(|s| s.unwrap()).collect();
    (spec, samples.iter().flat_map(|s| s.to_le_bytes()).collect())
}

fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn run_relays_output_and_status_plays_a_copied_wav_and_copies_files_both_ways() {
    let Some(image) = guest() else {
        return;
    };
    let _one = one_guest_at_a_time();
    let dir = scratch_dir("main");
    let out_wav = dir.join("out.wav");
    let random = dir.join("random.bin");
    let back = dir.join("random.back");
    let data = random_bytes(10 << 20, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(&random, &data).unwrap();
    let copy_in_wav = format!("{}:/tmp/in.wav", image.test_wav.display());
    let copy_in_random = format!("{}:/tmp/random.bin", random.display());
    let copy_out_random = format!("/tmp/random.bin:{}", back.display());
    let sound = format!("backend=wav,path={}", out_wav.display());
    let start = Instant::now();
    let out = canto_run(&[
        "--memory",
        "256M",
        "--sound",
        &sound,
        "--copy-in",
        &copy_in_wav,
        "--copy-in",
        &copy_in_random,
        "--copy-out",
        &copy_out_random,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; aplay -q -D hw:0,0 /tmp/in.wav || exit 9; exit 3",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("canto run took {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // Only the command's output: the guest's console is not on stdout.
    assert_eq!(stdout, "out\n", "stderr: {stderr}");
    assert!(stderr.lines().any(|l| l == "err"), "{stderr}");
    assert!(!stdout.contains("err"));

    let (want_spec, want) = wav_pcm(&image.test_wav);
    let (got_spec, got) = wav_pcm(&out_wav);
    assert_eq!(want_spec, got_spec);
    assert!(got.len() >= want.len(), "{} < {}", got.len(), want.len());
    if let Some(i) = want.iter().zip(&got).position(|(a, b)| a != b) {
        panic!("PCM differs at byte {i} of {}", want.len());
    }
    assert!(
        got[want.len()..].iter().all(|b| *b == 0),
        "non-silence after the clip"
    );

    let returned = std::fs::read(&back).expect("the copied-out file");
    assert!(returned == data, "the 10 MB file came back different");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_command_killed_by_a_signal_exits_128_plus_the_signal() {
    let Some(_image) = guest() else {
        return;
    };
    let _one = one_guest_at_a_time();
    let out = canto_run(&["--no-sound", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
}

#[test]
fn a_command_past_its_timeout_is_killed_with_a_clear_line() {
    let Some(_image) = guest() else {
        return;
    };
    let _one = one_guest_at_a_time();
    let start = Instant::now();
    let out = canto_run(&["--no-sound", "--timeout", "2", "--", "sleep", "100"]);
    let stderr = text(&out.stderr);
    // Killed (SIGKILL): 128 + 9, long before sleep's 100 s.
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(100), "{stderr}");
    let line: Vec<&str> = stderr.lines().filter(|l| l.contains("--timeout")).collect();
    assert_eq!(line.len(), 1, "{stderr}");
    assert!(
        line[0].contains("2.0 s") && line[0].contains("killed"),
        "{stderr}"
    );
}

#[test]
fn run_without_a_command_or_without_an_agent_is_one_clear_line() {
    let out = canto_run(&["--no-sound", "true"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no command: put it after `--`"), "{stderr}");

    let Some(_image) = guest() else {
        return;
    };
    let _one = one_guest_at_a_time();
    // canto.agent=0: the guest boots without its agent; canto waits 3 s, says so, stops the VM.
    let start = Instant::now();
    let out = canto_run(&[
        "--no-sound",
        "--cmdline",
        "canto.agent=0",
        "--agent-timeout",
        "3",
        "--",
        "true",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("did not answer") && stderr.contains("3.0 s"),
        "{stderr}"
    );
    assert!(start.elapsed() < Duration::from_secs(120), "{stderr}");
}
