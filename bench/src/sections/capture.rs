//! "capture, device level": the devices crate's `Sound` with input streams, driven by the
//! shared fake driver (`canto_devices::virtio::test_utils::SoundRig`, its event loop on a thread
//! of its own as in the VMM) that records like the Linux driver: four one-period RX messages
//! queued per stream, one re-queued as each comes back. On the null capture source and the WAV
//! capture source, S16 stereo 48 kHz:
//! - host clock → guest latency: for the k-th RX message of a stream (k from 1), the time the
//!   driver sees it in the used ring (woken by its interrupt) minus the time its period ended on
//!   the host clock, START + k periods (START: just before the driver sends the START request);
//! - CPU per capture stream: the run time (schedstat) of the `snd-inN` period threads, and of
//!   the event loop, per second of capture, with 1 and 4 input streams.
//!
//! ALSA capture is not measured: the bench has no private PulseAudio yet (the devices crate's
//! host-fault tests do); the section says so.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use canto_devices::virtio::snd::wire::{RXQ, R_PCM_RELEASE, R_PCM_START, R_PCM_STOP, S_OK};
use canto_devices::virtio::snd::{BackendConfig, CaptureConfig, Sound, SoundConfig};
use canto_devices::virtio::test_utils::sound::stereo_48k;
use canto_devices::virtio::test_utils::{LoopMode, RigLayout, SoundRig};

use crate::config::Config;
use crate::report::{Report, Row};
use crate::util::{env_u64, percentile, thread_cpu, threads};

use super::{pct, progress};

/// RX messages queued per stream (a buffer of four periods, as Linux records).
const DEPTH: usize = 4;

/// What one capture run measured.
#[derive(Debug, Clone, Default)]
pub struct CaptureRun {
    pub streams: u32,
    pub period: Duration,
    /// Per RX message: completion seen by the driver − its period's end on the host clock (s).
    pub latencies: Vec<f64>,
    /// Messages that came back not OK or not full.
    pub bad: usize,
    /// Seconds from the first START to the end of the run.
    pub seconds: f64,
    /// Run time of all the `snd-inN` threads, of the event loop, of the whole process.
    pub period_threads_cpu: Duration,
    pub event_loop_cpu: Duration,
    pub process_cpu: Duration,
    pub overruns: u64,
}

impl CaptureRun {
    /// (median, p99) latency in periods.
    pub fn latency_periods(&self) -> (f64, f64) {
        let p = self.period.as_secs_f64();
        let l: Vec<f64> = self.latencies.iter().map(|v| v / p).collect();
        (percentile(&l, 50.0), percentile(&l, 99.0))
    }

    /// Period thread CPU per capture stream per second of capture (fraction of a core).
    pub fn cpu_per_stream(&self) -> f64 {
        self.period_threads_cpu.as_secs_f64() / f64::from(self.streams.max(1)) / self.seconds
    }
}

/// A capture source to measure, and the file behind it.
pub enum Source {
    Null,
    Wav(PathBuf),
}

impl Source {
    fn config(&self) -> CaptureConfig {
        match self {
            Source::Null => CaptureConfig::Null,
            Source::Wav(path) => CaptureConfig::Wav { path: path.clone() },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Source::Null => "null",
            Source::Wav(_) => "wav",
        }
    }
}

/// A scratch S16 stereo 48 kHz WAV file of noise, removed when dropped.
pub struct ScratchWav(pub PathBuf);

impl ScratchWav {
    pub fn new(seconds: u64) -> std::io::Result<ScratchWav> {
        let path =
            std::env::temp_dir().join(format!("canto-bench-capture-{}.wav", std::process::id()));
        let data_len = (seconds * 48_000 * 4) as u32;
        let mut file = Vec::with_capacity(44 + data_len as usize);
        file.extend_from_slice(b"RIFF");
        file.extend_from_slice(&(36 + data_len).to_le_bytes());
        file.extend_from_slice(b"WAVEfmt ");
        file.extend_from_slice(&16u32.to_le_bytes());
        file.extend_from_slice(&1u16.to_le_bytes()); // PCM
        file.extend_from_slice(&2u16.to_le_bytes()); // channels
        file.extend_from_slice(&48_000u32.to_le_bytes());
        file.extend_from_slice(&(48_000u32 * 4).to_le_bytes());
        file.extend_from_slice(&4u16.to_le_bytes()); // block align
        file.extend_from_slice(&16u16.to_le_bytes()); // bits
        file.extend_from_slice(b"data");
        file.extend_from_slice(&data_len.to_le_bytes());
        let mut state = 0x5eed_u32;
        file.extend((0..data_len).map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        }));
        std::fs::write(&path, file)?;
        Ok(ScratchWav(path))
    }
}

