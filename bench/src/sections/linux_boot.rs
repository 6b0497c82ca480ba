//! "boot and memory: Linux": the project's Linux 6.12 guest (target/guest) booting to
//! `CANTO-READY` with `canto.run=boot`.

use std::time::Duration;

use crate::config::Config;
use crate::report::Report;

use super::guest::{boot_compare, boot_rows, other_rows, other_vmms, Guest};

/// The Linux guest, booting with `canto.run=boot`; vmm_audio.rs plays with it. With
/// `BENCH_LINUX_ROOTFS=FILE` (an ext4 image of the same userspace, e.g. target/guest/rootfs.ext4)
/// it boots from that read-only virtio-blk disk instead of unpacking the initramfs.
pub fn guest(cfg: &Config) -> Guest {
    let rootfs = std::env::var_os("BENCH_LINUX_ROOTFS").map(std::path::PathBuf::from);
    let (initramfs, disk, root) = match rootfs {
        Some(disk) => (
            None,
            Some(disk),
            "root=/dev/vda ro rootfstype=ext4 init=/init ",
        ),
        None => (Some(cfg.root.join("target/guest/initramfs.cpio")), None, ""),
    };
    Guest {
        name: "Linux",
        kernel: cfg.root.join("target/guest/vmlinux"),
        initramfs,
        disk,
        cmdline: format!("{root}canto.run=boot"),
        memory_mib: 256,
        first: |l| l.contains("Linux version"),
        ready: |l| l.contains("CANTO-READY"),
        ready_label: "CANTO-READY",
        init: Some(|l| l.contains("Run /init as init process")),
        exit_note: "not like for like with QEMU microvm: it has no i8042, so the kernel's reboot=k first times out (~19 s, interpreted) before its triple fault",
        timeout: Duration::from_secs(240),
    }
}

pub fn run(cfg: &Config, report: &mut Report) {
    let guest = guest(cfg);
    report.section(&format!(
        "boot and memory: Linux 6.12 guest, canto.run=boot (256 MiB; {} runs each, 35-55 s per run here; QEMU -M {})",
        cfg.linux_runs, cfg.qemu_machine
    ));
    let (c, q) = boot_compare(
        cfg,
        &guest,
        cfg.linux_runs,
        cfg.qemu_enabled,
        Duration::from_millis(250),
        true,
    );
    boot_rows(report, &guest, &c, q.as_ref());
    let others = other_vmms(report);
    other_rows(
        cfg,
        report,
        &guest,
        &c,
        &others,
        cfg.linux_runs,
        Duration::from_millis(250),
    );
}
