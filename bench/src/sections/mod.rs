//! The report's sections, one module each, run in the order they appear in the report. Each
//! adds its own section(s) of rows to the one `Report`, and says there what it skipped and why.

pub mod capture;
pub mod confinement;
pub mod disk;
pub mod driver_guest;
pub mod guest;
pub mod linux_boot;
pub mod micro;
pub mod peers_audio;
pub mod pvh_hello;
pub mod seccomp;
pub mod unit_audio;
pub mod vmm_audio;

use crate::config::Config;
use crate::report::Report;

/// Every section, in report order; with `BENCH_ONLY=NAME[,NAME]` (module names: `pvh_hello`,
/// `peers_audio`, ...) only those.
pub fn run_all(cfg: &Config, report: &mut Report) {
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|w| w.trim() == name))
    };
    if let Some(o) = &only {
        report.skip(format!("every section but {o}: BENCH_ONLY is set"));
    }
    if wanted("unit_audio") {
        unit_audio::run(cfg, report);
    }
    if wanted("capture") {
        capture::run(cfg, report);
    }
    if wanted("micro") {
        micro::run(cfg, report);
    }
    if wanted("pvh_hello") {
        pvh_hello::run(cfg, report);
    }
    if wanted("seccomp") {
        seccomp::run_section(cfg, report);
    }
    if wanted("driver_guest") {
        driver_guest::run(cfg, report);
    }
    if wanted("disk") {
        disk::run(cfg, report);
    }
    if wanted("confinement") {
        confinement::run(cfg, report);
    }
    if cfg.linux_enabled {
        if wanted("linux_boot") {
            linux_boot::run(cfg, report);
        }
        if wanted("vmm_audio") {
            vmm_audio::run(cfg, report);
        }
        if wanted("peers_audio") {
            if cfg.peers_enabled {
                peers_audio::run(cfg, report);
            } else {
                report.skip("audio against the peers: BENCH_NO_PEERS is set");
            }
        }
    }
}

/// One progress line on stderr (the report goes to stdout).
pub fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

fn pct(v: f64) -> String {
    format!("{:.3} %", v * 100.0)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