impl Drop for ScratchWav {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Process CPU (user + system) so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Records from `streams` input streams (ids 1..=streams, output 0 unused) with
/// `period_frames`-frame periods for `seconds`.
pub fn measure(
    source: &Source,
    streams: u32,
    period_frames: u32,
    seconds: f64,
) -> Result<CaptureRun, String> {
    let config = SoundConfig {
        backend: BackendConfig::Null,
        capture: Some(source.config()),
        outputs: 1,
        inputs: streams,
        jacks: 0,
    };
    let sound = Sound::new(config).map_err(|e| format!("{e:?}"))?;
    // The rig's helpers assert: a failure becomes this run's error, not the harness's end.
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut h = SoundRig::build(
            sound,
            SoundRig::features(false),
            LoopMode::Thread,
            RigLayout::default(),
            None,
        );
        record(&mut h, streams, period_frames, seconds)
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the fake driver panicked".into())
    })?
}

fn record(
    h: &mut SoundRig,
    streams: u32,
    period_frames: u32,
    seconds: f64,
) -> Result<CaptureRun, String> {
    let period = Duration::from_nanos(u64::from(period_frames) * 1_000_000_000 / 48_000);
    let message_bytes = period_frames * 4;
    let ids: Vec<u32> = (1..=streams).collect();
    for &id in &ids {
        h.prepare(stereo_48k(id, period_frames, DEPTH as u32));
    }
    // PREPARE started the period threads; a new thread names itself once it runs, so look
    // for a while.
    let pid = std::process::id() as i32;
    let names: Vec<String> = ids.iter().map(|id| format!("snd-in{id}")).collect();
    let find = || -> Vec<i32> {
        threads(pid)
            .into_iter()
            .filter(|(_, name)| names.contains(name))
            .map(|(tid, _)| tid)
            .collect()
    };
    let looking = Instant::now();
    let mut period_tids = find();
    while period_tids.len() != ids.len() && looking.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
        period_tids = find();
    }
    if period_tids.len() != ids.len() {
        return Err(format!(
            "found {} of {} snd-inN period threads",
            period_tids.len(),
            ids.len()
        ));
    }
    let loop_tid = h.event_loop_tid();
    let cpu_of =
        |tids: &[i32]| -> Duration { tids.iter().filter_map(|t| thread_cpu(pid, *t)).sum() };

    // Which stream each RX message in flight belongs to.
    let mut in_flight: HashMap<u16, u32> = HashMap::new();
    let queue_one = |h: &mut SoundRig, in_flight: &mut HashMap<u16, u32>, id: u32| {
        let sent = h.add_io(RXQ, id, &[], message_bytes);
        in_flight.insert(sent.head, id);
    };
    for &id in &ids {
        for _ in 0..DEPTH {
            queue_one(h, &mut in_flight, id);
        }
    }
    h.kick(RXQ);

    let cpu_before = (
        cpu_of(&period_tids),
        loop_tid.map_or(Duration::ZERO, |t| cpu_of(&[t])),
        process_cpu(),
    );
    let mut started: HashMap<u32, Instant> = HashMap::new();
    let first_start = Instant::now();
    for &id in &ids {
        started.insert(id, Instant::now());
        if h.pcm(R_PCM_START, id) != S_OK {
            return Err(format!("START of stream {id} refused"));
        }
    }
    let end = first_start + Duration::from_secs_f64(seconds);
    let mut done: HashMap<u32, u32> = HashMap::new();
    let mut run = CaptureRun {
        streams,
        period,
        ..CaptureRun::default()
    };
    let mut last_progress = Instant::now();
    while Instant::now() < end {
        let seen = h.interrupt.count(RXQ);
        let mut requeue = Vec::new();
        while let Some((head, used_len)) = h.queues[usize::from(RXQ)].pop_used(&h.mem) {
            let now = Instant::now();
            let Some(id) = in_flight.remove(&head) else {
                return Err(format!("unknown RX head {head}"));
            };
            let k = done.entry(id).or_default();
            *k += 1;
            let due = started[&id] + period * *k;
            // Early completions (none expected) count as negative latency.
            let latency = if now >= due {
                now.duration_since(due).as_secs_f64()
            } else {
                -due.duration_since(now).as_secs_f64()
            };
            run.latencies.push(latency);
            if used_len != message_bytes + 8 {
                run.bad += 1;
            }
            requeue.push(id);
        }
        if requeue.is_empty() {
            if last_progress.elapsed() > Duration::from_secs(5) + 2 * period {
                return Err("no RX message came back for 5 s".into());
            }
            h.interrupt
                .wait_beyond(RXQ, seen, Duration::from_millis(20).max(period));
            continue;
        }
        last_progress = Instant::now();
        for id in requeue {
            queue_one(h, &mut in_flight, id);
        }
        h.kick(RXQ);
    }
    run.seconds = first_start.elapsed().as_secs_f64();
    run.period_threads_cpu = cpu_of(&period_tids).saturating_sub(cpu_before.0);
    run.event_loop_cpu = loop_tid
        .map_or(Duration::ZERO, |t| cpu_of(&[t]))
        .saturating_sub(cpu_before.1);
    run.process_cpu = process_cpu().saturating_sub(cpu_before.2);
    for &id in &ids {
        h.pcm(R_PCM_STOP, id);
        h.pcm(R_PCM_RELEASE, id);
    }
    h.take_used(RXQ);
    run.overruns = h.sound.stats().rx_overruns;
    Ok(run)
}

