//! "confinement": what `--landlock` and `--jail` add to the driver-guest's start (spawn to
//! `DG PASS`) and to peak RSS, against the unconfined run, paired: the three kinds alternate in
//! one loop on the same guest. The jail needs root; without it that row says so.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::report::{fmt_summary, Report, Row};
use crate::util::Summary;
use crate::vmm;

use super::guest::Guest;
use super::progress;

/// A kind of run and its extra options.
struct Kind {
    name: &'static str,
    args: Vec<String>,
    ready_s: Vec<f64>,
    maxrss_mib: Vec<f64>,
    failure: Option<String>,
}

pub fn run(cfg: &Config, report: &mut Report) {
    let elf = cfg.root.join("tests/driver-guest/build/driver-guest.elf");
    if !elf.is_file() {
        report.skip(format!(
            "confinement: {} missing (`make -C tests/driver-guest`)",
            elf.display()
        ));
        return;
    }
    measure(cfg, &elf, report);
}

fn measure(cfg: &Config, elf: &Path, report: &mut Report) {
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
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let jail_dir = cfg.out.join("confinement-jail");
    let mut kinds = vec![
        Kind {
            name: "unconfined",
            args: Vec::new(),
            ready_s: Vec::new(),
            maxrss_mib: Vec::new(),
            failure: None,
        },
        Kind {
            name: "--landlock",
            args: vec!["--landlock".into()],
            ready_s: Vec::new(),
            maxrss_mib: Vec::new(),
            failure: None,
        },
    ];
    if root && std::fs::create_dir_all(&jail_dir).is_ok() {
        kinds.push(Kind {
            name: "--jail",
            args: vec!["--jail".into(), jail_dir.display().to_string()],
            ready_s: Vec::new(),
            maxrss_mib: Vec::new(),
            failure: None,
        });
    } else {
        report.skip("confinement: --jail not measured: the bench does not run as root");
    }
    for i in 0..cfg.runs {
        for kind in kinds.iter_mut() {
            progress(&format!(
                "canto driver-guest {} run {}/{}",
                kind.name,
                i + 1,
                cfg.runs
            ));
            let args: Vec<&str> = kind.args.iter().map(String::as_str).collect();
            let r = vmm::run(&guest.canto(cfg, &args));
            match r.first(guest.ready) {
                Some(t) if r.success() => {
                    kind.ready_s.push(t.as_secs_f64());
                    // The jail's parent waits for the VMM, so its figure includes the VMM's.
                    kind.maxrss_mib.push(r.maxrss_kb as f64 / 1024.0);
                }
                _ => kind.failure = Some(r.failure()),
            }
        }
    }
    report.section(&format!(
        "confinement: driver-guest test=hello (64 MiB; {} runs of each kind, alternating)",
        cfg.runs
    ));
    let base_ready = Summary::of(&kinds[0].ready_s);
    let base_rss = Summary::of(&kinds[0].maxrss_mib);
    let ratio = |s: Option<Summary>, base: Option<Summary>| match (s, base) {
        (Some(s), Some(b)) if b.median > 0.0 => format!("{:.2}× unconfined", s.median / b.median),
        _ => "—".into(),
    };
    for kind in &kinds {
        let failed = kind
            .failure
            .as_ref()
            .map(|f| format!("; a run failed: {f}"))
            .unwrap_or_default();
        let ready = Summary::of(&kind.ready_s);
        report.row(Row {
            figure: format!("confinement {}: spawn → DG PASS", kind.name),
            canto: fmt_summary(ready, 1e3, "ms", 1),
            qemu: "—".into(),
            ratio: ratio(ready, base_ready),
            target: String::new(),
            note: format!("paired with the unconfined run{failed}"),
        });
        let rss = Summary::of(&kind.maxrss_mib);
        report.row(Row {
            figure: format!("confinement {}: peak RSS", kind.name),
            canto: fmt_summary(rss, 1.0, "MiB", 1),
            qemu: "—".into(),
            ratio: ratio(rss, base_rss),
            target: String::new(),
            note: "the VMM's ru_maxrss, reported by GNU time (for the jail: the larger of its parent and the jailed VMM)".into(),
        });
    }
    let _ = std::fs::remove_dir_all(&jail_dir);
}
