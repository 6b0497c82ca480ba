//! `canto-bench`: the harness `make bench` runs. It prints one table and writes
//! target/bench/report.md, target/bench/pacing.svg and target/bench/periods.csv.
//!
//! Environment (all optional):
//! - `BENCH_QUICK=1`: boot and memory of the small guests only (pvh-hello, driver-guest); no
//!   Linux guest.
//! - `BENCH_NO_QEMU=1`, `BENCH_NO_LINUX=1`: skip QEMU, or the Linux guest.
//! - `BENCH_RUNS` (5): runs per VMM for the small guests; `BENCH_LINUX_RUNS` (3) for Linux.
//! - `BENCH_PACING_SECONDS` (20): the steady playback's length.
//! - `BENCH_QEMU_MACHINE` (microvm): QEMU's `-M`; `pc` also works (SeaBIOS adds seconds here).
//! - `CANTO_BIN`, `QEMU_BIN`, `BENCH_OUT` (target/bench), `CRITERION_HOME`
//!   (target/criterion).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use canto_bench::audio::{self, SteadyResult};
use canto_bench::report::{fmt_ratio, fmt_summary, Plot, Row, Table};
use canto_bench::util::{env_flag, env_u64, percentile, tsc_hz, Summary};
use canto_bench::vmm::{run, Invocation, RunResult};

struct Config {
    root: PathBuf,
    out: PathBuf,
    canto: PathBuf,
    qemu: PathBuf,
    qemu_machine: String,
    quick: bool,
    qemu_enabled: bool,
    linux_enabled: bool,
    runs: usize,
    linux_runs: usize,
    pacing_seconds: f64,
    kvm_pvm: bool,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

impl Config {
    fn from_env(skipped: &mut Vec<String>) -> Config {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("bench/ sits in the workspace")
            .to_path_buf();
        let out = std::env::var_os("BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/bench"));
        let canto = std::env::var_os("CANTO_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/canto"));
        let qemu_name =
            std::env::var("QEMU_BIN").unwrap_or_else(|_| "qemu-system-x86_64".to_string());
        let qemu = which(&qemu_name).unwrap_or_else(|| PathBuf::from(&qemu_name));
        let quick = env_flag("BENCH_QUICK");
        let mut qemu_enabled = !env_flag("BENCH_NO_QEMU");
        if env_flag("BENCH_NO_QEMU") {
            skipped.push("QEMU: BENCH_NO_QEMU is set".into());
        } else if !qemu.is_file() {
            qemu_enabled = false;
            skipped.push(format!(
                "QEMU: `{qemu_name}` not found (apt-get install qemu-system-x86)"
            ));
        }
        let mut linux_enabled = !quick && !env_flag("BENCH_NO_LINUX");
        if quick {
            skipped.push("Linux guest (boot, memory, playback): BENCH_QUICK=1".into());
        } else if env_flag("BENCH_NO_LINUX") {
            skipped.push("Linux guest (boot, memory, playback): BENCH_NO_LINUX is set".into());
        } else if !root.join("target/guest/vmlinux").is_file()
            || !root.join("target/guest/initramfs.cpio").is_file()
        {
            linux_enabled = false;
            skipped.push(
                "Linux guest: target/guest/vmlinux or initramfs.cpio missing (run `make guest`)"
                    .into(),
            );
        }
        Config {
            root,
            out,
            canto,
            qemu,
            qemu_machine: std::env::var("BENCH_QEMU_MACHINE").unwrap_or_else(|_| "microvm".into()),
            quick,
            qemu_enabled,
            linux_enabled,
            runs: env_u64("BENCH_RUNS", 5).max(1) as usize,
            linux_runs: env_u64("BENCH_LINUX_RUNS", 3).max(1) as usize,
            pacing_seconds: env_u64("BENCH_PACING_SECONDS", 20).max(2) as f64,
            kvm_pvm: vmm::cmdline::host_is_kvm_pvm(),
        }
    }
}

/// A guest both VMMs are asked to boot.
#[derive(Clone)]
struct Guest {
    name: &'static str,
    kernel: PathBuf,
    initramfs: Option<PathBuf>,
    cmdline: String,
    memory_mib: u64,
    first: fn(&str) -> bool,
    ready: fn(&str) -> bool,
    /// The ready line's name in the table; empty when it is the first line.
    ready_label: &'static str,
    exit_note: &'static str,
    timeout: Duration,
}

