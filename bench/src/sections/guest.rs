//! What the boot-and-memory sections share: a guest both VMMs boot, the figures of several runs,
//! and the rows comparing Canto with QEMU.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::report::{fmt_ratio, fmt_summary, Report, Row};
use crate::util::Summary;
use crate::vmm::{run, Invocation, RunResult};

use super::progress;

/// A guest both VMMs are asked to boot.
#[derive(Clone)]
pub struct Guest {
    pub name: &'static str,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub first: fn(&str) -> bool,
    pub ready: fn(&str) -> bool,
    /// The ready line's name in the table; empty when it is the first line.
    pub ready_label: &'static str,
    pub exit_note: &'static str,
    pub timeout: Duration,
}

impl Guest {
    pub fn canto(&self, cfg: &Config, extra: &[&str]) -> Invocation {
        let mut args = vec![
            "--kernel".to_string(),
            self.kernel.display().to_string(),
            "--memory".to_string(),
            format!("{}M", self.memory_mib),
            "--serial".to_string(),
            "stdio".to_string(),
        ];
        if let Some(initramfs) = &self.initramfs {
            args.extend(["--initramfs".to_string(), initramfs.display().to_string()]);
        }
        if !self.cmdline.is_empty() {
            args.extend(["--cmdline".to_string(), self.cmdline.clone()]);
        }
        if !extra.contains(&"--sound") {
            args.extend(["--sound".to_string(), "backend=null".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Invocation {
            label: format!("canto {}", self.name),
            program: cfg.canto.clone(),
            args,
            env: Vec::new(),
            timeout: self.timeout,
            sample_memory: None,
            sample_threads: None,
            guest_bytes: self.memory_mib << 20,
        }
    }

    /// QEMU with the same kernel, initramfs and memory, and the full command line Canto gives
    /// its guest (Canto's platform arguments included).
    pub fn qemu(&self, cfg: &Config) -> Invocation {
        let full = vmm::cmdline::build(&self.cmdline, cfg.kvm_pvm);
        let mut args: Vec<String> = [
            "-M",
            &cfg.qemu_machine,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-enable-kvm",
            "-cpu",
            "host,arch-capabilities=off",
            "-smp",
            "1",
            "-no-reboot",
            "-m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("{}M", self.memory_mib));
        args.extend(["-kernel".to_string(), self.kernel.display().to_string()]);
        if let Some(initramfs) = &self.initramfs {
            args.extend(["-initrd".to_string(), initramfs.display().to_string()]);
        }
        args.extend(["-append".to_string(), full]);
        Invocation {
            label: format!("qemu {}", self.name),
            program: cfg.qemu.clone(),
            args,
            env: Vec::new(),
            timeout: self.timeout,
            sample_memory: None,
            sample_threads: None,
            guest_bytes: self.memory_mib << 20,
        }
    }
}

/// Boot figures of several runs of one VMM on one guest.
#[derive(Default)]
pub struct BootStats {
    pub first: Vec<f64>,
    pub ready: Vec<f64>,
    pub exit: Vec<f64>,
    pub maxrss_mib: Vec<f64>,
    pub overhead_mib: Vec<f64>,
    pub guest_mib: Vec<f64>,
    pub failures: Vec<String>,
}

impl BootStats {
    pub(super) fn add(&mut self, guest: &Guest, r: &RunResult) {
        let ready = r.first(guest.ready);
        if !r.success() || ready.is_none() {
            self.failures.push(r.failure());
            return;
        }
        if let Some(t) = r.first(guest.first) {
            self.first.push(t.as_secs_f64());
        }
        self.ready.extend(ready.map(|t| t.as_secs_f64()));
        self.exit.push(r.exit.as_secs_f64());
        self.maxrss_mib.push(r.maxrss_kb as f64 / 1024.0);
        self.add_memory(r);
    }

    fn add_memory(&mut self, r: &RunResult) {
        if let Some(m) = r.memory.filter(|m| m.found_guest) {
            self.overhead_mib.push(m.overhead_kb() as f64 / 1024.0);
            self.guest_mib.push(m.guest_rss_kb as f64 / 1024.0);
        }
    }
}

/// Runs the guest on Canto and QEMU alternately, `runs` times each, then as many runs each with
/// the memory map sampled every `mem_every` (unless `sample_all`, where every run samples it):
/// sampling a short run would delay it.
pub fn boot_compare(
    cfg: &Config,
    guest: &Guest,
    runs: usize,
    qemu: bool,
    mem_every: Duration,
    sample_all: bool,
) -> (BootStats, Option<BootStats>) {
    let mut canto = BootStats::default();
    let mut q = qemu.then(BootStats::default);
    let with_mem = |mut inv: Invocation| {
        inv.sample_memory = Some(mem_every);
        inv
    };
    for i in 0..runs {
        let mut inv = guest.canto(cfg, &[]);
        if sample_all {
            inv = with_mem(inv);
        }
        progress(&format!("{} run {}/{runs}", inv.label, i + 1));
        canto.add(guest, &run(&inv));
        if let Some(q) = q.as_mut() {
            let mut inv = guest.qemu(cfg);
            if sample_all {
                inv = with_mem(inv);
            }
            progress(&format!("{} run {}/{runs}", inv.label, i + 1));
            q.add(guest, &run(&inv));
        }
    }
    if !sample_all {
        for i in 0..runs {
            progress(&format!(
                "canto {}: memory-sampled run {}/{runs}",
                guest.name,
                i + 1
            ));
            canto.add_memory(&run(&with_mem(guest.canto(cfg, &[]))));
            if let Some(q) = q.as_mut() {
                progress(&format!(
                    "qemu {}: memory-sampled run {}/{runs}",
                    guest.name,
                    i + 1
                ));
                q.add_memory(&run(&with_mem(guest.qemu(cfg))));
            }
        }
    }
    (canto, q)
}

pub fn boot_rows(report: &mut Report, guest: &Guest, canto: &BootStats, qemu: Option<&BootStats>) {
    let qs = |f: fn(&BootStats) -> &Vec<f64>| qemu.and_then(|q| Summary::of(f(q)));
    let qemu_cell = |s: Option<Summary>, scale, unit, d| match qemu {
        None => "not run".to_string(),
        Some(q) if q.ready.is_empty() => format!(
            "failed: {}",
            q.failures
                .first()
                .map(|f| f.chars().take(160).collect::<String>())
                .unwrap_or_default()
        ),
        Some(_) => fmt_summary(s, scale, unit, d),
    };
    // One row of Canto vs QEMU for a figure, in `unit` after multiplying by `scale`.
    let mut boot_row = |figure: String,
                        f: fn(&BootStats) -> &Vec<f64>,
                        (scale, unit, decimals): (f64, &'static str, usize),
                        note: &str| {
        let c = Summary::of(f(canto));
        let q = qs(f);
        report.row(Row {
            figure,
            canto: fmt_summary(c, scale, unit, decimals),
            qemu: qemu_cell(q, scale, unit, decimals),
            ratio: fmt_ratio(c, q),
            note: note.to_string(),
            ..Row::default()
        });
    };
    const MS: (f64, &str, usize) = (1e3, "ms", 0);
    const MIB: (f64, &str, usize) = (1.0, "MiB", 1);
    boot_row(
        format!("{}: spawn → first guest line", guest.name),
        |s| &s.first,
        MS,
        "",
    );
    if !guest.ready_label.is_empty() {
        boot_row(
            format!("{}: spawn → {}", guest.name, guest.ready_label),
            |s| &s.ready,
            MS,
            "",
        );
    }
    boot_row(
        format!("{}: spawn → exit", guest.name),
        |s| &s.exit,
        MS,
        guest.exit_note,
    );
    boot_row(
        format!("{}: peak RSS", guest.name),
        |s| &s.maxrss_mib,
        MIB,
        "wait4 ru_maxrss",
    );
    boot_row(
        format!("{}: VMM overhead (RSS − guest RAM RSS)", guest.name),
        |s| &s.overhead_mib,
        MIB,
        "last /proc/PID/smaps sample before exit",
    );
    if !canto.failures.is_empty() {
        report.row(Row {
            figure: format!("{}: failed Canto runs", guest.name),
            canto: canto.failures.len().to_string(),
            note: canto.failures[0].chars().take(200).collect(),
            ..Row::default()
        });
    }
    if let Some(q) = qemu.filter(|q| !q.failures.is_empty() && !q.ready.is_empty()) {
        report.row(Row {
            figure: format!("{}: failed QEMU runs", guest.name),
            qemu: q.failures.len().to_string(),
            note: q.failures[0].chars().take(200).collect(),
            ..Row::default()
        });
    }
}
