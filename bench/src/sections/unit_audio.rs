//! "audio path, unit level": the devices crate's `Sound` driven by the bench's fake driver
//! (audio.rs), with the null backend's real-time clock. Also writes pacing.svg and periods.csv.

use std::time::Duration;

use crate::audio::{self, SteadyResult};
use crate::config::Config;
use crate::report::{fmt_summary, Plot, Report, Row};
use crate::util::{percentile, Summary};

use super::{met, pct, progress};

pub fn run(cfg: &Config, report: &mut Report) {
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
    rows(report, cfg, &latency, &steady, clock_only, &throughput);
    write_plot(cfg, &steady);
}

fn rows(
    report: &mut Report,
    cfg: &Config,
    latency: &audio::LatencyResult,
    steady: &SteadyResult,
    clock_only: f64,
    throughput: &[(u32, Option<Summary>, Option<Summary>)],
) {
    report.section(
        "audio path, unit level (the devices crate's Sound, a fake driver on split queues in guest memory, the null backend's real-time clock; S16 stereo 48 kHz, 10 ms periods)",
    );
    let s = &steady.stats;
    let copies = s.tx_bytes_copied as f64 / s.tx_bytes_played.max(1) as f64;
    report.row(Row {
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
    report.row(Row {
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
    report.row(Row {
        figure: "reference: the null backend's period clock alone (a thread waking every 10 ms)".into(),
        canto: format!("{} of a core", pct(clock_only)),
        note: "the floor under the period thread's cost on this machine: 100 timed wake-ups per second, nothing else".into(),
        ..Row::default()
    });
    let l = &latency.latencies_periods;
    let lat_max = l.iter().cloned().fold(0.0, f64::max);
    report.row(Row {
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
    report.row(Row {
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
    report.row(Row {
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
        report.row(Row {
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
