//! `canto-bench`: the harness `make bench` runs. It prints one table and writes
//! target/bench/report.md, target/bench/pacing.svg and target/bench/periods.csv. Each section of
//! the table is a module of `canto_bench::sections`; they all fill one `Report`.
//!
//! Environment (all optional):
//! - `BENCH_QUICK=1`: boot and memory of the small guests only (pvh-hello, driver-guest); no
//!   Linux guest.
//! - `BENCH_NO_QEMU=1`, `BENCH_NO_LINUX=1`, `BENCH_NO_MICRO=1`: skip QEMU, the Linux guest, or
//!   the criterion results.
//! - `BENCH_RUNS` (5): runs per VMM for the small guests; `BENCH_LINUX_RUNS` (3) for Linux.
//! - `BENCH_PACING_SECONDS` (20): the steady playback's length.
//! - `BENCH_QEMU_MACHINE` (microvm): QEMU's `-M`; `pc` also works (SeaBIOS adds seconds here).
//! - `CANTO_BIN`, `QEMU_BIN`, `BENCH_OUT` (target/bench), `CRITERION_HOME`
//!   (target/criterion).

use std::time::Instant;

use canto_bench::config::Config;
use canto_bench::report::Report;
use canto_bench::{host, sections};

fn main() {
    let started = Instant::now();
    let mut report = Report::default();
    let cfg = Config::from_env(&mut report);
    if !cfg.canto.is_file() {
        eprintln!(
            "canto-bench: {} not found: build it first (`cargo build --release -p canto`, which \
             `make bench` does)",
            cfg.canto.display()
        );
        std::process::exit(2);
    }
    std::fs::create_dir_all(&cfg.out).expect("create the output directory");

    sections::run_all(&cfg, &mut report);

    print!("{}", report.console());
    let path = cfg.out.join("report.md");
    let markdown = report.markdown(&host::summary(&cfg, started.elapsed()));
    std::fs::write(&path, markdown).expect("write the report");
    println!(
        "\nWrote {}, {} and {} in {:.0} s.",
        path.display(),
        cfg.out.join("pacing.svg").display(),
        cfg.out.join("periods.csv").display(),
        started.elapsed().as_secs_f64()
    );
}
