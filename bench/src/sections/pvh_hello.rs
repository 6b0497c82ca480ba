//! "boot and memory: pvh-hello": the smallest guest both VMMs boot (resources/bench/pvh-hello.S:
//! one serial line, then reset).

use std::time::Duration;

use crate::config::Config;
use crate::report::Report;

use super::guest::{boot_compare, boot_rows, other_rows, other_vmms, Guest};

pub fn run(cfg: &Config, report: &mut Report) {
    let hello = cfg.out.join("pvh-hello.elf");
    if hello.is_file() {
        let guest = Guest {
            name: "pvh-hello",
            kernel: hello,
            initramfs: None,
            disk: None,
            cmdline: String::new(),
            memory_mib: 64,
            first: |l| l.contains("BENCH-HELLO"),
            ready: |l| l.contains("BENCH-HELLO"),
            ready_label: "",
            init: None,
            exit_note: "i8042 reset on Canto; on QEMU microvm (no i8042) the triple fault after it",
            timeout: Duration::from_secs(60),
        };
        report.section(&format!(
            "boot and memory: pvh-hello (one serial line, then reset; 64 MiB; {} runs each; \
         QEMU -M {})",
            cfg.runs, cfg.qemu_machine
        ));
        let (c, q) = boot_compare(
            cfg,
            &guest,
            cfg.runs,
            cfg.qemu_enabled,
            Duration::from_millis(2),
            false,
        );
        boot_rows(report, &guest, &c, q.as_ref());
        let others = other_vmms(report);
        other_rows(
            cfg,
            report,
            &guest,
            &c,
            &others,
            cfg.runs,
            Duration::from_millis(2),
        );
    } else {
        report.skip(format!(
        "pvh-hello: {} missing (`make bench` builds it with resources/bench/build-pvh-hello.sh)",
        hello.display()
    ));
    }
}
