//! The one helper every guest-booting test shares: it finds the `canto` binary and the guest
//! image, builds the command line, runs the VMM with a timeout and collects the serial output.
//! It also builds the driver-guest, and re-exports the private PulseAudio server
//! (`PulseServer`) that tests needing a real ALSA device use, which lives in the devices crate's
//! `test-utils` (its host-fault tests use it too).
//!
//! Tests that need /dev/kvm or the guest image skip with a printed reason when they are missing,
//! except in CI (`CI=true`), where a missing prerequisite fails the test loudly.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use canto_devices::virtio::test_utils::pulse::{in_ci, prerequisite, PulseServer};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_owned()
}

/// True when /dev/kvm can be opened read-write.
pub fn kvm_available() -> bool {
    prerequisite(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "/dev/kvm cannot be opened (no KVM on this host, or no permission)",
    )
}

/// The `canto` binary that `make test` built (override with CANTO_BIN).
pub fn canto_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CANTO_BIN") {
        return bin.into();
    }
    let root = workspace_root();
    let candidates = [
        root.join("target/debug/canto"),
        root.join("target/release/canto"),
    ];
    candidates
        .iter()
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .cloned()
        .unwrap_or_else(|| panic!("no canto binary: run `cargo build -p canto` (make test does)"))
}

/// Builds the driver-guest (tests/driver-guest) once per test binary with
/// `make -C tests/driver-guest`; None when gcc/make are missing (printed, or a panic in CI).
pub fn driver_guest() -> Option<PathBuf> {
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

/// The driver-guest to run: None when KVM or the toolchain is missing (printed, or a panic in
/// CI), and the test then skips.
pub fn driver_guest_to_run() -> Option<PathBuf> {
    if !kvm_available() {
        return None;
    }
    driver_guest()
}

/// The Linux guest `make guest` builds.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The uniprocessor kernel (target/guest/vmlinux-up) when it is built, else the SMP one: a
    /// one-vCPU boot of the SMP kernel is seconds slower here (docs/guest-kernel.md).
    pub kernel: PathBuf,
    /// The SMP kernel (target/guest/vmlinux), for `--cpus N` guests.
    pub smp_kernel: PathBuf,
    /// The SMP kernel as a bzImage (built beside it by resources/build-guest.sh).
    pub bz_image: PathBuf,
    pub initramfs: PathBuf,
    pub test_wav: PathBuf,
}

impl GuestImage {
    /// The image plus `/canto/run/NAME` running `script`: an extra cpio archive appended to a
    /// copy of the initramfs in `dir` (the kernel unpacks both).
    pub fn with_script(&self, dir: &Path, name: &str, script: &[u8]) -> GuestImage {
        let path = format!("canto/run/{name}");
        let extra = newc_archive(&[
            ("canto", 0o040755, b""),
            ("canto/run", 0o040755, b""),
            (&path, 0o100755, script),
        ]);
        let mut initramfs = std::fs::read(&self.initramfs).expect("initramfs");
        initramfs.extend_from_slice(&extra);
        let out = dir.join(format!("initramfs-{name}.cpio"));
        std::fs::write(&out, initramfs).expect("write initramfs");
        GuestImage {
            initramfs: out,
            ..self.clone()
        }
    }

    /// The image under target/guest, or None (with the reason printed) when it was not built.
    pub fn find() -> Option<Self> {
        let dir = workspace_root().join("target/guest");
        let up = dir.join("vmlinux-up");
        let image = Self {
            kernel: if up.exists() { up } else { dir.join("vmlinux") },
            smp_kernel: dir.join("vmlinux"),
            bz_image: dir.join("bzImage"),
            initramfs: dir.join("initramfs.cpio"),
            test_wav: dir.join("test.wav"),
        };
        let built = image.smp_kernel.exists() && image.initramfs.exists();
        prerequisite(built, "the guest image is not built (run `make guest`)").then_some(image)
    }

    /// The same userland as a root disk, beside the kernel (`make guest` writes it too;
    /// `canto run` boots it).
    pub fn root_disk(&self) -> PathBuf {
        self.kernel.with_file_name("rootfs.ext4")
    }

    /// The guest image, when its root disk is built too (older builds had none).
    pub fn with_root_disk() -> Option<Self> {
        let image = Self::find()?;
        let built = image.root_disk().exists();
        prerequisite(
            built,
            "the guest root disk target/guest/rootfs.ext4 is not built (run `make guest`)",
        )
        .then_some(image)
    }

    /// The Debian root disk `make rootfs-debian` builds, or None with the reason printed.
    pub fn debian_root_disk() -> Option<PathBuf> {
        let disk = workspace_root().join("target/guest/rootfs-debian.ext4");
        prerequisite(
            disk.exists(),
            "the Debian root disk target/guest/rootfs-debian.ext4 is not built (run `make rootfs-debian`)",
        )
        .then_some(disk)
    }
}

