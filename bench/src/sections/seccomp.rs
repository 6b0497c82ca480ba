//! "seccomp: what the filters cost": pvh-hello (one serial line, then reset) with Canto's
//! default seccomp filters and with `--seccomp off`, alternately in the same run: spawn to exit
//! (which includes compiling the filters and installing one per thread) and peak RSS.

use std::time::Duration;

use crate::config::Config;
use crate::report::{fmt_summary, Report, Row};
use crate::util::Summary;
use crate::vmm::run;

use super::guest::{BootStats, Guest};
use super::progress;

/// A figure's name, where BootStats keeps it, its scale, unit and decimals.
type Figure = (
    &'static str,
    fn(&BootStats) -> &Vec<f64>,
    f64,
    &'static str,
    usize,
);

pub fn run_section(cfg: &Config, report: &mut Report) {
    let hello = cfg.out.join("pvh-hello.elf");
    if !hello.is_file() {
        report.skip(format!(
            "seccomp cost: {} missing (`make bench` builds it)",
            hello.display()
        ));
        return;
    }
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
        exit_note: "",
        timeout: Duration::from_secs(60),
    };
    let mut on = BootStats::default();
    let mut off = BootStats::default();
    for i in 0..cfg.runs {
        progress(&format!(
            "seccomp: pvh-hello run {}/{} (off, on)",
            i + 1,
            cfg.runs
        ));
        off.add(&guest, &run(&guest.canto(cfg, &["--seccomp", "off"])));
        on.add(&guest, &run(&guest.canto(cfg, &[])));
    }
    report.section(&format!(
        "seccomp: pvh-hello with the default filters (on) and with --seccomp off ({} runs each, \
         alternating)",
        cfg.runs
    ));
    let figures: [Figure; 2] = [
        ("spawn → exit", |s| &s.exit, 1e3, "ms", 1),
        ("peak RSS", |s| &s.maxrss_mib, 1.0, "MiB", 2),
    ];
    for (figure, of, scale, unit, digits) in figures {
        let (s_off, s_on) = (Summary::of(of(&off)), Summary::of(of(&on)));
        report.row(Row {
            figure: format!("pvh-hello {figure}, --seccomp off"),
            canto: fmt_summary(s_off, scale, unit, digits),
            qemu: "—".into(),
            ..Row::default()
        });
        let ratio = match (s_off, s_on) {
            (Some(a), Some(b)) if a.median > 0.0 => {
                format!("on ÷ off = {:.3}", b.median / a.median)
            }
            _ => "no ratio".into(),
        };
        report.row(Row {
            figure: format!("pvh-hello {figure}, seccomp on (default)"),
            canto: fmt_summary(s_on, scale, unit, digits),
            qemu: "—".into(),
            note: ratio,
            ..Row::default()
        });
    }
    for failure in off.failures.iter().chain(&on.failures).take(3) {
        report.note(format!("seccomp cost: a run failed: {failure}"));
    }
}
