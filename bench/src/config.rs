//! The harness's settings, read once from the environment (see main.rs for the variables).

use std::path::{Path, PathBuf};

use crate::report::Report;
use crate::util::{env_flag, env_u64};

/// What to run and where things are.
pub struct Config {
    /// The workspace root.
    pub root: PathBuf,
    /// Where report.md, pacing.svg and periods.csv go (`BENCH_OUT`, target/bench).
    pub out: PathBuf,
    pub canto: PathBuf,
    pub qemu: PathBuf,
    pub qemu_machine: String,
    pub quick: bool,
    pub qemu_enabled: bool,
    pub linux_enabled: bool,
    /// The Linux playback on QEMU's virtio-sound-pci and vhost-device-sound (`BENCH_NO_PEERS`).
    pub peers_enabled: bool,
    /// False when `BENCH_NO_MICRO` is set; the micro section says so in the report.
    pub micro_enabled: bool,
    /// Criterion's output directory (`CRITERION_HOME`, target/criterion).
    pub criterion_home: PathBuf,
    pub runs: usize,
    pub linux_runs: usize,
    pub pacing_seconds: f64,
    pub kvm_pvm: bool,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

impl Config {
    /// Reads the environment; what it turns off (QEMU, the Linux guest) goes to the report's
    /// skipped list with the reason.
    pub fn from_env(report: &mut Report) -> Config {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("bench/ sits in the workspace")
            .to_path_buf();
        let out = std::env::var_os("BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/bench"));
        let canto = std::env::var_os("CANTO_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/canto"));
        let qemu_name =
            std::env::var("QEMU_BIN").unwrap_or_else(|_| "qemu-system-x86_64".to_string());
        let qemu = which(&qemu_name).unwrap_or_else(|| PathBuf::from(&qemu_name));
        let quick = env_flag("BENCH_QUICK");
        let mut qemu_enabled = !env_flag("BENCH_NO_QEMU");
        if env_flag("BENCH_NO_QEMU") {
            report.skip("QEMU: BENCH_NO_QEMU is set");
        } else if !qemu.is_file() {
            qemu_enabled = false;
            report.skip(format!(
                "QEMU: `{qemu_name}` not found (apt-get install qemu-system-x86)"
            ));
        }
        let mut linux_enabled = !quick && !env_flag("BENCH_NO_LINUX");
        if quick {
            report.skip("Linux guest (boot, memory, playback): BENCH_QUICK=1");
        } else if env_flag("BENCH_NO_LINUX") {
            report.skip("Linux guest (boot, memory, playback): BENCH_NO_LINUX is set");
        } else if !root.join("target/guest/vmlinux").is_file()
            || !root.join("target/guest/initramfs.cpio").is_file()
        {
            linux_enabled = false;
            report.skip(
                "Linux guest: target/guest/vmlinux or initramfs.cpio missing (run `make guest`)",
            );
        }
        let criterion_home = std::env::var_os("CRITERION_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/criterion"));
        Config {
            out,
            canto,
            qemu,
            qemu_machine: std::env::var("BENCH_QEMU_MACHINE").unwrap_or_else(|_| "microvm".into()),
            quick,
            qemu_enabled,
            linux_enabled,
            peers_enabled: !env_flag("BENCH_NO_PEERS"),
            micro_enabled: !env_flag("BENCH_NO_MICRO"),
            criterion_home,
            runs: env_u64("BENCH_RUNS", 5).max(1) as usize,
            linux_runs: env_u64("BENCH_LINUX_RUNS", 3).max(1) as usize,
            pacing_seconds: env_u64("BENCH_PACING_SECONDS", 20).max(2) as f64,
            kvm_pvm: ::vmm::cmdline::host_is_kvm_pvm(),
            root,
        }
    }
}
