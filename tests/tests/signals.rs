//! Stop signals: SIGTERM, SIGINT and SIGHUP sent to a `canto` whose guest is playing into a WAV
//! file end it cleanly: exit status 128 + N, one stderr line naming the signal, a WAV header that
//! counts every frame the file holds, and the terminal as it was before Canto put it in raw mode.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use canto_tests::{canto_bin, driver_guest_to_run, Canto, RunOutput};

/// 25 ms periods of S16/48k/stereo: the signal goes once this much PCM is in the file.
const PLAYED_BEFORE_SIGNAL: u64 = 8 * 4800;

/// Where a test's WAV file goes (removed first).
fn wav_path(name: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("canto-signals-{name}-{}.wav", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn canto_playing(elf: &Path, wav: &Path) -> Canto {
    Canto::new()
        .arg("--kernel")
        .arg(elf.to_str().expect("utf-8 path"))
        .arg("--memory")
        .arg("64M")
        .arg("--serial")
        .arg("stdio")
        .arg("--sound")
        .arg(&format!("backend=wav,path={}", wav.display()))
        .arg("--cmdline")
        .arg("test=snd-play")
        .timeout(Duration::from_secs(60))
}

/// Checks the WAV file's header against its contents: the RIFF size and the data chunk's size
/// (hound's frame count) match what the file holds. Returns the frame count.
fn check_wav_header(wav: &Path) -> u64 {
    let bytes = std::fs::read(wav).expect("the WAV file");
    assert!(bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE");
    let riff_size = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    assert_eq!(
        u64::from(riff_size),
        bytes.len() as u64 - 8,
        "the RIFF header's size does not match the file"
    );
    // The chunks after "WAVE": the data chunk is the last, and runs to the end of the file.
    let mut at = 12;
    let data_start = loop {
        assert!(at + 8 <= bytes.len(), "no data chunk");
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if &bytes[at..at + 4] == b"data" {
            break at + 8;
        }
        at += 8 + size + size % 2;
    };
    let reader = hound::WavReader::open(wav).expect("a WAV file hound reads");
    let spec = reader.spec();
    let frame_bytes = u64::from(spec.channels) * u64::from(spec.bits_per_sample / 8);
    let frames = u64::from(reader.duration());
    assert_eq!(
        frames * frame_bytes,
        (bytes.len() - data_start) as u64,
        "the header counts {frames} frames, the file holds {} bytes of PCM",
        bytes.len() - data_start
    );
    frames
}

/// The signal's exit status, its one stderr line, and a WAV header true to the data.
fn check_clean_stop(out: &RunOutput, signal: i32, name: &str, wav: &Path) {
    assert!(!out.timed_out, "canto did not end after {name}: {out:#?}");
    let frames = check_wav_header(wav);
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(128 + signal),
        "exit status after {name}: {out:#?}"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one stderr line: {out:#?}");
    assert!(lines[0].contains(name), "{out:#?}");
    assert!(
        frames * 4 >= PLAYED_BEFORE_SIGNAL,
        "only {frames} frames were played"
    );
}

fn stop_while_playing(signal: i32, name: &str) {
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let wav = wav_path(name);
    let mut sent = false;
    let out = canto_playing(&elf, &wav).run_interacting(|pid, serial| {
        if !sent
            && serial.contains("DG snd-play: playing")
            && file_len(&wav) > 44 + PLAYED_BEFORE_SIGNAL
        {
            // SAFETY: kill only sends a signal to the canto process this test started.
            assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
            sent = true;
        }
    });
    eprintln!("{}\n{}", out.stdout, out.stderr);
    assert!(sent, "the guest never played: {out:#?}");
    check_clean_stop(&out, signal, name, &wav);
    let _ = std::fs::remove_file(&wav);
}

#[test]
fn sigterm_flushes_and_exits_143() {
    stop_while_playing(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_flushes_and_exits_130() {
    stop_while_playing(libc::SIGINT, "SIGINT");
}

#[test]
fn sighup_flushes_and_exits_129() {
    stop_while_playing(libc::SIGHUP, "SIGHUP");
}

fn local_flags(fd: i32) -> libc::tcflag_t {
    // SAFETY: termios is plain data that tcgetattr fills in.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal descriptor owned by this test; `t` is valid to write.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t.c_lflag
}

/// With a terminal on stdin Canto puts it in raw mode; a SIGTERM still gives it back as it was.
#[test]
fn sigterm_restores_the_terminal() {
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let wav = wav_path("tty");
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors it opened into the two ints; no name, no settings.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let cooked = local_flags(std::os::fd::AsRawFd::as_raw_fd(&master));
    let canonical = libc::ICANON | libc::ECHO | libc::ISIG;
    assert_eq!(
        cooked & canonical,
        canonical,
        "a new pty is not in canonical mode"
    );

    let mut child = Command::new(canto_bin())
        .args(["--kernel", elf.to_str().unwrap(), "--memory", "64M"])
        .args(["--serial", "stdio", "--cmdline", "test=snd-play"])
        .arg("--sound")
        .arg(format!("backend=wav,path={}", wav.display()))
        .stdin(Stdio::from(slave))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start canto");
    let master_fd = std::os::fd::AsRawFd::as_raw_fd(&master);
    let start = Instant::now();
    let mut raw_seen = false;
    while start.elapsed() < Duration::from_secs(30) && child.try_wait().unwrap().is_none() {
        raw_seen |= local_flags(master_fd) & canonical == 0;
        if raw_seen && file_len(&wav) > 44 + PLAYED_BEFORE_SIGNAL {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill only sends a signal to the canto process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let _ = std::fs::remove_file(&wav);
    assert!(
        raw_seen,
        "canto never put the terminal in raw mode: {stderr}"
    );
    assert_eq!(
        local_flags(master_fd) & canonical,
        cooked & canonical,
        "the terminal was left in raw mode: {stderr}"
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(128 + libc::SIGTERM),
        "{status:?}: {stderr}"
    );
}

/// A second stop signal during the shutdown ends Canto at once with its own status. Both arrive
/// while Canto is stopped (SIGSTOP), so both are pending when it continues: the lower-numbered
/// SIGINT is taken first and starts the shutdown, SIGTERM is then already waiting.
#[test]
fn a_second_signal_ends_the_shutdown_at_once() {
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let wav = wav_path("second");
    let mut sent = false;
    let out = canto_playing(&elf, &wav).run_interacting(|pid, serial| {
        if !sent && serial.contains("DG snd-play: playing") {
            for signal in [libc::SIGSTOP, libc::SIGINT, libc::SIGTERM, libc::SIGCONT] {
                // SAFETY: kill only sends a signal to the canto process this test started.
                assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
            }
            sent = true;
        }
    });
    let _ = std::fs::remove_file(&wav);
    assert!(sent, "the guest never played: {out:#?}");
    assert!(!out.timed_out, "{out:#?}");
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(128 + libc::SIGTERM),
        "{out:#?}"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one stderr line: {out:#?}");
    assert!(
        lines[0].contains("SIGTERM") && lines[0].contains("SIGINT") && lines[0].contains("at once"),
        "{out:#?}"
    );
}
