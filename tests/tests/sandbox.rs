//! `canto run -- COMMAND`: the real Linux guest `make guest` built (found by `canto run` itself,
//! without `--kernel`: the kernel and its root disk, read-only under a tmpfs overlay), its agent
//! over virtio-vsock, the command's output and exit status on Canto's; disks the guest may not
//! write and disks whose synced data must survive `kill -9`; the Debian root disk
//! (`make rootfs-debian`) speaking with espeak-ng. Each `canto run` boots Linux once (30-50 s on
//! kvm_pvm, minutes on a loaded machine), so a test checks several things in its one boot.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use canto_tests::{canto_bin, kvm_available, prerequisite, GuestImage};

/// How long a test's `canto run` may wait for the agent: a boot is under a minute on an idle
/// kvm_pvm machine, but several minutes when other guests share its two cores.
const AGENT_WAIT: &str = "400";

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
        if start.elapsed() > Duration::from_secs(600) {
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

/// The guest image with its root disk (what `canto run` boots by default).
fn guest_with_root_disk() -> Option<GuestImage> {
    if !kvm_available() {
        return None;
    }
    GuestImage::with_root_disk()
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
    let Some(image) = guest_with_root_disk() else {
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
        "--agent-timeout",
        AGENT_WAIT,
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
        "echo out; echo err >&2; cat /proc/mounts >&2; aplay -q -D hw:0,0 /tmp/in.wav || exit 9; \
         exit 3",
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
    // Booted from the root disk (not the initramfs): read-only, under a tmpfs overlay that is
    // the guest's root (the copies in went there).
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("overlay / overlay rw")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("/dev/root /canto/oldroot ext4 ro")),
        "{stderr}"
    );

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
    let Some(image) = guest() else {
        return;
    };
    let _one = one_guest_at_a_time();
    // With --initramfs, `canto run` boots the initramfs instead of the root disk (the fallback
    // for guest builds without one): that path keeps working.
    let out = canto_run(&[
        "--agent-timeout",
        AGENT_WAIT,
        "--initramfs",
        image.initramfs.to_str().unwrap(),
        "--no-sound",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]);
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
}

#[test]
fn a_command_past_its_timeout_is_killed_with_a_clear_line() {
    let Some(_image) = guest() else {
        return;
    };
    let _one = one_guest_at_a_time();
    let start = Instant::now();
    let out = canto_run(&[
        "--agent-timeout",
        AGENT_WAIT,
        "--no-sound",
        "--timeout",
        "2",
        "--",
        "sleep",
        "100",
    ]);
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

/// An ext4 image of `files` (name, contents), written by `mke2fs -d` (no root, no loop mount),
/// or None when mke2fs is missing.
fn ext4_image(path: &Path, files: &[(&str, &[u8])]) -> Option<()> {
    let staging = path.with_extension("d");
    std::fs::create_dir_all(&staging).unwrap();
    for (name, data) in files {
        std::fs::write(staging.join(name), data).unwrap();
    }
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&staging)
        .arg(path)
        .arg("4M")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir_all(&staging);
    prerequisite(made, "mke2fs (e2fsprogs) cannot make a test ext4 image").then_some(())
}

