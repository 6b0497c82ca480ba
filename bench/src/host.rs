//! What the report says about the machine and the build it measured.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;

/// The report's list of host, build and settings facts, ending with a blank line.
pub fn summary(cfg: &Config, wall: Duration) -> String {
    format!(
        "- host: {} ({} CPUs), kernel {}, /dev/kvm {}\n- Canto {} ({}); QEMU: {}\n- settings: \
         BENCH_RUNS={} BENCH_LINUX_RUNS={} BENCH_PACING_SECONDS={} BENCH_QEMU_MACHINE={}{}\n- \
         wall time of the harness: {:.0} s\n\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        if cfg.kvm_pvm {
            "is kvm_pvm (software KVM: guest kernel code is interpreted)"
        } else {
            "is hardware KVM"
        },
        git_rev(&cfg.root),
        cfg.canto.display(),
        if cfg.qemu_enabled {
            qemu_version(&cfg.qemu)
        } else {
            "not run".into()
        },
        cfg.runs,
        cfg.linux_runs,
        cfg.pacing_seconds,
        cfg.qemu_machine,
        if cfg.quick { " BENCH_QUICK=1" } else { "" },
        wall.as_secs_f64()
    )
}

fn git_rev(root: &Path) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-C",
            &root.display().to_string(),
            "describe",
            "--always",
            "--dirty",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".to_string(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn qemu_version(qemu: &Path) -> String {
    std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|s| s.to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
