//! The report's sections, one module each, run in the order they appear in the report. Each
//! adds its own section(s) of rows to the one `Report`, and says there what it skipped and why.

pub mod driver_guest;
pub mod guest;
pub mod linux_boot;
pub mod micro;
pub mod pvh_hello;
pub mod seccomp;
pub mod unit_audio;
pub mod vmm_audio;

use crate::config::Config;
use crate::report::Report;

/// Every section, in report order.
pub fn run_all(cfg: &Config, report: &mut Report) {
    unit_audio::run(cfg, report);
    micro::run(cfg, report);
    pvh_hello::run(cfg, report);
    seccomp::run_section(cfg, report);
    driver_guest::run(cfg, report);
    if cfg.linux_enabled {
        linux_boot::run(cfg, report);
        vmm_audio::run(cfg, report);
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