#[test]
fn a_read_only_disk_refuses_writes_and_synced_writes_survive_kill_9() {
    let Some(_image) = guest_with_root_disk() else {
        return;
    };
    let dir = scratch_dir("disks");
    let ro = dir.join("ro.img");
    let rw = dir.join("rw.img");
    if ext4_image(&ro, &[("hello.txt", b"hello from the host\n")]).is_none() {
        return;
    }
    std::fs::write(&rw, vec![0u8; 1 << 20]).unwrap();
    let ro_before = std::fs::read(&ro).unwrap();
    let _one = one_guest_at_a_time();

    // The root disk is /dev/vda, the user's disks follow in order: vdb read-only, vdc writable.
    // The guest reads the read-only disk and fails to write it through ext4 and raw; it writes
    // the writable one through an fd it keeps open (closing a block device's last fd would
    // write it back by itself), syncs (the data leaves the guest's page cache for the device,
    // with a FLUSH), says so, and waits to be killed. Without the sync the data would still be
    // in the guest's page cache (written back only after 30 s) and lost with the VM.
    let script = "mkdir /mnt && mount /dev/vdb /mnt 2>&1; cat /mnt/hello.txt; \
        { echo x > /mnt/new.txt; } 2>&1 || echo file-write-refused; \
        { echo y | busybox dd of=/dev/vdb; } 2>&1 || echo raw-write-refused; \
        exec 3>/dev/vdc; echo canto-durable-4711 >&3; busybox sync && echo CANTO-SYNCED; \
        sleep 600";
    let ro_spec = format!("path={},readonly=on", ro.display());
    let rw_spec = format!("path={}", rw.display());
    let mut child = Command::new(canto_bin())
        .args(["run", "--agent-timeout", AGENT_WAIT, "--no-sound"])
        .args(["--disk", &ro_spec, "--disk", &rw_spec])
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start canto");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let start = Instant::now();
    let synced = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let done = line == "CANTO-SYNCED";
                lines.push(line);
                if done {
                    break true;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if start.elapsed() > Duration::from_secs(600)
                    || child.try_wait().ok().flatten().is_some()
                {
                    break false;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
        }
    };
    // SIGKILL: no teardown, no flush by Canto: only what the device wrote before completing
    // the guest's FLUSH is in the file.
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let stdout = lines.join("\n");
    let stderr = text(&out.stderr);
    assert!(
        synced,
        "no CANTO-SYNCED line\nstdout: {stdout}\nstderr: {stderr}"
    );

    assert!(lines.iter().any(|l| l == "hello from the host"), "{stdout}");
    assert!(lines.iter().any(|l| l == "file-write-refused"), "{stdout}");
    assert!(
        lines.iter().any(|l| l.contains("Read-only file system")),
        "{stdout}"
    );
    assert!(lines.iter().any(|l| l == "raw-write-refused"), "{stdout}");
    let ro_after = std::fs::read(&ro).unwrap();
    assert!(ro_after == ro_before, "the read-only disk's file changed");

    let rw_after = std::fs::read(&rw).unwrap();
    let want = b"canto-durable-4711\n";
    assert_eq!(
        &rw_after[..want.len()],
        want,
        "the synced write is not in the file after kill -9"
    );
    assert!(rw_after[want.len()..].iter().all(|b| *b == 0));
    let _ = std::fs::remove_dir_all(dir);
}

/// The version of a Debian package installed on the host, or None.
fn host_package_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()?;
    (out.status.success() && !out.stdout.is_empty()).then(|| text(&out.stdout))
}

#[test]
fn espeak_ng_in_the_debian_guest_plays_what_the_host_s_espeak_ng_makes() {
    let Some(_image) = guest_with_root_disk() else {
        return;
    };
    let Some(debian) = GuestImage::debian_root_disk() else {
        return;
    };
    let host_version = host_package_version("espeak-ng");
    if !prerequisite(
        host_version.is_some(),
        "espeak-ng is not installed on the host (resources/install-deps.sh rootfs)",
    ) {
        return;
    }
    let host_version = host_version.unwrap();
    let dir = scratch_dir("espeak");
    let sentence = "Canto is a sound enabled sandbox.";
    let host_wav = dir.join("host.wav");
    let made = Command::new("espeak-ng")
        .arg("-w")
        .arg(&host_wav)
        .arg(sentence)
        .status()
        .expect("espeak-ng on the host");
    assert!(made.success());

    let out_wav = dir.join("guest.wav");
    let sound = format!("backend=wav,path={}", out_wav.display());
    let script = format!(
        "dpkg-query -W -f='espeak-ng ${{Version}}\\n' espeak-ng; \
         espeak-ng -w /tmp/s.wav '{sentence}' && aplay -q -D hw:0,0 /tmp/s.wav"
    );
    let _one = one_guest_at_a_time();
    let out = canto_run(&[
        "--agent-timeout",
        AGENT_WAIT,
        "--rootfs",
        debian.to_str().unwrap(),
        "--memory",
        "512M",
        "--sound",
        &sound,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // The same package on both sides (Debian bookworm), so the same samples.
    assert_eq!(
        stdout.trim(),
        format!("espeak-ng {host_version}"),
        "stderr: {stderr}"
    );
    let (want_spec, want) = wav_pcm(&host_wav);
    let (got_spec, got) = wav_pcm(&out_wav);
    assert_eq!(want_spec, got_spec);
    assert!(
        want.len() > 10_000,
        "espeak-ng made only {} bytes",
        want.len()
    );
    assert!(got.len() >= want.len(), "{} < {}", got.len(), want.len());
    if let Some(i) = want.iter().zip(&got).position(|(a, b)| a != b) {
        panic!("PCM differs at byte {i} of {}", want.len());
    }
    assert!(
        got[want.len()..].iter().all(|b| *b == 0),
        "non-silence after the speech"
    );
    let _ = std::fs::remove_dir_all(dir);
}
