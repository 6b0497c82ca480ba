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
    /// A read-only root disk (virtio-blk), e.g. BENCH_LINUX_ROOTFS.
    pub disk: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub first: fn(&str) -> bool,
    pub ready: fn(&str) -> bool,
    /// The ready line's name in the table; empty when it is the first line.
    pub ready_label: &'static str,
    /// The kernel's line as it starts init (the Linux guest: `Run /init as init process`), for
    /// the boot breakdown; None: no breakdown.
    pub init: Option<fn(&str) -> bool>,
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
        if let Some(disk) = &self.disk {
            args.extend([
                "--disk".to_string(),
                format!("path={},readonly=on", disk.display()),
            ]);
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
            stop_when_file: None,
            ended_by_guest_line: None,
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
        if cfg.qemu_machine.starts_with("microvm") {
            // QEMU 10's microvm defaults to SeaBIOS, which takes seconds here and hangs at the
            // guest's reset (an int3 kvm_pvm cannot run); qboot (7.2's default) boots the PVH
            // entry at once.
            args.extend(["-bios".to_string(), "qboot.rom".to_string()]);
        }
        args.extend(["-kernel".to_string(), self.kernel.display().to_string()]);
        if let Some(initramfs) = &self.initramfs {
            args.extend(["-initrd".to_string(), initramfs.display().to_string()]);
        }
        if let Some(disk) = &self.disk {
            let device = if cfg.qemu_machine.starts_with("microvm") {
                "virtio-blk-device"
            } else {
                "virtio-blk-pci"
            };
            args.extend([
                "-drive".to_string(),
                format!(
                    "id=root,file={},format=raw,if=none,readonly=on",
                    disk.display()
                ),
                "-device".to_string(),
                format!("{device},drive=root"),
            ]);
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
            stop_when_file: None,
            ended_by_guest_line: None,
        }
    }
}

/// A further VMM to compare, named by an environment variable: `FIRECRACKER_BIN`, `CH_BIN`.
#[derive(Clone)]
pub struct OtherVmm {
    pub name: &'static str,
    pub program: PathBuf,
    pub cloud_hypervisor: bool,
}

/// The VMMs the environment names; what is not set goes to the skipped list.
pub fn other_vmms(report: &mut Report) -> Vec<OtherVmm> {
    let mut out = Vec::new();
    for (var, name, ch) in [
        ("FIRECRACKER_BIN", "Firecracker", false),
        ("CH_BIN", "Cloud Hypervisor", true),
    ] {
        match std::env::var_os(var).map(PathBuf::from) {
            Some(p) if p.is_file() => out.push(OtherVmm {
                name,
                program: p,
                cloud_hypervisor: ch,
            }),
            Some(p) => report.skip(format!(
                "{name} column: {var}={} is not a file",
                p.display()
            )),
            None => report.skip(format!(
                "{name} column: {var} is not set (it is in no package registry: point {var} at a release binary)"
            )),
        }
    }
    out
}

impl Guest {
    /// Another VMM with the same kernel, initramfs, memory and full command line. Firecracker:
    /// `--no-api --config-file`, serial on stdout, ends on the i8042 reset. Cloud Hypervisor:
    /// `--serial tty`, stopped at its `rebooting` event (its event monitor's file).
    pub fn other(&self, cfg: &Config, vmm: &OtherVmm) -> Invocation {
        let full = vmm::cmdline::build(&self.cmdline, cfg.kvm_pvm);
        let tag = format!(
            "{}-{}",
            vmm.name.to_lowercase().replace(' ', "-"),
            self.name.to_lowercase()
        );
        let mut stop_when_file = None;
        let args = if vmm.cloud_hypervisor {
            let events = cfg.out.join(format!("{tag}.events"));
            let _ = std::fs::remove_file(&events);
            let mut args: Vec<String> = vec![
                "--kernel".into(),
                self.kernel.display().to_string(),
                "--cmdline".into(),
                full,
                "--memory".into(),
                format!("size={}M", self.memory_mib),
                "--cpus".into(),
                "boot=1".into(),
                "--serial".into(),
                "tty".into(),
                "--console".into(),
                "off".into(),
                "--event-monitor".into(),
                format!("path={}", events.display()),
            ];
            if let Some(i) = &self.initramfs {
                args.extend(["--initramfs".into(), i.display().to_string()]);
            }
            if let Some(d) = &self.disk {
                args.extend(["--disk".into(), format!("path={},readonly=on", d.display())]);
            }
            stop_when_file = Some((events, "rebooting"));
            args
        } else {
            let config = cfg.out.join(format!("{tag}.json"));
            let initrd = self
                .initramfs
                .as_ref()
                .map(|i| format!(r#", "initrd_path": "{}""#, i.display()))
                .unwrap_or_default();
            let drives = self
                .disk
                .as_ref()
                .map(|d| {
                    format!(
                        r#"{{"drive_id": "root", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#,
                        d.display()
                    )
                })
                .unwrap_or_default();
            let json = format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "{}"{initrd}}}, "drives": [{drives}], "machine-config": {{"vcpu_count": 1, "mem_size_mib": {}}}}}"#,
                self.kernel.display(),
                full.replace('\\', "\\\\").replace('"', "\\\""),
                self.memory_mib
            );
            let _ = std::fs::write(&config, json);
            vec![
                "--no-api".into(),
                "--config-file".into(),
                config.display().to_string(),
                "--level".into(),
                "Error".into(),
            ]
        };
        Invocation {
            label: format!("{} {}", vmm.name, self.name),
            program: vmm.program.clone(),
            args,
            env: Vec::new(),
            timeout: self.timeout,
            sample_memory: None,
            sample_threads: None,
            guest_bytes: self.memory_mib << 20,
            stop_when_file,
            ended_by_guest_line: (!vmm.cloud_hypervisor)
                .then_some("Unexpected exit reason on vcpu run: Shutdown"),
        }
    }
}

