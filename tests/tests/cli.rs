//! User errors on the command line: each one exits non-zero with one clear line, never a panic.

use canto_tests::Canto;

fn run_err(args: &[&str]) -> String {
    let mut canto = Canto::new();
    for a in args {
        canto = canto.arg(a);
    }
    let out = canto.run();
    assert!(!out.success(), "expected failure for {args:?}: {out:#?}");
    assert!(
        !out.stderr.contains("panicked"),
        "panic for {args:?}: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("RUST_BACKTRACE"), "{}", out.stderr);
    out.stderr
}

#[test]
fn missing_kernel_file() {
    let err = run_err(&["--kernel", "/nonexistent/vmlinux"]);
    assert!(
        err.contains("cannot open kernel '/nonexistent/vmlinux'"),
        "{err}"
    );
}

#[test]
fn file_that_is_not_a_kernel() {
    let err = run_err(&["--kernel", "/etc/hostname", "--memory", "64M"]);
    assert!(err.contains("is not a Linux kernel"), "{err}");
}

#[test]
fn missing_initramfs() {
    let Some(image) = canto_tests::GuestImage::find() else {
        return;
    };
    let err = run_err(&[
        "--kernel",
        image.kernel.to_str().unwrap(),
        "--initramfs",
        "/nonexistent/initrd",
        "--memory",
        "64M",
    ]);
    assert!(
        err.contains("cannot open initramfs '/nonexistent/initrd'"),
        "{err}"
    );
}

#[test]
fn bad_sizes_and_counts() {
    assert!(run_err(&["--kernel", "k", "--cpus", "0"]).contains("at least 1 vCPU"));
    assert!(run_err(&["--kernel", "k", "--memory", "12Q"]).contains("unknown size suffix"));
    let err = run_err(&["--kernel", "/etc/hostname", "--memory", "1M"]);
    assert!(err.contains("too little"), "{err}");
    let err = run_err(&["--kernel", "/etc/hostname", "--memory", "64T"]);
    assert!(err.contains("more than this host has"), "{err}");
}

#[test]
fn unknown_option() {
    assert!(run_err(&["--kernel", "k", "--frobnicate"]).contains("--frobnicate"));
}

#[test]
fn wav_path_that_cannot_be_written() {
    // The sound device is built after the VM, so this needs the real kernel and /dev/kvm.
    let Some(image) = canto_tests::GuestImage::find() else {
        return;
    };
    if !canto_tests::kvm_available() {
        return;
    }
    // --print-devices: should the device be built after all, Canto exits 0 at once.
    let err = run_err(&[
        "--kernel",
        image.kernel.to_str().unwrap(),
        "--memory",
        "64M",
        "--sound",
        "backend=wav,path=/nonexistent-dir/x.wav",
        "--print-devices",
    ]);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(lines[0].contains("/nonexistent-dir/x.wav"), "{err}");
    assert!(lines[0].contains("WAV"), "{err}");
}

#[test]
fn input_streams_without_a_capture_grant() {
    // Refused while parsing, before any file or KVM is touched: one line naming the fix.
    let err = run_err(&["--kernel", "k", "--sound", "backend=null,streams=1:1"]);
    assert!(err.contains("capture grant"), "{err}");
    assert!(err.contains("capture=wav:FILE"), "{err}");
    let err = run_err(&["--kernel", "k", "--sound", "backend=null,capture=mic"]);
    assert!(err.contains("capture=mic"), "{err}");
}

#[test]
fn capture_wav_file_that_cannot_be_read() {
    // The capture file is opened when the device is built, after the VM: the real kernel and
    // /dev/kvm are needed.
    let Some(image) = canto_tests::GuestImage::find() else {
        return;
    };
    if !canto_tests::kvm_available() {
        return;
    }
    let err = run_err(&[
        "--kernel",
        image.kernel.to_str().unwrap(),
        "--memory",
        "64M",
        "--sound",
        "backend=null,capture=wav:/nonexistent-dir/in.wav",
        "--print-devices",
    ]);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(lines[0].contains("/nonexistent-dir/in.wav"), "{err}");
}
