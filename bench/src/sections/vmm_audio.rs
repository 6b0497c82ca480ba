//! "audio path in the VMM": one playback by the Linux guest (`canto.run=play`: aplay of
//! test.wav) in the real VMM with the null backend, read from the VMM's own lines at exit: the
//! `sound stats:` counters (key=value), the pacing line, and the period thread's CPU time.

use std::time::Duration;

use crate::audio;
use crate::config::Config;
use crate::kv;
use crate::report::{Report, Row};
use crate::vmm;

use super::guest::Guest;
use super::{linux_boot, met, pct, progress};

pub fn run(cfg: &Config, report: &mut Report) {
    // One playback in the real VMM: the device's counters and pacing line at exit.
    progress("canto Linux canto.run=play (backend=null), RUST_LOG=info");
    let boot = linux_boot::guest(cfg);
    let play = Guest {
        cmdline: boot.cmdline.replace("canto.run=boot", "canto.run=play"),
        ready: |l| l.contains("CANTO-READY") || l.contains("canto-init"),
        ..boot
    };
    let mut inv = play.canto(cfg, &[]);
    inv.env.push(("RUST_LOG".into(), "info".into()));
    inv.sample_threads = Some(Duration::from_millis(100));
    let r = vmm::run(&inv);
    report.section("audio path in the VMM: Linux guest plays test.wav (2 s, S16 stereo 48 kHz) with aplay, --sound backend=null");
    if !r.success() {
        report.note(format!("the Linux playback run failed: {}", r.failure()));
    }
    let stats = r.stderr.lines().find(|l| l.contains("sound stats:"));
    match stats {
        Some(line) => {
            let copied = kv::get::<u64>(line, "tx_bytes_copied").unwrap_or(0);
            let played = kv::get::<u64>(line, "tx_bytes_played").unwrap_or(0);
            let copies = copied as f64 / played.max(1) as f64;
            report.row(Row {
                figure: "TX bytes copied per PCM byte (VMM `sound stats:` line)".into(),
                canto: format!("{copies:.3} ({copied} copied / {played} played)"),
                target: format!("1 ({})", met(played > 0 && copied == played)),
                note: format!(
                    "underruns {}, silence bytes {}, messages {}",
                    kv::get::<u64>(line, "tx_underruns").unwrap_or(0),
                    kv::get::<u64>(line, "tx_silence_bytes").unwrap_or(0),
                    kv::get::<u64>(line, "tx_messages").unwrap_or(0)
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
                report.row(Row {
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
            report.skip(
                "VMM-level audio counters: no `sound stats:` line in canto's log at RUST_LOG=info",
            );
        }
    }
    if let Some(line) = r.stderr.lines().find(|l| l.contains("of guest audio in")) {
        let nums: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect();
        if let [.., audio_s, wall_s] = nums[..] {
            report.row(Row {
                figure: "VMM pacing line: guest audio played vs wall time from first write to drained".into(),
                canto: format!("{audio_s:.3} s in {wall_s:.3} s ({:+.2} %)", (wall_s - audio_s) / audio_s * 100.0),
                note: "the VMM's own line (period.rs PacingReport): it times from the first period's handoff, which comes one period after START, so it reads about one period short; a 2 s clip is too short for a 0.1 % verdict (the unit-level row is that)".into(),
                ..Row::default()
            });
        }
    }
    if r.lines.iter().any(|(_, l)| l.contains("underrun")) {
        report.note("aplay reported an underrun in the Linux playback run");
    }
}