/// Which figure of a `BootStats`, and how to show it (scale, unit, decimals).
type Figure = fn(&BootStats) -> &Vec<f64>;
type Unit = (f64, &'static str, usize);

/// Runs each other VMM `runs` times on the guest (after Canto's and QEMU's runs, in the same
/// harness run), memory sampled in every run, and adds its rows against Canto's.
pub fn other_rows(
    cfg: &Config,
    report: &mut Report,
    guest: &Guest,
    canto: &BootStats,
    others: &[OtherVmm],
    runs: usize,
    mem_every: Duration,
) {
    for other in others {
        let mut stats = BootStats::default();
        for i in 0..runs {
            let mut inv = guest.other(cfg, other);
            inv.sample_memory = Some(mem_every);
            progress(&format!("{} run {}/{runs}", inv.label, i + 1));
            stats.add(guest, &run(&inv));
        }
        let figures: [(&str, Figure, Unit); 4] = [
            ("spawn → first guest line", |s| &s.first, (1e3, "ms", 0)),
            ("spawn → exit", |s| &s.exit, (1e3, "ms", 0)),
            ("peak RSS", |s| &s.maxrss_mib, (1.0, "MiB", 1)),
            (
                "VMM overhead (RSS − guest RAM RSS)",
                |s| &s.overhead_mib,
                (1.0, "MiB", 1),
            ),
        ];
        for (figure, f, (scale, unit, d)) in figures {
            let c = Summary::of(f(canto));
            let o = Summary::of(f(&stats));
            report.row(Row {
                figure: format!("{}: {figure} — {}", guest.name, other.name),
                canto: fmt_summary(c, scale, unit, d),
                qemu: if stats.ready.is_empty() {
                    format!(
                        "failed: {}",
                        stats
                            .failures
                            .first()
                            .map(|f| f.chars().take(160).collect::<String>())
                            .unwrap_or_default()
                    )
                } else {
                    fmt_summary(o, scale, unit, d)
                },
                ratio: fmt_ratio(c, o),
                note: format!(
                    "{} in the peer column; its ratio is {} ÷ Canto",
                    other.name, other.name
                ),
                ..Row::default()
            });
        }
        if !stats.failures.is_empty() && !stats.ready.is_empty() {
            report.row(Row {
                figure: format!("{}: failed {} runs", guest.name, other.name),
                qemu: format!("{} of {runs}", stats.failures.len()),
                note: stats.failures[0].chars().take(200).collect(),
                ..Row::default()
            });
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
    /// Breakdown (Guest::init): first line → init starts, init starts → ready.
    pub first_to_init: Vec<f64>,
    pub init_to_ready: Vec<f64>,
    pub failures: Vec<String>,
}

impl BootStats {
    pub(super) fn add(&mut self, guest: &Guest, r: &RunResult) {
        let ready = r.first(guest.ready);
        if !r.success() || ready.is_none() {
            self.failures.push(r.failure());
            return;
        }
        let first = r.first(guest.first);
        if let Some(t) = first {
            self.first.push(t.as_secs_f64());
        }
        if let (Some(f), Some(i), Some(ready)) = (first, guest.init.and_then(|p| r.first(p)), ready)
        {
            self.first_to_init.push(i.saturating_sub(f).as_secs_f64());
            self.init_to_ready
                .push(ready.saturating_sub(i).as_secs_f64());
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
    if guest.init.is_some() {
        boot_row(
            format!("{}: breakdown: first line → kernel runs /init", guest.name),
            |s| &s.first_to_init,
            MS,
            "from the serial lines' arrival times: `Linux version` (printed when the serial console comes up, so spawn → first line is VMM setup + early kernel) to `Run /init as init process`",
        );
        boot_row(
            format!(
                "{}: breakdown: /init → first command ({})",
                guest.name, guest.ready_label
            ),
            |s| &s.init_to_ready,
            MS,
            "the initramfs's /init (busybox sh) mounting and running its run script; the VMM's own setup is the pvh-hello spawn → first line row",
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
        "the VMM's own ru_maxrss, reported by GNU time (bench/src/vmm.rs)",
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
