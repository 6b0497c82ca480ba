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

/// Runs the driver-guest with `--disk` specs and `--print-devices` (disks are opened when the
/// devices are built, after the VM): Canto must fail with one line holding `want`. None when
/// KVM or the guest is missing (the test then skips).
fn disk_error(disks: &[String], want: &str) -> Option<String> {
    let guest = canto_tests::driver_guest_to_run()?;
    let mut args = vec![
        "--kernel".to_string(),
        guest.to_str().unwrap().to_string(),
        "--memory".into(),
        "64M".into(),
        "--no-sound".into(),
        "--print-devices".into(),
    ];
    for disk in disks {
        args.push("--disk".into());
        args.push(disk.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = run_err(&args);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(lines[0].contains(want), "expected '{want}' in: {err}");
    Some(lines[0].to_string())
}

/// A disk image in the temp directory, removed when dropped.
struct TempImage(std::path::PathBuf);

impl TempImage {
    fn new(name: &str, len: usize) -> Self {
        let path =
            std::env::temp_dir().join(format!("canto-cli-{name}-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; len]).unwrap();
        Self(path)
    }

    fn spec(&self, extra: &str) -> String {
        format!("path={}{extra}", self.0.display())
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn disk_missing() {
    let line = disk_error(
        &["path=/nonexistent/disk.img".into()],
        "disk '/nonexistent/disk.img': no such file",
    );
    if let Some(line) = line {
        assert!(line.starts_with("canto: "), "{line}");
    }
}

#[test]
fn disk_unreadable() {
    // A file without permissions, unless we are root (who reads it anyway): then a write-only
    // sysfs attribute, which not even root can open for reading.
    use std::os::unix::fs::PermissionsExt;
    let image = TempImage::new("unreadable", 4096);
    std::fs::set_permissions(&image.0, std::fs::Permissions::from_mode(0o000)).unwrap();
    let path = if std::fs::File::open(&image.0).is_err() {
        image.0.clone()
    } else {
        let sysfs = std::path::PathBuf::from("/sys/bus/pci/uevent");
        if std::fs::File::open(&sysfs).is_ok() || !sysfs.exists() {
            eprintln!("skipped: no unreadable file for this user");
            return;
        }
        sysfs
    };
    let spec = format!("path={},readonly=on", path.display());
    disk_error(&[spec], "cannot open it for reading: Permission denied");
}

#[test]
fn disk_is_a_directory() {
    let dir = std::env::temp_dir();
    disk_error(&[format!("path={}", dir.display())], "is a directory");
}

#[test]
fn disk_size_not_a_multiple_of_512() {
    let image = TempImage::new("odd-size", 1000);
    disk_error(
        &[image.spec("")],
        "its size, 1000 bytes, is not a multiple of 512 bytes",
    );
}

#[test]
fn disk_same_file_twice_writable() {
    let image = TempImage::new("twice", 4096);
    let want = "a file may be given twice only if every use has readonly=on";
    disk_error(&[image.spec(""), image.spec(",id=other")], want);
    disk_error(&[image.spec(",readonly=on"), image.spec("")], want);
    // Read-only twice is fine: the VM is built and the devices listed.
    let Some(guest) = canto_tests::driver_guest_to_run() else {
        return;
    };
    let out = Canto::new()
        .arg("--kernel")
        .arg(guest.to_str().unwrap())
        .arg("--memory")
        .arg("64M")
        .arg("--no-sound")
        .arg("--print-devices")
        .arg("--disk")
        .arg(&image.spec(",readonly=on"))
        .arg("--disk")
        .arg(&image.spec(",readonly=on"))
        .run();
    assert!(out.success(), "{out:#?}");
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.contains("1af4:1042"))
            .count(),
        2,
        "{}",
        out.stdout
    );
}
#[test]
fn vsock_bad_cid_and_unusable_socket_paths() {
    let err = run_err(&["--kernel", "k", "--vsock", "cid=2,socket=/tmp/x.sock"]);
    // clap's line, then its "try --help".
    assert!(
        err.lines().next().unwrap().contains("cid 2 is not usable"),
        "{err}"
    );
    // The device is built after the VM: these need the real kernel and /dev/kvm.
    let Some(image) = canto_tests::GuestImage::find() else {
        return;
    };
    if !canto_tests::kvm_available() {
        return;
    }
    let kernel = image.kernel.to_str().unwrap();
    let vm = |socket: &str| {
        let spec = format!("cid=3,socket={socket}");
        run_err(&[
            "--kernel",
            kernel,
            "--memory",
            "64M",
            "--no-sound",
            "--vsock",
            &spec,
            "--print-devices",
        ])
    };
    let err = vm("/nonexistent-dir/v.sock");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(
        lines[0].contains("cannot create socket /nonexistent-dir/v.sock"),
        "{err}"
    );
    // A socket a running program listens on.
    let dir = std::env::temp_dir().join(format!("canto-cli-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("busy.sock");
    let _busy = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = vm(path.to_str().unwrap());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(lines[0].contains("is in use"), "{err}");
    assert!(path.exists(), "the other program's socket is left alone");
    let _ = std::fs::remove_dir_all(&dir);
}
