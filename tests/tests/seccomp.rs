//! Seccomp (vmm/src/seccomp/): for each kind of thread, a syscall outside its filter ends Canto
//! with one clear line and status 159 (128 + SIGSYS). The test hook
//! `CANTO_SECCOMP_TEST_TRIGGER=<kind>` makes that kind's threads call `getpgid`, which no
//! filter allows, right after installing their filter. The filters are on by default: the runs
//! here do not pass `--seccomp`, except those that check `log` and `off`.
//!
//! Driver-guest boots (milliseconds) for the VM's threads; `canto run` for its session thread;
//! a private PulseAudio server for the ALSA period thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use canto_tests::{Canto, GuestImage, PulseServer, RunOutput};

/// 128 + SIGSYS.
const SECCOMP_EXIT_STATUS: i32 = 159;

const TRIGGER: &str = "CANTO_SECCOMP_TEST_TRIGGER";

fn driver_guest(test: &str, sound: &str) -> Option<Canto> {
    let elf = canto_tests::driver_guest_to_run()?;
    Some(
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
            .arg(&format!("test={test}"))
            .timeout(Duration::from_secs(30)),
    )
}

fn trigger(kind: &str) -> [(String, String); 1] {
    [(TRIGGER.to_string(), kind.to_string())]
}

/// Canto ended with status 159 and the line naming `kind`'s thread and getpgid (121), and the
/// guest did not get to finish its test.
fn assert_stopped_by_seccomp(kind: &str, out: &RunOutput) {
    let line = format!(
        "canto: seccomp: the {kind} thread made syscall {} (getpgid), which its filter does not \
         allow; exiting (--seccomp log lets it through)",
        libc::SYS_getpgid
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(SECCOMP_EXIT_STATUS),
        "{out:#?}"
    );
    assert!(
        out.stderr.lines().any(|l| l.trim() == line),
        "no line '{line}' in {out:#?}"
    );
    assert!(!out.stdout.contains("DG PASS"), "{out:#?}");
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, ext: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("canto-seccomp-{name}-{}.{ext}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn wav_sound(path: &Path) -> String {
    format!("backend=wav,path={},capture=null", path.display())
}

#[test]
fn the_main_thread_s_forbidden_syscall_ends_canto_with_a_clear_line() {
    let Some(canto) = driver_guest("hello", "backend=null,capture=null") else {
        return;
    };
    assert_stopped_by_seccomp("main", &canto.envs(trigger("main")).run());
}

#[test]
fn a_vcpu_s_forbidden_syscall_ends_canto_with_a_clear_line() {
    let Some(canto) = driver_guest("hello", "backend=null,capture=null") else {
        return;
    };
    assert_stopped_by_seccomp("vcpu", &canto.envs(trigger("vcpu")).run());
}

#[test]
fn the_signal_thread_s_forbidden_syscall_ends_canto_with_a_clear_line() {
    let Some(canto) = driver_guest("hello", "backend=null,capture=null") else {
        return;
    };
    assert_stopped_by_seccomp("signals", &canto.envs(trigger("signals")).run());
}

#[test]
fn the_block_worker_s_forbidden_syscall_ends_canto_with_a_clear_line() {
    let Some(canto) = driver_guest("blk", "backend=null,capture=null") else {
        return;
    };
    let disk = TempFile::new("blk", "img");
    std::fs::write(&disk.0, vec![0u8; 1 << 20]).unwrap();
    let out = canto
        .arg("--disk")
        .arg(&format!("path={},id=dg-disk", disk.0.display()))
        .envs(trigger("block"))
        .run();
    assert_stopped_by_seccomp("block", &out);
}

#[test]
fn a_wav_period_thread_s_forbidden_syscall_ends_canto_with_a_clear_line() {
    let wav = TempFile::new("wav", "wav");
    let Some(canto) = driver_guest("snd-tx", &wav_sound(&wav.0)) else {
        return;
    };
    assert_stopped_by_seccomp("sound-wav", &canto.envs(trigger("sound-wav")).run());
}

#[test]
fn a_null_period_thread_s_forbidden_syscall_ends_canto_with_a_clear_line() {
    let Some(canto) = driver_guest("snd-tx", "backend=null,capture=null") else {
        return;
    };
    assert_stopped_by_seccomp("sound-null", &canto.envs(trigger("sound-null")).run());
}

#[test]
fn an_alsa_period_thread_s_forbidden_syscall_ends_canto_with_a_clear_line() {
    let Some(canto) = driver_guest("snd-tx", "backend=alsa,device=pulse,capture=null") else {
        return;
    };
    let Some(pulse) = PulseServer::start("seccomp") else {
        return;
    };
    let out = canto
        .envs(pulse.client_env())
        .envs(trigger("sound-alsa"))
        .run();
    assert_stopped_by_seccomp("sound-alsa", &out);
}

#[test]
fn the_run_session_s_forbidden_syscall_ends_canto_with_a_clear_line() {
    if !canto_tests::kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let out = std::process::Command::new(canto_tests::canto_bin())
        .args(["run", "--no-sound", "--kernel"])
        .arg(&image.kernel)
        .arg("--initramfs")
        .arg(&image.initramfs)
        .args(["--", "true"])
        .env(TRIGGER, "run-session")
        .output()
        .expect("canto run");
    let out = RunOutput {
        status: Some(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: Duration::ZERO,
        timed_out: false,
    };
    assert_stopped_by_seccomp("run-session", &out);
}

/// `--seccomp log` lets the syscall through (the kernel logs it) and `off` installs no filter:
/// the guest finishes its test either way.
#[test]
fn log_and_off_let_the_guest_finish() {
    for mode in ["log", "off"] {
        let Some(canto) = driver_guest("hello", "backend=null,capture=null") else {
            return;
        };
        let out = canto.arg("--seccomp").arg(mode).envs(trigger("vcpu")).run();
        out.expect_line("DG PASS hello");
        assert!(!out.stderr.contains("canto: seccomp"), "{mode}: {out:#?}");
    }
}

#[test]
fn an_unknown_seccomp_mode_is_one_clear_line() {
    let out = std::process::Command::new(canto_tests::canto_bin())
        .args(["--kernel", "/nonexistent", "--seccomp", "strict"])
        .output()
        .expect("canto");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown seccomp mode 'strict': use on, log or off"),
        "{stderr}"
    );
}