impl Guest {
    fn canto(&self, cfg: &Config, extra: &[&str]) -> Invocation {
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
    fn qemu(&self, cfg: &Config) -> Invocation {
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
struct BootStats {
    first: Vec<f64>,
    ready: Vec<f64>,
    exit: Vec<f64>,
    maxrss_mib: Vec<f64>,
    overhead_mib: Vec<f64>,
    guest_mib: Vec<f64>,
    failures: Vec<String>,
}

impl BootStats {
    fn add(&mut self, guest: &Guest, r: &RunResult) {
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

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// Runs the guest on Canto and QEMU alternately, `runs` times each, then as many runs each with
/// the memory map sampled every `mem_every` (unless `sample_all`, where every run samples it):
/// sampling a short run would delay it.
fn boot_compare(
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

fn boot_rows(table: &mut Table, guest: &Guest, canto: &BootStats, qemu: Option<&BootStats>) {
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
        table.row(Row {
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
        table.row(Row {
            figure: format!("{}: failed Canto runs", guest.name),
            canto: canto.failures.len().to_string(),
            note: canto.failures[0].chars().take(200).collect(),
            ..Row::default()
        });
    }
    if let Some(q) = qemu.filter(|q| !q.failures.is_empty() && !q.ready.is_empty()) {
        table.row(Row {
            figure: format!("{}: failed QEMU runs", guest.name),
            qemu: q.failures.len().to_string(),
            note: q.failures[0].chars().take(200).collect(),
            ..Row::default()
        });
    }
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

/// `point_estimate` of the median in a criterion estimates.json (nanoseconds).
fn criterion_median(home: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(home.join(id).join("new/estimates.json")).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let at = median.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = &median[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn git_rev(root: &Path) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-C",
            &root.display().to_string(),
            "describe",
            "--always",
            "--dirty",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".to_string(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `key: value` from the VMM's `sound stats: SoundStatsSnapshot { ... }` line.
fn stat_field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}: "))? + key.len() + 2;
    let rest = &line[at..];
    let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn main() {
    let started = Instant::now();
    let mut skipped = Vec::new();
    let cfg = Config::from_env(&mut skipped);
    if !cfg.canto.is_file() {
        eprintln!(
            "canto-bench: {} not found: build it first (`cargo build --release -p canto`, which \
             `make bench` does)",
            cfg.canto.display()
        );
        std::process::exit(2);
    }
    std::fs::create_dir_all(&cfg.out).expect("create the output directory");
    let mut table = Table::default();
    let mut notes: Vec<String> = Vec::new();

    // ---------------------------------------------------------------- audio, unit level
    progress("audio: latency (messages arriving at an empty queue)");
    let period_frames = 480; // 10 ms at 48 kHz
    let latency = audio::latency_just_in_time(period_frames, 200, 0x5eed);
    progress(&format!(
        "audio: steady playback, {} s (+3 s idle baseline)",
        cfg.pacing_seconds
    ));
    let steady = audio::steady_playback(period_frames, 4, cfg.pacing_seconds, 3.0);
    progress("audio: the period clock alone, 5 s (CPU reference)");
    let clock_only = audio::clock_only_cpu(period_frames, 5.0);
    progress("audio: unpaced TX throughput vs memcpy");
    let mut throughput = Vec::new();
    for period_bytes in [1920u32, 19200] {
        let (mut dev, mut cpy) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            dev.push(audio::unpaced_throughput(
                period_bytes,
                Duration::from_millis(700),
            ));
            cpy.push(audio::memcpy_throughput(
                period_bytes,
                Duration::from_millis(300),
            ));
        }
        throughput.push((period_bytes, Summary::of(&dev), Summary::of(&cpy)));
    }
    audio_rows(&mut table, &cfg, &latency, &steady, clock_only, &throughput);
    write_plot(&cfg, &steady);

    // ---------------------------------------------------------------- micro-benchmarks
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.root.join("target/criterion"));
    if env_flag("BENCH_NO_MICRO") {
        skipped.push("micro-benchmarks: BENCH_NO_MICRO is set".into());
    } else {
        micro_rows(&mut table, &home, &mut skipped);
    }

    // ---------------------------------------------------------------- small guests
    let hello = cfg.out.join("pvh-hello.elf");
    if hello.is_file() {
        let guest = Guest {
            name: "pvh-hello",
            kernel: hello,
            initramfs: None,
            cmdline: String::new(),
            memory_mib: 64,
            first: |l| l.contains("BENCH-HELLO"),
            ready: |l| l.contains("BENCH-HELLO"),
            ready_label: "",
            exit_note: "i8042 reset on Canto; on QEMU microvm (no i8042) the triple fault after it",
            timeout: Duration::from_secs(60),
        };
        table.section(&format!(
            "boot and memory: pvh-hello (one serial line, then reset; 64 MiB; {} runs each; \
             QEMU -M {})",
            cfg.runs, cfg.qemu_machine
        ));
        let (c, q) = boot_compare(
            &cfg,
            &guest,
            cfg.runs,
            cfg.qemu_enabled,
            Duration::from_millis(2),
            false,
        );
        boot_rows(&mut table, &guest, &c, q.as_ref());
    } else {
        skipped.push(format!(
            "pvh-hello: {} missing (`make bench` builds it with resources/bench/build-pvh-hello.sh)",
            hello.display()
        ));
    }

    let dg = cfg.root.join("tests/driver-guest/build/driver-guest.elf");
    if dg.is_file() {
        driver_guest(&cfg, &dg, &mut table, &mut skipped, &mut notes);
    } else {
        skipped.push(format!(
            "driver-guest: {} missing (`make -C tests/driver-guest`)",
            dg.display()
        ));
    }

    // ---------------------------------------------------------------- Linux guest
    if cfg.linux_enabled {
        linux(&cfg, &mut table, &mut skipped, &mut notes);
    }

    // ---------------------------------------------------------------- report
    let md_table = table.markdown();
    println!("\n{md_table}");
    if !skipped.is_empty() {
        println!("Skipped:");
        for s in &skipped {
            println!("- {s}");
        }
    }
    for n in &notes {
        println!("Note: {n}");
    }
    let mut report = String::new();
    report.push_str("# Canto benchmark report\n\n");
    report.push_str(&format!(
        "- host: {} ({} CPUs), kernel {}, /dev/kvm {}\n- Canto {} ({}); QEMU: {}\n- settings: \
         BENCH_RUNS={} BENCH_LINUX_RUNS={} BENCH_PACING_SECONDS={} BENCH_QEMU_MACHINE={}{}\n- \
         wall time of the harness: {:.0} s\n\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        if cfg.kvm_pvm {
            "is kvm_pvm (software KVM: guest kernel code is interpreted)"
        } else {
            "is hardware KVM"
        },
        git_rev(&cfg.root),
        cfg.canto.display(),
        if cfg.qemu_enabled {
            qemu_version(&cfg.qemu)
        } else {
            "not run".into()
        },
        cfg.runs,
        cfg.linux_runs,
        cfg.pacing_seconds,
        cfg.qemu_machine,
        if cfg.quick { " BENCH_QUICK=1" } else { "" },
        started.elapsed().as_secs_f64()
    ));
    report.push_str(&md_table);
    report.push_str("\nTimes are medians (min–max, n runs) measured in this one run; ratios are QEMU ÷ Canto of the medians (above 1: Canto is faster or smaller). See docs/benchmarks.md for what each figure means.\n\n![per-period times](pacing.svg)\n");
    if !skipped.is_empty() {
        report.push_str("\n## Skipped\n\n");
        for s in &skipped {
            report.push_str(&format!("- {s}\n"));
        }
    }
    if !notes.is_empty() {
        report.push_str("\n## Notes\n\n");
        for n in &notes {
            report.push_str(&format!("- {n}\n"));
        }
    }
    let path = cfg.out.join("report.md");
    std::fs::write(&path, report).expect("write the report");
    println!(
        "\nWrote {}, {} and {} in {:.0} s.",
        path.display(),
        cfg.out.join("pacing.svg").display(),
        cfg.out.join("periods.csv").display(),
        started.elapsed().as_secs_f64()
    );
}

fn qemu_version(qemu: &Path) -> String {
    std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|s| s.to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn audio_rows(
    table: &mut Table,
    cfg: &Config,
    latency: &audio::LatencyResult,
    steady: &SteadyResult,
    clock_only: f64,
    throughput: &[(u32, Option<Summary>, Option<Summary>)],
) {
    table.section(
        "audio path, unit level (the devices crate's Sound, a fake driver on split queues in guest memory, the null backend's real-time clock; S16 stereo 48 kHz, 10 ms periods)",
    );
    let s = &steady.stats;
    let copies = s.tx_bytes_copied as f64 / s.tx_bytes_played.max(1) as f64;
    table.row(Row {
        figure: "TX bytes copied per PCM byte".into(),
        canto: format!(
            "{copies:.3} ({} copied / {} played)",
            s.tx_bytes_copied, s.tx_bytes_played
        ),
        target: format!("1 ({})", met((copies - 1.0).abs() < 1e-9)),
        note: format!(
            "device counters over the {:.0} s playback; backend received {} guest bytes of {} sent",
            cfg.pacing_seconds, steady.pcm_bytes_received, steady.pcm_bytes_sent
        ),
        ..Row::default()
    });
    let cpu = steady.cpu_fraction();
    table.row(Row {
        figure: "host CPU per second of playback (device threads)".into(),
        canto: format!(
            "{} of a core (gross {}: period thread {}, event loop {}; idle baseline {})",
            pct(cpu),
            pct(steady.gross_cpu_fraction()),
            pct(steady.period_thread_cpu.as_secs_f64() / steady.audio_seconds().max(1e-9)),
            pct(
                steady.device_cpu.saturating_sub(steady.period_thread_cpu).as_secs_f64()
                    / steady.audio_seconds().max(1e-9)
            ),
            pct(steady.idle_cpu_per_second)
        ),
        ratio: format!(
            "period thread ÷ clock alone: {:.1}×",
            steady.period_thread_cpu.as_secs_f64() / steady.audio_seconds().max(1e-9) / clock_only
        ),
        target: format!("≤ 0.5 % ({})", met(cpu <= 0.005)),
        note: format!(
            "event-loop + period thread run time (schedstat) over {:.1} s of audio, minus the idle rate",
            steady.audio_seconds()
        ),
        ..Row::default()
    });
    table.row(Row {
        figure: "reference: the null backend's period clock alone (a thread waking every 10 ms)".into(),
        canto: format!("{} of a core", pct(clock_only)),
        note: "the floor under the period thread's cost on this machine: 100 timed wake-ups per second, nothing else".into(),
        ..Row::default()
    });
    let l = &latency.latencies_periods;
    let lat_max = l.iter().cloned().fold(0.0, f64::max);
    table.row(Row {
        figure: "latency: message arrival at txq → its first frame written to the backend".into(),
        canto: format!(
            "median {:.2}, p95 {:.2}, max {:.2} periods",
            percentile(l, 50.0),
            percentile(l, 95.0),
            lat_max
        ),
        target: format!("≤ 1 period ({})", met(percentile(l, 95.0) <= 1.0)),
        note: format!(
            "{} messages arriving at an empty stream queue at random phase; {} never seen, {} underruns",
            l.len(),
            latency.missing,
            latency.underruns
        ),
        ..Row::default()
    });
    let period = steady.period;
    let backend_err = SteadyResult::pacing_error(&steady.handoffs(), period);
    let guest_err = SteadyResult::pacing_error(&steady.completion_points(), period);
    let worst = backend_err
        .unwrap_or(f64::NAN)
        .abs()
        .max(guest_err.unwrap_or(f64::NAN).abs());
    table.row(Row {
        figure: format!(
            "pacing error over {:.0} s: (wall − audio time) ÷ audio time",
            cfg.pacing_seconds
        ),
        canto: format!(
            "backend handoffs {}, completions {}",
            backend_err.map_or("—".into(), |e| format!("{:+.4} %", e * 100.0)),
            guest_err.map_or("—".into(), |e| format!("{:+.4} %", e * 100.0))
        ),
        target: format!("≤ 0.1 % ({})", met(worst <= 0.001)),
        note: format!(
            "{} periods; {} underruns, {} silence bytes, {} non-OK statuses; 60 s with BENCH_PACING_SECONDS=60",
            steady.records.len(),
            s.tx_underruns,
            s.tx_silence_bytes,
            steady.bad_status
        ),
        ..Row::default()
    });
    let intervals: Vec<f64> = steady
        .handoffs()
        .windows(2)
        .map(|w| (w[1].1.duration_since(w[0].1).as_secs_f64() - period.as_secs_f64()).abs() * 1e3)
        .collect();
    table.row(Row {
        figure: "period interval jitter: each handoff interval − 10 ms, absolute".into(),
        canto: format!(
            "median {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            percentile(&intervals, 50.0),
            percentile(&intervals, 99.0),
            intervals.iter().cloned().fold(0.0, f64::max)
        ),
        note: "plotted in pacing.svg (deviation from the nominal schedule)".into(),
        ..Row::default()
    });
    for (bytes, dev, cpy) in throughput {
        let ratio = match (dev, cpy) {
            (Some(d), Some(c)) if c.median > 0.0 => format!("{:.3} of memcpy", d.median / c.median),
            _ => "—".into(),
        };
        table.row(Row {
            figure: format!(
                "TX throughput, unpaced backend, {} B periods ({} ms)",
                bytes,
                bytes / 192
            ),
            canto: format!(
                "{} = {:.0}× real time",
                fmt_summary(*dev, 1.0 / (1 << 20) as f64, "MiB/s", 1),
                dev.map_or(0.0, |d| d.median / audio::BYTES_PER_SECOND as f64)
            ),
            ratio,
            note: format!(
                "memcpy of the same pieces: {}; 3 alternating rounds",
                fmt_summary(*cpy, 1.0 / (1 << 30) as f64, "GiB/s", 2)
            ),
            ..Row::default()
        });
    }
}

fn write_plot(cfg: &Config, steady: &SteadyResult) {
    let handoffs = steady.deviations_ms(&steady.handoffs());
    let completions = steady.deviations_ms(&steady.completion_points());
    let plot = Plot {
        title: &format!(
            "Per-period times of a {:.0} s playback (10 ms periods, null backend): deviation from the nominal schedule",
            cfg.pacing_seconds
        ),
        x_label: "time since the first period (s)",
        y_label: "deviation (ms)",
        series: vec![
            (
                "completion interrupt (the guest's period elapsed)",
                "#8ab6e0",
                3.0,
                completions.clone(),
            ),
            ("period handed to the backend", "#d62728", 1.0, handoffs.clone()),
        ],
    };
    let _ = std::fs::write(cfg.out.join("pacing.svg"), plot.svg());
    let mut csv = String::from("period,handoff_s,handoff_dev_ms,completion_s,completion_dev_ms\n");
    for k in 0..handoffs.len().max(completions.len()) {
        let h = handoffs.get(k);
        let c = completions.get(k);
        csv.push_str(&format!(
            "{k},{},{},{},{}\n",
            h.map_or(String::new(), |v| format!("{:.6}", v.0)),
            h.map_or(String::new(), |v| format!("{:.4}", v.1)),
            c.map_or(String::new(), |v| format!("{:.6}", v.0)),
            c.map_or(String::new(), |v| format!("{:.4}", v.1)),
        ));
    }
    let _ = std::fs::write(cfg.out.join("periods.csv"), csv);
}

fn micro_rows(table: &mut Table, home: &Path, skipped: &mut Vec<String>) {
    let ids = [
        (
            "control/pcm_info",
            "PCM_INFO request (1 stream): kick → event loop → reply in the used ring",
        ),
        (
            "control/set_params",
            "SET_PARAMS request: kick → event loop → reply in the used ring",
        ),
        (
            "parse/set_params_decode",
            "SetParams::decode alone (24 bytes)",
        ),
        (
            "tx/period_1920B",
            "TX step per 10 ms period (1920 B), unpaced backend, amortized",
        ),
        ("tx/memcpy_1920B", "memcpy of 1920 B (reference)"),
    ];
    let found: Vec<(&str, &str, Option<f64>)> = ids
        .iter()
        .map(|(id, what)| (*id, *what, criterion_median(home, id)))
        .collect();
    if found.iter().all(|f| f.2.is_none()) {
        skipped.push(format!(
            "micro-benchmarks: no criterion results under {} (run `cargo bench -p canto-bench --bench micro`, as `make bench` does)",
            home.display()
        ));
        return;
    }
    table.section(
        "micro-benchmarks (criterion medians, `cargo bench -p canto-bench --bench micro`)",
    );
    let memcpy = found[4].2;
    for (id, what, ns) in &found {
        let ratio = match (*id, ns, memcpy) {
            ("tx/period_1920B", Some(t), Some(m)) if *t > 0.0 => {
                format!("memcpy ÷ step: {:.3}", m / t)
            }
            _ => String::new(),
        };
        table.row(Row {
            figure: what.to_string(),
            canto: ns.map_or("—".into(), |v| {
                if v >= 1e4 {
                    format!("{:.2} µs", v / 1e3)
                } else {
                    format!("{v:.0} ns")
                }
            }),
            ratio,
            note: format!("`{id}`"),
            ..Row::default()
        });
    }
}

fn driver_guest(
    cfg: &Config,
    elf: &Path,
    table: &mut Table,
    skipped: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let guest = Guest {
        name: "driver-guest",
        kernel: elf.to_path_buf(),
        initramfs: None,
        cmdline: "test=hello".into(),
        memory_mib: 64,
        first: |l| l.starts_with("DG "),
        ready: |l| l.starts_with("DG PASS"),
        ready_label: "DG PASS",
        exit_note: "",
        timeout: Duration::from_secs(60),
    };
    // QEMU's -kernel needs a PVH note (or a bzImage): try once, and say why when it fails.
    let mut qemu = cfg.qemu_enabled;
    if qemu {
        let r = run(&guest.qemu(cfg));
        if !r.success() || r.first(guest.ready).is_none() {
            qemu = false;
            let why = r
                .stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no DG PASS line")
                .to_string();
            skipped.push(format!(
                "QEMU on the driver-guest: QEMU cannot boot it ({why}); the driver-guest is an ELF \
                 without a PVH note, started through the Linux 64-bit boot protocol, which QEMU's \
                 -kernel does not offer for ELF files. pvh-hello is the small guest both boot"
            ));
        }
    }
    table.section(&format!(
        "boot and memory: driver-guest test=hello (64 MiB; {} runs)",
        cfg.runs
    ));
    let (c, q) = boot_compare(cfg, &guest, cfg.runs, qemu, Duration::from_millis(2), false);
    boot_rows(table, &guest, &c, q.as_ref());

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
        let r = run(&rtt.canto(cfg, &[]));
        match r.find_line(|l| l.starts_with("DG RTT") && l.contains("median_cycles=")) {
            Some(_) => {
                let field = |key: &str| {
                    r.lines
                        .iter()
                        .filter(|(_, l)| l.starts_with("DG RTT"))
                        .flat_map(|(_, l)| l.split_whitespace())
                        .find_map(|w| w.strip_prefix(key))
                        .and_then(|v| v.parse::<f64>().ok())
                };
                if let Some(c) = field("median_cycles=") {
                    cycles.push(c);
                }
                if let Some(ns) = field("median_ns=") {
                    rtt_ns.push(ns);
                }
            }
            None => notes.push(format!(
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
        table.row(Row {
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

fn linux(cfg: &Config, table: &mut Table, skipped: &mut Vec<String>, notes: &mut Vec<String>) {
    let guest = Guest {
        name: "Linux",
        kernel: cfg.root.join("target/guest/vmlinux"),
        initramfs: Some(cfg.root.join("target/guest/initramfs.cpio")),
        cmdline: "canto.run=boot".into(),
        memory_mib: 256,
        first: |l| l.contains("Linux version"),
        ready: |l| l.contains("CANTO-READY"),
        ready_label: "CANTO-READY",
        exit_note: "not like for like with QEMU microvm: it has no i8042, so the kernel's reboot=k first times out (~19 s, interpreted) before its triple fault",
        timeout: Duration::from_secs(240),
    };
    table.section(&format!(
        "boot and memory: Linux 6.12 guest, canto.run=boot (256 MiB; {} runs each, 35-55 s per run here; QEMU -M {})",
        cfg.linux_runs, cfg.qemu_machine
    ));
    let (c, q) = boot_compare(
        cfg,
        &guest,
        cfg.linux_runs,
        cfg.qemu_enabled,
        Duration::from_millis(250),
        true,
    );
    boot_rows(table, &guest, &c, q.as_ref());

    // One playback in the real VMM: the device's counters and pacing line at exit.
    progress("canto Linux canto.run=play (backend=null), RUST_LOG=info");
    let play = Guest {
        cmdline: "canto.run=play".into(),
        ready: |l| l.contains("CANTO-READY") || l.contains("canto-init"),
        ..guest.clone()
    };
    let mut inv = play.canto(cfg, &[]);
    inv.env.push(("RUST_LOG".into(), "info".into()));
    inv.sample_threads = Some(Duration::from_millis(100));
    let r = run(&inv);
    table.section("audio path in the VMM: Linux guest plays test.wav (2 s, S16 stereo 48 kHz) with aplay, --sound backend=null");
    if !r.success() {
        notes.push(format!("the Linux playback run failed: {}", r.failure()));
    }
    let stats = r.stderr.lines().find(|l| l.contains("sound stats:"));
    match stats {
        Some(line) => {
            let copied = stat_field(line, "tx_bytes_copied").unwrap_or(0);
            let played = stat_field(line, "tx_bytes_played").unwrap_or(0);
            let copies = copied as f64 / played.max(1) as f64;
            table.row(Row {
                figure: "TX bytes copied per PCM byte (VMM `sound stats:` line)".into(),
                canto: format!("{copies:.3} ({copied} copied / {played} played)"),
                target: format!("1 ({})", met(played > 0 && copied == played)),
                note: format!(
                    "underruns {}, silence bytes {}, messages {}",
                    stat_field(line, "tx_underruns").unwrap_or(0),
                    stat_field(line, "tx_silence_bytes").unwrap_or(0),
                    stat_field(line, "tx_messages").unwrap_or(0)
                ),
                ..Row::default()
            });
            let audio_s = played as f64 / audio::BYTES_PER_SECOND as f64;
            let snd: Duration = r
                .thread_cpu
                .iter()
                .filter(|(n, _)| n.starts_with("snd-out"))
                .map(|(_, c)| *c)
                .sum();
            if audio_s > 0.0 && !snd.is_zero() {
                table.row(Row {
                    figure: "period thread CPU per second of playback (in the VMM)".into(),
                    canto: format!("{} of a core", pct(snd.as_secs_f64() / audio_s)),
                    target: format!("≤ 0.5 % ({})", met(snd.as_secs_f64() / audio_s <= 0.005)),
                    note: format!(
                        "snd-out0 run time sampled every 100 ms from /proc ({:.1} ms over {audio_s:.2} s); the event-loop share is not separable from the guest's other exits",
                        snd.as_secs_f64() * 1e3
                    ),
                    ..Row::default()
                });
            }
        }
        None => {
            skipped.push(
                "VMM-level audio counters: no `sound stats:` line in canto's log at RUST_LOG=info"
                    .into(),
            );
        }
    }
    if let Some(line) = r.stderr.lines().find(|l| l.contains("of guest audio in")) {
        let nums: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect();
        if let [.., audio_s, wall_s] = nums[..] {
            table.row(Row {
                figure: "VMM pacing line: guest audio played vs wall time from first write to drained".into(),
                canto: format!("{audio_s:.3} s in {wall_s:.3} s ({:+.2} %)", (wall_s - audio_s) / audio_s * 100.0),
                note: "the VMM's own line (period.rs PacingReport): it times from the first period's handoff, which comes one period after START, so it reads about one period short; a 2 s clip is too short for a 0.1 % verdict (the unit-level row is that)".into(),
                ..Row::default()
            });
        }
    }
    if r.lines.iter().any(|(_, l)| l.contains("underrun")) {
        notes.push("aplay reported an underrun in the Linux playback run".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_vmm_stats_line() {
        let line = "[2026-11-24T10:00:00.000Z INFO  vmm] sound stats: SoundStatsSnapshot { \
                    tx_bytes_copied: 384000, tx_bytes_played: 384000, tx_silence_bytes: 0, \
                    tx_underruns: 2, tx_messages: 50 }";
        assert_eq!(stat_field(line, "tx_bytes_copied"), Some(384000));
        assert_eq!(stat_field(line, "tx_underruns"), Some(2));
        assert_eq!(stat_field(line, "tx_messages"), Some(50));
        assert_eq!(stat_field(line, "rx_overruns"), None);
    }

    #[test]
    fn reads_criterion_medians() {
        let dir = std::env::temp_dir().join(format!("canto-bench-{}", std::process::id()));
        let at = dir.join("g/b/new");
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(
            at.join("estimates.json"),
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.0,"standard_error":0.1},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1}}"#,
        )
        .unwrap();
        assert_eq!(criterion_median(&dir, "g/b"), Some(1.5));
        assert_eq!(criterion_median(&dir, "g/none"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