fn ms(v: f64) -> String {
    format!("{:.2} ms", v * 1e3)
}

fn latency_row(source: &str, r: &CaptureRun) -> Row {
    let (median, p99) = r.latency_periods();
    let p = r.period.as_secs_f64();
    Row {
        figure: format!(
            "host clock → guest latency, {} capture, {} stream{}, {} ms periods",
            source,
            r.streams,
            if r.streams == 1 { "" } else { "s" },
            r.period.as_millis()
        ),
        canto: format!(
            "median {median:.3} periods ({}), p99 {p99:.3} periods ({})",
            ms(median * p),
            ms(p99 * p)
        ),
        note: format!(
            "{} RX messages over {:.1} s, {} not full/OK, {} overruns; the driver sees a message in the used ring after its interrupt, minus START + k periods",
            r.latencies.len(),
            r.seconds,
            r.bad,
            r.overruns
        ),
        ..Row::default()
    }
}

fn cpu_row(source: &str, r: &CaptureRun) -> Row {
    Row {
        figure: format!(
            "CPU per capture stream, {} capture, {} stream{}, {} ms periods",
            source,
            r.streams,
            if r.streams == 1 { "" } else { "s" },
            r.period.as_millis()
        ),
        canto: format!(
            "{} of a core (period threads {}; event loop {}; whole process {})",
            pct(r.cpu_per_stream()),
            pct(r.period_threads_cpu.as_secs_f64() / r.seconds),
            pct(r.event_loop_cpu.as_secs_f64() / r.seconds),
            pct(r.process_cpu.as_secs_f64() / r.seconds)
        ),
        note: format!(
            "snd-inN threads' run time (schedstat) ÷ streams ÷ {:.1} s of capture; the whole process includes the fake driver",
            r.seconds
        ),
        ..Row::default()
    }
}

/// Every run of the section: (source, runs) for null and WAV.
pub fn measure_all(seconds: f64) -> Vec<(&'static str, Vec<Result<CaptureRun, String>>)> {
    let wav = ScratchWav::new(seconds.ceil() as u64 + 2);
    let mut sources = vec![Ok(Source::Null)];
    sources.push(
        wav.as_ref()
            .map(|w| Source::Wav(w.0.clone()))
            .map_err(|e| format!("scratch WAV: {e}")),
    );
    let mut out = Vec::new();
    for source in sources {
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                out.push(("wav", vec![Err(e)]));
                continue;
            }
        };
        let mut runs = Vec::new();
        for (streams, frames) in [(1, 480), (1, 4800), (4, 480)] {
            progress(&format!(
                "capture: {} source, {streams} stream(s), {} ms periods, {seconds:.0} s",
                source.name(),
                frames / 48
            ));
            runs.push(measure(&source, streams, frames, seconds));
        }
        out.push((source.name(), runs));
    }
    out
}

pub fn run(_cfg: &Config, report: &mut Report) {
    let seconds = env_u64("BENCH_CAPTURE_SECONDS", 5).max(1) as f64;
    let all = measure_all(seconds);
    report.section(
        "capture, device level (the devices crate's Sound with input streams, the fake driver recording with 4 one-period RX messages queued per stream, its event loop on a thread; S16 stereo 48 kHz)",
    );
    for (source, runs) in &all {
        for run in runs {
            match run {
                Ok(r) => {
                    report.row(latency_row(source, r));
                    report.row(cpu_row(source, r));
                }
                Err(e) => report.skip(format!("capture, {source} source: {e}")),
            }
        }
    }
    let why = "capture from ALSA (private PulseAudio): the bench has no PulseAudio server of its own yet (the devices crate's ignored host-fault tests run under resources/with-pulse.sh)";
    progress(&format!("capture: skipped {why}"));
    report.skip(why);
}

#[cfg(test)]
mod tests {
    /// `cargo test -p canto-bench --release capture_figures -- --ignored --nocapture`: the
    /// figures alone, without the rest of `make bench`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn capture_figures() {
        let seconds = crate::util::env_u64("BENCH_CAPTURE_SECONDS", 5).max(1) as f64;
        for (source, runs) in super::measure_all(seconds) {
            for run in runs {
                let r = run.unwrap();
                let row = super::latency_row(source, &r);
                println!("{}: {} [{}]", row.figure, row.canto, row.note);
                let row = super::cpu_row(source, &r);
                println!("{}: {}", row.figure, row.canto);
                assert!(!r.latencies.is_empty());
            }
        }
    }
}
