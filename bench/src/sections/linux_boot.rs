//! "boot and memory: Linux": the project's Linux 6.12 guest (target/guest) booting to
//! `CANTO-READY` with `canto.run=boot`.

use std::time::Duration;

use crate::config::Config;
use crate::report::Report;

use super::guest::{boot_compare, boot_rows, other_rows, other_vmms, Guest};

/// The Linux guest, booting with `canto.run=boot`; vmm_audio.rs plays with it. By default it
/// boots from target/guest/rootfs.ext4 as a read-only virtio-blk root disk (`root=/dev/vda`, as
/// `canto run` does), or `BENCH_LINUX_ROOTFS=FILE`; `BENCH_LINUX_INITRAMFS=1` unpacks
/// target/guest/initramfs.cpio instead.
pub fn guest(cfg: &Config) -> Guest {
    let (initramfs, disk, root) = if use_initramfs() {
        (Some(cfg.root.join("target/guest/initramfs.cpio")), None, "")
    } else {
        let disk = std::env::var_os("BENCH_LINUX_ROOTFS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| cfg.root.join("target/guest/rootfs.ext4"));
        (
            None,
            Some(disk),
            "root=/dev/vda ro rootfstype=ext4 init=/init ",
        )
    };
    Guest {
        name: "Linux",
        kernel: linux_kernel(cfg),
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

/// Whether the Linux rows unpack the initramfs (`BENCH_LINUX_INITRAMFS=1`) rather than boot the
/// root disk.
fn use_initramfs() -> bool {
    std::env::var("BENCH_LINUX_INITRAMFS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The Linux rows' kernel: the uniprocessor target/guest/vmlinux-up when it was built, else
/// target/guest/vmlinux.
fn linux_kernel(cfg: &Config) -> std::path::PathBuf {
    let up = cfg.root.join("target/guest/vmlinux-up");
    if up.is_file() {
        up
    } else {
        cfg.root.join("target/guest/vmlinux")
    }
}

/// What the section title says was booted.
fn image_label(guest: &Guest) -> String {
    let kernel = guest
        .kernel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match &guest.disk {
        Some(d) => format!(
            "{kernel}, read-only root disk {}",
            d.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ),
        None => format!("{kernel}, initramfs"),
    }
}

pub fn run(cfg: &Config, report: &mut Report) {
    let guest = guest(cfg);
    report.section(&format!(
        "boot and memory: Linux 6.12 guest, canto.run=boot ({}; 256 MiB; {} runs each; QEMU -M {})",
        image_label(&guest),
        cfg.linux_runs,
        cfg.qemu_machine
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
