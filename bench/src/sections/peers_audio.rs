//! "audio against the peers": the same Linux guest plays the same clip (`canto.run=play`: aplay
//! of test.wav) on three implementations of virtio-snd, each into a sink its design allows:
//! Canto (`--sound backend=wav`), QEMU 10 `-M pc` + `virtio-sound-pci` (`-audiodev wav`), and
//! QEMU 10 + `vhost-user-snd-pci` with the vhost-device-sound daemon playing into a private
//! PipeWire's null sink, whose monitor pw-record writes to a WAV. Each figure comes from the
//! outside, the same way for all three (peers.rs): the sink's file read while it grows, the VMM's
//! and the daemon's threads from /proc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::Config;
use crate::peers::{
    self, chunk_alignment, exactness, wav_frames, Chunks, Exactness, Playback, PlaybackResult, Proc,
};
use crate::report::{Plot, Report, Row};

use super::{linux_boot, progress};

/// Frames per second of the clip (S16 stereo 48 kHz).
const RATE: f64 = 48_000.0;

/// One implementation's figures.
struct Figures {
    name: &'static str,
    exact: Option<Exactness>,
    chunks: Chunks,
    /// Whether frames before and after the clip are the VMM's (a WAV sink it writes) or the
    /// recorder's (a running sink recorded from before the VMM started).
    sink_is_vmm: bool,
    audio_s: f64,
    /// VMM threads that do not run the guest, plus the daemon: CPU s per s of audio.
    cpu_per_s: f64,
    vcpu_cpu_per_s: f64,
    switches_per_s: f64,
    switches_no_vcpu_per_s: f64,
    pacing_error: f64,
    /// The arrival curve: (s since the first sound, frames arrived − frames due).
    curve: Vec<(f64, f64)>,
}

fn figures(
    name: &'static str,
    sink_is_vmm: bool,
    clip: &[u32],
    r: &PlaybackResult,
    wav: &Path,
) -> Result<Figures, String> {
    let (Some((t0, f0)), Some((t1, f1))) = (r.first_sound, r.last_sound) else {
        return Err(format!(
            "no sound reached {}: {}",
            wav.display(),
            r.failure()
        ));
    };
    let audio_s = (f1 - f0) as f64 / RATE;
    if audio_s < 0.5 {
        return Err(format!(
            "only {audio_s:.2} s of sound reached the sink: {}",
            r.failure()
        ));
    }
    let (Some(a), Some(b)) = (r.sample_at(t0), r.sample_at(t1)) else {
        return Err("no samples".into());
    };
    let d = (b.vmm + b.daemon) - (a.vmm + a.daemon);
    let capture = wav_frames(wav);
    let curve = r
        .samples
        .iter()
        .filter(|s| s.at >= t0 && s.at <= t1 + Duration::from_millis(200))
        .map(|s| {
            let t = (s.at - t0).as_secs_f64();
            (
                t,
                (s.frames.saturating_sub(f0) as f64 - t * RATE) / RATE * 1e3,
            )
        })
        .collect();
    Ok(Figures {
        name,
        exact: capture.as_deref().and_then(|cap| exactness(clip, cap)),
        chunks: capture
            .as_deref()
            .map(|cap| chunk_alignment(clip, cap, 480))
            .unwrap_or_default(),
        sink_is_vmm,
        audio_s,
        cpu_per_s: d.cpu_s / audio_s,
        vcpu_cpu_per_s: d.vcpu_cpu_s / audio_s,
        switches_per_s: d.switches as f64 / audio_s,
        switches_no_vcpu_per_s: d.switches_no_vcpu as f64 / audio_s,
        pacing_error: pacing_error(r, t0, t1),
        curve,
    })
}

/// The least-squares slope of frames in the sink against time, from the first to the last sound:
/// (48000 ÷ slope) − 1, positive when the sink got the clip slower than real time. A fit, not
/// end points: a VMM that writes whole periods (or its writer's buffer) makes a staircase.
fn pacing_error(r: &PlaybackResult, t0: Duration, t1: Duration) -> f64 {
    let pts: Vec<(f64, f64)> = r
        .samples
        .iter()
        .filter(|s| s.at >= t0 && s.at <= t1)
        .map(|s| ((s.at - t0).as_secs_f64(), s.frames as f64))
        .collect();
    let n = pts.len() as f64;
    if n < 3.0 {
        return f64::NAN;
    }
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 || sxy <= 0.0 {
        return f64::NAN;
    }
    RATE / (sxy / sxx) - 1.0
}

