//! The driver-guest (tests/driver-guest): a tiny freestanding guest that drives Canto's PCI bus and
//! virtio-pci devices through real KVM and reports on the serial port. It starts in milliseconds,
//! so each test here is one short `canto` run that must end with `DG PASS <name>`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use canto_tests::{kvm_available, prerequisite, workspace_root, Canto, RunOutput};

/// Builds the guest once per test binary (`make -C tests/driver-guest`); None when gcc/make are
/// missing (printed, or a panic in CI).
fn driver_guest() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let dir = workspace_root().join("tests/driver-guest");
        let out = Command::new("make")
            .arg("-C")
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run make: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "make -C tests/driver-guest failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir.join("build/driver-guest.elf"))
    });
    match built {
        Ok(elf) => Some(elf.clone()),
        Err(why) => {
            // A guest that does not compile is a bug, not a missing prerequisite, unless the
            // toolchain itself is absent.
            let no_toolchain = why.contains("cannot run make") || why.contains("not found");
            assert!(no_toolchain, "{why}");
            prerequisite(false, why);
            None
        }
    }
}

/// The one place the canto command line for a driver-guest run is built.
fn canto_args(elf: &std::path::Path, cmdline: &str) -> Canto {
    Canto::new()
        .arg("--kernel")
        .arg(elf.to_str().expect("utf-8 path"))
        .arg("--memory")
        .arg("64M")
        .arg("--serial")
        .arg("stdio")
        // The null sound backend: no host audio device needed, nothing played.
        .arg("--sound")
        .arg("backend=null")
        .arg("--cmdline")
        .arg(cmdline)
        .timeout(Duration::from_secs(20))
}

/// Runs `test=<name>`; None when KVM or the toolchain is missing (the test then skips).
fn run_guest(name: &str, extra: &str) -> Option<RunOutput> {
    if !kvm_available() {
        return None;
    }
    let elf = driver_guest()?;
    let cmdline = format!("test={name} {extra}");
    let out = canto_args(&elf, cmdline.trim_end()).run();
    eprintln!(
        "--- test={name}: {:?} in {:?}\n{}",
        out.status, out.elapsed, out.stdout
    );
    if !out.stderr.is_empty() {
        eprintln!("--- canto stderr:\n{}", out.stderr);
    }
    Some(out)
}

/// Exit 0, exactly one result line, and it is `DG PASS <name>`.
fn expect_pass(name: &str, extra: &str) -> Option<RunOutput> {
    let out = run_guest(name, extra)?;
    let fails: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("DG FAIL"))
        .collect();
    assert!(fails.is_empty(), "test={name} failed: {fails:?}\n{out:#?}");
    assert!(!out.timed_out, "test={name} timed out: {out:#?}");
    out.expect_line(&format!("DG PASS {name}"));
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
