//! "boot and memory: driver-guest": the bare-metal test guest (tests/driver-guest) booting with
//! `test=hello`, and its virtio-rng notify → interrupt round trips (`test=rtt`).

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::kv;
use crate::report::{fmt_summary, Report, Row};
use crate::util::{tsc_hz, Summary};
use crate::vmm;

use super::guest::{boot_compare, boot_rows, Guest};
use super::progress;

pub fn run(cfg: &Config, report: &mut Report) {
    let elf = cfg.root.join("tests/driver-guest/build/driver-guest.elf");
    if !elf.is_file() {
        report.skip(format!(
            "driver-guest: {} missing (`make -C tests/driver-guest`)",
            elf.display()
        ));
        return;
    }
    boot_and_rtt(cfg, &elf, report);
}

fn boot_and_rtt(cfg: &Config, elf: &Path, report: &mut Report) {
    let guest = Guest {
        name: "driver-guest",
        kernel: elf.to_path_buf(),
        initramfs: None,
        disk: None,
        cmdline: "test=hello".into(),
        memory_mib: 64,
        first: |l| l.starts_with("DG "),
        ready: |l| l.starts_with("DG PASS"),
        ready_label: "DG PASS",
        init: None,
        exit_note: "",
        timeout: Duration::from_secs(60),
    };
    // QEMU's -kernel needs a PVH note (or a bzImage): try once, and say why when it fails.
    let mut qemu = cfg.qemu_enabled;
    if qemu {
        let r = vmm::run(&guest.qemu(cfg));
        if !r.success() || r.first(guest.ready).is_none() {
            qemu = false;
            let why = r
                .stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no DG PASS line")
                .to_string();
            report.skip(format!(
                "QEMU on the driver-guest: QEMU cannot boot it ({why}); the driver-guest is an ELF \
                 without a PVH note, started through the Linux 64-bit boot protocol, which QEMU's \
                 -kernel does not offer for ELF files. pvh-hello is the small guest both boot"
            ));
        }
    }
    report.section(&format!(
        "boot and memory: driver-guest test=hello (64 MiB; {} runs)",
        cfg.runs
    ));
    let (c, q) = boot_compare(cfg, &guest, cfg.runs, qemu, Duration::from_millis(2), false);
    boot_rows(report, &guest, &c, q.as_ref());

    // Notify → interrupt round trips of virtio-rng, as the driver-guest measures them.
    let mut cycles = Vec::new();
    let mut rtt_ns = Vec::new();
    for i in 0..cfg.runs {
        progress(&format!(
            "canto driver-guest test=rtt run {}/{}",
            i + 1,
            cfg.runs
        ));
        let rtt = Guest {
            cmdline: "test=rtt n=1000".into(),
            ..guest.clone()
        };
        let r = vmm::run(&rtt.canto(cfg, &[]));
        match r.find_line(|l| l.starts_with("DG RTT") && l.contains("median_cycles=")) {
            Some(_) => {
                let field = |key: &str| {
                    r.lines
                        .iter()
                        .filter(|(_, l)| l.starts_with("DG RTT"))
                        .find_map(|(_, l)| kv::get::<f64>(l, key))
                };
                if let Some(c) = field("median_cycles") {
                    cycles.push(c);
                }
                if let Some(ns) = field("median_ns") {
                    rtt_ns.push(ns);
                }
            }
            None => report.note(format!(
                "driver-guest test=rtt gave no `DG RTT ... median_cycles=` line: {}",
                r.failure()
            )),
        }
    }
    if let Some(s) = Summary::of(&cycles) {
        let micros = match Summary::of(&rtt_ns) {
            Some(ns) => format!("{:.1} µs (guest's own TSC conversion)", ns.median / 1e3),
            None => format!(
                "{:.1} µs at the host's TSC rate",
                s.median / tsc_hz(Duration::from_millis(200)) * 1e6
            ),
        };
        report.row(Row {
            figure: "driver-guest: virtio-rng notify → interrupt round trip".into(),
            canto: format!("{} = {micros}", fmt_summary(Some(s), 1.0, "cycles", 0)),
            qemu: if !cfg.qemu_enabled {
                "not run".into()
            } else if qemu {
                "—".into()
            } else {
                "cannot boot it".into()
            },
            note: "median of each run's 1000 round trips (test=rtt); on kvm_pvm the guest's side of it is interpreted".into(),
            ..Row::default()
        });
    }
}