/// How a VMM run ended.
#[derive(Debug)]
pub struct RunOutput {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Panics with the whole output when the run did not exit 0 or `marker` is missing.
    pub fn expect_line(&self, marker: &str) {
        assert!(
            self.success() && self.stdout.lines().any(|l| l.trim_end() == marker),
            "expected exit 0 and a line '{marker}'; got {self:#?}"
        );
    }
}

/// Called while the VMM runs with its PID and the serial output so far.
type Watcher<'a> = &'a mut dyn FnMut(u32, &str);

/// A `canto` invocation.
pub struct Canto {
    args: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Duration,
}

impl Canto {
    pub fn new() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            timeout: Duration::from_secs(300),
        }
    }

    /// `canto --kernel K --initramfs I --cmdline "canto.run=NAME ..."` for the Linux guest.
    pub fn linux(image: &GuestImage, run: &str) -> Self {
        Self::new()
            .arg("--kernel")
            .arg(image.kernel.to_str().expect("utf-8 path"))
            .arg("--initramfs")
            .arg(image.initramfs.to_str().expect("utf-8 path"))
            .arg("--cmdline")
            .arg(&format!("canto.run={run}"))
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Sets environment variables for the VMM (e.g. a PulseAudio server's, or RUST_LOG).
    pub fn envs(mut self, env: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(env);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the VMM; kills it at the timeout. Serial output is stdout (`--serial stdio`).
    pub fn run(self) -> RunOutput {
        self.run_inner(None)
    }

    /// [`Canto::run`], calling `watch(pid)` about every 50 ms while the VMM runs (e.g. to sample
    /// its memory with [`vm_rss_kib`]).
    pub fn run_watching(self, mut watch: impl FnMut(u32)) -> RunOutput {
        self.run_inner(Some(&mut |pid, _: &str| watch(pid)))
    }

    /// [`Canto::run`], calling `watch(pid, serial_output_so_far)` about every 50 ms while the VMM
    /// runs, so a test can act on what the guest says (e.g. break the host while it plays).
    pub fn run_interacting(self, mut watch: impl FnMut(u32, &str)) -> RunOutput {
        self.run_inner(Some(&mut watch))
    }

    fn run_inner(self, mut watch: Option<Watcher<'_>>) -> RunOutput {
        const WATCH_EVERY: Duration = Duration::from_millis(50);
        let start = Instant::now();
        let mut watched_at: Option<Instant> = None;
        let mut child = Command::new(canto_bin())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start canto");
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        // The serial output as it arrives, for `watch`.
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out_reader = std::thread::spawn({
            let stdout = stdout.clone();
            move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = out.read(&mut chunk) {
                    stdout
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() > self.timeout => {
                    timed_out = true;
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => {
                    if let Some(watch) = watch.as_mut() {
                        if watched_at.is_none_or(|t| t.elapsed() >= WATCH_EVERY) {
                            watched_at = Some(Instant::now());
                            let so_far = String::from_utf8_lossy(
                                &stdout.lock().unwrap_or_else(|e| e.into_inner()),
                            )
                            .into_owned();
                            watch(child.id(), &so_far);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => break None,
            }
        };
        let _ = out_reader.join();
        let stdout =
            String::from_utf8_lossy(&stdout.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        RunOutput {
            status: if timed_out { None } else { status },
            stdout,
            stderr: err_reader.join().unwrap_or_default(),
            elapsed: start.elapsed(),
            timed_out,
        }
    }
}

/// The resident set size (VmRSS) of process `pid` in KiB, from /proc/<pid>/status; None once
/// the process is gone (or without procfs).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

impl Default for Canto {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes a newc cpio archive holding `files` (path inside the archive, mode, contents), for
/// appending to the guest's initramfs (Linux merges concatenated archives).
pub fn newc_archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    fn pad4(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    let entries = files
        .iter()
        .map(|(p, m, d)| (*p, *m, *d))
        .chain(std::iter::once(("TRAILER!!!", 0, &[][..])));
    for (ino, (path, mode, data)) in entries.enumerate() {
        let name_size = path.len() + 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            ino + 1,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name_size,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(path.as_bytes());
        out.push(0);
        pad4(&mut out);
        out.extend_from_slice(data);
        pad4(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_archive_layout() {
        let a = newc_archive(&[("canto/x", 0o100644, b"abc")]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("canto/x\0"));
        assert!(text.contains("TRAILER!!!"));
        // File size field of the first entry (7th field) is 3.
        assert_eq!(&a[6 + 6 * 8..6 + 7 * 8], b"00000003");
    }

    #[test]
    fn vm_rss_of_this_process() {
        let kib = vm_rss_kib(std::process::id()).expect("VmRSS of the test process");
        assert!(kib > 0);
        assert_eq!(vm_rss_kib(u32::MAX), None);
    }
}