fn qemu_has(qemu: &Path, device: &str) -> bool {
    Command::new(qemu)
        .args(["-device", "help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(device))
}

/// The QEMU command line both QEMU runs share: `-M pc` (SeaBIOS; the sound devices are PCI and
/// Canto's guest has no ACPI), the guest and its command line as Canto gives it.
fn qemu_args(cfg: &Config, cmdline: &str, memory: &[&str]) -> Vec<String> {
    let full = vmm::cmdline::build(cmdline, cfg.kvm_pvm);
    let mut args: Vec<String> = [
        "-M",
        "pc",
        "-name",
        "canto-bench,debug-threads=on",
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
        "256M",
        // A PIT tick lost while the host did not run the vCPU is dropped, not replayed: with
        // the default (delay) the interpreted guest fell behind for minutes here at the
        // virtio probe.
        "-global",
        "kvm-pit.lost_tick_policy=discard",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(memory.iter().map(|s| s.to_string()));
    args.extend([
        "-kernel".into(),
        cfg.root.join("target/guest/vmlinux").display().to_string(),
        "-initrd".into(),
        cfg.root
            .join("target/guest/initramfs.cpio")
            .display()
            .to_string(),
    ]);
    args.extend(["-append".into(), full]);
    args
}

fn vhost_device_sound(cfg: &Config) -> PathBuf {
    std::env::var_os("VHOST_DEVICE_SOUND_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.root.join("target/peers/bin/vhost-device-sound"))
}

/// Starts the private PipeWire (resources/bench/pipewire.sh); returns its environment.
fn start_pipewire(cfg: &Config, dir: &Path) -> Result<Vec<(String, String)>, String> {
    let out = Command::new("bash")
        .arg(cfg.root.join("resources/bench/pipewire.sh"))
        .args(["start".as_ref(), dir.as_os_str()])
        .output()
        .map_err(|e| format!("pipewire.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pipewire.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn stop_pipewire(cfg: &Config, dir: &Path) {
    let _ = Command::new("bash")
        .arg(cfg.root.join("resources/bench/pipewire.sh"))
        .args(["stop".as_ref(), dir.as_os_str()])
        .status();
}

pub fn run(cfg: &Config, report: &mut Report) {
    report.section(
        "audio against the peers: the Linux guest plays test.wav (2 s) with aplay on each implementation (one run each)",
    );
    let clip_path = cfg.root.join("target/guest/test.wav");
    let Some(clip) = wav_frames(&clip_path) else {
        report.skip(format!("peers audio: {} unreadable", clip_path.display()));
        return;
    };
    // Always the initramfs (the root-disk switch is for the boot rows): QEMU's -M pc here boots
    // the same files.
    let guest = super::guest::Guest {
        initramfs: Some(cfg.root.join("target/guest/initramfs.cpio")),
        disk: None,
        ..linux_boot::guest(cfg)
    };
    let cmdline = "canto.run=play";
    let timeout = Duration::from_secs(600);
    let every = Duration::from_millis(5);
    let mut done: Vec<Figures> = Vec::new();

    // Canto, WAV backend.
    let canto_wav = cfg.out.join("peer-canto.wav");
    let play = super::guest::Guest {
        cmdline: cmdline.into(),
        ..guest.clone()
    };
    let inv = play.canto(
        cfg,
        &[
            "--sound",
            &format!("backend=wav,path={}", canto_wav.display()),
        ],
    );
    let canto = Playback {
        label: "canto".into(),
        vmm: Proc::new(&inv.program, &inv.args),
        daemon: None,
        recorder: None,
        sink_wav: canto_wav.clone(),
        is_vcpu_thread: |n| n.starts_with("canto-vcpu"),
        timeout,
    };
    progress("peers: canto Linux canto.run=play --sound backend=wav");
    let r = peers::run(&canto, every);
    match figures("Canto (wav)", true, &clip, &r, &canto_wav) {
        Ok(f) => done.push(f),
        Err(e) => {
            report.note(format!("peers: the Canto playback failed: {e}"));
            return;
        }
    }

    // QEMU virtio-sound-pci, wav audiodev.
    if !cfg.qemu_enabled {
        report.skip("peers audio: QEMU is off (BENCH_NO_QEMU or not installed)");
    } else if !qemu_has(&cfg.qemu, "virtio-sound-pci") {
        report.skip(format!(
            "peers audio: {} has no virtio-sound-pci (QEMU >= 8.2; `resources/install-deps.sh bench` installs QEMU 10 from bookworm-backports)",
            cfg.qemu.display()
        ));
    } else {
        let qemu_wav = cfg.out.join("peer-qemu.wav");
        let mut args = qemu_args(cfg, cmdline, &[]);
        args.extend([
            "-audiodev".into(),
            // QEMU's audio layer resamples to the audiodev's rate (44.1 kHz by default).
            format!(
                "wav,id=snd0,path={},out.frequency=48000,out.channels=2,out.format=s16",
                qemu_wav.display()
            ),
            "-device".into(),
            // One output stream: the wav audiodev has no input.
            "virtio-sound-pci,audiodev=snd0,streams=1".into(),
        ]);
        let qemu = Playback {
            label: "qemu".into(),
            vmm: Proc::new(&cfg.qemu, &args),
            daemon: None,
            recorder: None,
            sink_wav: qemu_wav.clone(),
            is_vcpu_thread: |n| n.starts_with("CPU "),
            timeout,
        };
        progress("peers: qemu -M pc virtio-sound-pci -audiodev wav");
        let r = peers::run(&qemu, every);
        match figures("QEMU virtio-sound-pci (wav)", true, &clip, &r, &qemu_wav) {
            Ok(f) => done.push(f),
            Err(e) => report.note(format!(
                "peers: the QEMU virtio-sound-pci playback failed: {e}"
            )),
        }

        // QEMU vhost-user-snd-pci + vhost-device-sound into PipeWire.
        let daemon = vhost_device_sound(cfg);
        if !qemu_has(&cfg.qemu, "vhost-user-snd-pci") {
            report.skip("peers audio: QEMU has no vhost-user-snd-pci");
        } else if !daemon.is_file() {
            report.skip(format!(
                "peers audio: vhost-device-sound not found at {} (VHOST_DEVICE_SOUND_BIN; build: `cargo install --locked vhost-device-sound --version 0.3.0 --no-default-features --features pw-backend --root ~/.cache/canto/peers`, which `make bench` does)",
                daemon.display()
            ));
        } else {
            let pw_dir = cfg.out.join("pipewire");
            match start_pipewire(cfg, &pw_dir) {
                Err(e) => report.skip(format!("peers audio: vhost-device-sound: {e}")),
                Ok(env) => {
                    let socket = cfg.out.join("vhost-snd.sock");
                    let vhost_wav = cfg.out.join("peer-vhost.wav");
                    let mut args = qemu_args(
                        cfg,
                        cmdline,
                        &[
                            "-object",
                            "memory-backend-memfd,id=mem,size=256M,share=on",
                            "-machine",
                            "memory-backend=mem",
                        ],
                    );
                    args.extend([
                        "-chardev".into(),
                        format!("socket,id=vsnd,path={}", socket.display()),
                        // With EVENT_IDX the daemon 0.3.0 spins on the event queue and never
                        // serves TX here (docs/benchmarks.md).
                        "-device".into(),
                        "vhost-user-snd-pci,chardev=vsnd,event_idx=off".into(),
                    ]);
                    let mut d = Proc::new(
                        &daemon,
                        &[
                            "--socket".into(),
                            socket.display().to_string(),
                            "--backend".into(),
                            "pipewire".into(),
                        ],
                    );
                    d.env = env.clone();
                    let mut rec = Proc::new(
                        "pw-record",
                        &[
                            "--target".into(),
                            "canto-null".into(),
                            "-P".into(),
                            "stream.capture.sink=true".into(),
                            "--format".into(),
                            "s16".into(),
                            "--rate".into(),
                            "48000".into(),
                            "--channels".into(),
                            "2".into(),
                            vhost_wav.display().to_string(),
                        ],
                    );
                    rec.env = env;
                    let vhost = Playback {
                        label: "vhost".into(),
                        vmm: Proc::new(&cfg.qemu, &args),
                        daemon: Some((d, socket)),
                        recorder: Some(rec),
                        sink_wav: vhost_wav.clone(),
                        is_vcpu_thread: |n| n.starts_with("CPU "),
                        timeout,
                    };
                    progress("peers: qemu vhost-user-snd-pci + vhost-device-sound (PipeWire)");
                    let r = peers::run(&vhost, every);
                    stop_pipewire(cfg, &pw_dir);
                    match figures(
                        "QEMU vhost-user-snd-pci + vhost-device-sound (PipeWire)",
                        false,
                        &clip,
                        &r,
                        &vhost_wav,
                    ) {
                        Ok(f) => done.push(f),
                        Err(e) => report.note(format!(
                            "peers: the vhost-device-sound playback failed: {e}"
                        )),
                    }
                }
            }
        }
    }
    rows(report, &done);
    plot(cfg, &done);
}

fn exact_cell(f: &Figures) -> String {
    match f.exact {
        None => "clip not found in the sink".into(),
        Some(e) if f.sink_is_vmm => format!(
            "lost {} + {}, wrong {}, added {} + {}",
            e.lost_start, e.lost_end, e.wrong_inside, e.added_start, e.added_end
        ),
        Some(e) => format!(
            "lost {} + {}, wrong {}",
            e.lost_start, e.lost_end, e.wrong_inside
        ),
    }
}

fn rows(report: &mut Report, done: &[Figures]) {
    let Some((canto, peers)) = done.split_first() else {
        return;
    };
    let ratio = |c: f64, p: f64| {
        if c > 0.0 {
            format!("{:.2}×", p / c)
        } else {
            "—".into()
        }
    };
    let peer_names: Vec<&str> = peers.iter().map(|p| p.name).collect();
    let mut add = |figure: &str,
                   cell: &dyn Fn(&Figures) -> String,
                   value: Option<fn(&Figures) -> f64>,
                   note: &str| {
        if peers.is_empty() {
            report.row(Row {
                figure: figure.into(),
                canto: cell(canto),
                note: note.into(),
                ..Row::default()
            });
        }
        for p in peers {
            report.row(Row {
                figure: format!("{figure} — {}", p.name),
                canto: cell(canto),
                qemu: cell(p),
                ratio: value.map(|v| ratio(v(canto), v(p))).unwrap_or_default(),
                note: note.into(),
                ..Row::default()
            });
        }
    };
    add(
        "bit-exactness: clip frames lost at start + end, wrong inside, frames added before + after",
        &exact_cell,
        None,
        "the sink's WAV against test.wav (96000 frames), aligned on the clip's first frames; 'added' only where the VMM writes the file (the PipeWire monitor records from before the guest plays)",
    );
    add(
        "the clip in 10 ms chunks: found exactly and in order; frames inserted / dropped between them",
        &|f| {
            format!(
                "{} of {}; +{} / −{}",
                f.chunks.found, f.chunks.total, f.chunks.inserted, f.chunks.dropped
            )
        },
        None,
        "for a sink that holds no contiguous copy: each non-silent 480-frame chunk of test.wav looked for after the previous one",
    );
    add(
        "host CPU per second of playback (VMM without vCPU threads + daemon)",
        &|f| format!("{:.2} % of a core", f.cpu_per_s * 100.0),
        Some(|f| f.cpu_per_s),
        "utime+stime (schedstat) of every thread but the vCPU ones, from the first to the last non-silent frame at the sink; PipeWire's own server is the sink, not counted",
    );
    add(
        "vCPU threads' CPU per second of playback",
        &|f| format!("{:.1} % of a core", f.vcpu_cpu_per_s * 100.0),
        Some(|f| f.vcpu_cpu_per_s),
        "on kvm_pvm this is mostly the interpreted guest (aplay, the driver), for information",
    );
    add(
        "wake-ups per second of playback (all threads, VMM + daemon)",
        &|f| format!("{:.0} /s", f.switches_per_s),
        Some(|f| f.switches_per_s),
        "voluntary + involuntary context switches, /proc/PID/task/*/status",
    );
    add(
        "wake-ups per second without the vCPU threads",
        &|f| format!("{:.0} /s", f.switches_no_vcpu_per_s),
        Some(|f| f.switches_no_vcpu_per_s),
        "",
    );
    add(
        "pacing error over the clip (wall time from first to last sound frame vs the frames between)",
        &|f| format!("{:+.2} % ({:.2} s of audio)", f.pacing_error * 100.0, f.audio_s),
        None,
        "least-squares slope of the frames in the sink's file (polled every 5 ms) against time, from the first to the last sound: 48000 ÷ slope − 1 (+: slower than real time); one 2 s clip, so only large errors mean anything; the PipeWire sink records on its own clock, so there a late daemon shows as inserted frames instead",
    );
    report.row(Row {
        figure: "latency from a message's arrival to its first frame at the host device".into(),
        canto: "see the unit-level row".into(),
        qemu: "not measured".into(),
        note: format!(
            "needs per-message timestamps inside the device: only Canto's are reachable (unit level); not measurable from outside for {}",
            peer_names.join(", ")
        ),
        ..Row::default()
    });
}

fn plot(cfg: &Config, done: &[Figures]) {
    if done.is_empty() {
        return;
    }
    const COLORS: [&str; 3] = ["#d62728", "#1f77b4", "#2ca02c"];
    let plot = Plot {
        title: "The same 2 s clip on each implementation: frames in the sink minus frames due since its first sound",
        x_label: "time since the first non-silent frame reached the sink (s)",
        y_label: "ahead (+) / behind (−) the clip's clock (ms of audio)",
        series: done
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name, COLORS[i % COLORS.len()], 1.5, f.curve.clone()))
            .collect(),
    };
    let _ = std::fs::write(cfg.out.join("peers.svg"), plot.svg());
}
