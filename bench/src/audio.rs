//! Unit-level measurements of the virtio-snd TX path: a fake driver sends PCM through the real
//! device (public API only) and the backend side timestamps what it receives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use canto_devices::virtio::snd::backend::null::NullBackend;
use canto_devices::virtio::snd::wire::{S_OK, TXQ};
use canto_devices::virtio::snd::SoundStatsSnapshot;

use crate::backends::{recording_backend, PeriodRecord, UnpacedBackend};
use crate::device::{stereo_48k, Device, LoopMode};
use crate::util::{thread_cpu, threads, Rng};

/// Bytes per second of S16 stereo at 48 kHz.
pub const BYTES_PER_SECOND: u64 = 48_000 * 4;

pub fn period_of(period_frames: u32) -> Duration {
    Duration::from_nanos(u64::from(period_frames) * 1_000_000_000 / 48_000)
}

/// Waits until at least `n` TX messages came back (appending them to `done`), or 5 s pass.
fn wait_tx(dev: &mut Device, done: &mut Vec<(usize, u32)>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let start = done.len();
    loop {
        let seen = dev.irq.count(TXQ);
        dev.reap_tx(done);
        if done.len() - start >= n {
            return;
        }
        let now = Instant::now();
        assert!(
            now < deadline,
            "TX messages did not come back within 5 s: {:?}, {} txq interrupts",
            dev.stats(),
            dev.irq.count(TXQ)
        );
        dev.irq
            .wait_beyond(TXQ, seen, (deadline - now).min(Duration::from_millis(100)));
    }
}

/// CPU time of the device's own threads in this process: (event loop, period threads).
fn device_cpu(dev: &Device) -> (Duration, Duration) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let event_loop = dev
        .event_loop_tid()
        .and_then(|tid| thread_cpu(pid, tid))
        .unwrap_or_default();
    let period = threads(pid)
        .into_iter()
        .filter(|(_, name)| name.starts_with("snd-out"))
        .filter_map(|(tid, _)| thread_cpu(pid, tid))
        .sum();
    (event_loop, period)
}

fn total((a, b): (Duration, Duration)) -> Duration {
    a + b
}

fn delta(a: SoundStatsSnapshot, b: SoundStatsSnapshot) -> SoundStatsSnapshot {
    SoundStatsSnapshot {
        tx_bytes_copied: b.tx_bytes_copied - a.tx_bytes_copied,
        tx_bytes_played: b.tx_bytes_played - a.tx_bytes_played,
        tx_silence_bytes: b.tx_silence_bytes - a.tx_silence_bytes,
        tx_underruns: b.tx_underruns - a.tx_underruns,
        tx_messages: b.tx_messages - a.tx_messages,
        ..b
    }
}

/// Latency of messages that arrive at an empty stream queue (a driver that sends each period as
/// the application writes it, like Linux 6.12): arrival (publish + kick) to the period handoff
/// that carries the message's first frame, in periods.
pub struct LatencyResult {
    pub latencies_periods: Vec<f64>,
    /// Messages whose first frame was never seen (should be 0).
    pub missing: usize,
    pub underruns: u64,
}

/// Sends `messages` one-period messages, each a random fraction of a period after the previous
/// one came back, through the null backend's real-time clock.
pub fn latency_just_in_time(period_frames: u32, messages: usize, seed: u64) -> LatencyResult {
    let (backend, recorder) = recording_backend(Arc::new(NullBackend));
    let mut dev = Device::new(backend, LoopMode::Thread);
    let params = stereo_48k(period_frames, 4);
    let period = period_of(period_frames);
    dev.prepare(&params, 2);
    let before = dev.stats();
    let mut arrivals = vec![Instant::now(); messages];
    let mut done = Vec::new();
    let mut rng = Rng::new(seed);
    dev.send_tx(0, 0);
    arrivals[0] = Instant::now();
    dev.kick(TXQ);
    dev.start(0);
    for (i, arrival) in arrivals.iter_mut().enumerate().skip(1) {
        wait_tx(&mut dev, &mut done, 1);
        std::thread::sleep(period.mul_f64(rng.next_f64()));
        dev.send_tx(i % 2, i as u64);
        *arrival = Instant::now();
        dev.kick(TXQ);
    }
    wait_tx(&mut dev, &mut done, 1);
    dev.stop_release(0);
    let stats = delta(before, dev.stats());
    let records = recorder.take();
    let mut first: Vec<Option<Instant>> = vec![None; messages];
    for record in &records {
        if let Some(slot) = record.tag.and_then(|t| first.get_mut(t as usize)) {
            slot.get_or_insert(record.at);
        }
    }
    let mut latencies = Vec::with_capacity(messages);
    let mut missing = 0;
    // The first message was queued before START: its wait is the START handshake, not a period.
    for (arrival, written) in arrivals.iter().zip(&first).skip(1) {
        match written {
            Some(at) => latencies
                .push(at.saturating_duration_since(*arrival).as_secs_f64() / period.as_secs_f64()),
            None => missing += 1,
        }
    }
    LatencyResult {
        latencies_periods: latencies,
        missing,
        underruns: stats.tx_underruns,
    }
}

/// A steady playback: the driver keeps its whole buffer queued and re-sends each period as soon
/// as it comes back (as Linux 6.1 does), through the null backend's real-time clock.
pub struct SteadyResult {
    pub period: Duration,
    pub period_frames: u32,
    pub wall: Duration,
    pub records: Vec<PeriodRecord>,
    /// Every txq interrupt (a period's completion, as the guest sees it).
    pub completions: Vec<Instant>,
    pub stats: SoundStatsSnapshot,
    /// CPU time of the device's threads (event loop + period thread) while playing.
    pub device_cpu: Duration,
    /// The period thread's share of it.
    pub period_thread_cpu: Duration,
    /// The same threads' CPU per second with the stream prepared and its buffer queued, but not
    /// started (the idle baseline).
    pub idle_cpu_per_second: f64,
    pub pcm_bytes_sent: u64,
    /// Guest bytes the backend received in periods (from the records).
    pub pcm_bytes_received: u64,
    pub bad_status: usize,
}

impl SteadyResult {
    pub fn audio_seconds(&self) -> f64 {
        self.stats.tx_bytes_played as f64 / BYTES_PER_SECOND as f64
    }

    /// Net CPU per second of audio, as a fraction of one core.
    pub fn cpu_fraction(&self) -> f64 {
        let gross = self.device_cpu.as_secs_f64() / self.wall.as_secs_f64();
        (gross - self.idle_cpu_per_second).max(0.0) * self.wall.as_secs_f64()
            / self.audio_seconds().max(1e-9)
    }

    pub fn gross_cpu_fraction(&self) -> f64 {
        self.device_cpu.as_secs_f64() / self.audio_seconds().max(1e-9)
    }

    /// (actual − nominal) / nominal time between the first and the last of `points` (period
    /// index, time): the audio time is the periods between them at the nominal rate.
    pub fn pacing_error(points: &[(usize, Instant)], period: Duration) -> Option<f64> {
        let (first, last) = (points.first()?, points.last()?);
        let nominal = period.as_secs_f64() * (last.0 - first.0) as f64;
        (nominal > 0.0).then(|| (last.1.duration_since(first.1).as_secs_f64() - nominal) / nominal)
    }

    /// Each point's deviation from the nominal schedule anchored at the first handoff, in ms,
    /// with its time since the first handoff in seconds.
    pub fn deviations_ms(&self, points: &[(usize, Instant)]) -> Vec<(f64, f64)> {
        let Some(first) = self.records.first().map(|r| r.at) else {
            return Vec::new();
        };
        points
            .iter()
            .map(|&(k, t)| {
                let since = t.saturating_duration_since(first).as_secs_f64();
                (since, (since - k as f64 * self.period.as_secs_f64()) * 1e3)
            })
            .collect()
    }

    /// Every period handed to the backend: (period index, time).
    pub fn handoffs(&self) -> Vec<(usize, Instant)> {
        self.records.iter().map(|r| r.at).enumerate().collect()
    }

    /// Every completion interrupt with the period whose handoff it followed (a period of
    /// silence completes no message and raises none).
    pub fn completion_points(&self) -> Vec<(usize, Instant)> {
        self.completions
            .iter()
            .filter_map(|&t| {
                let k = self.records.partition_point(|r| r.at <= t);
                k.checked_sub(1).map(|k| (k, t))
            })
            .collect()
    }
}

pub fn steady_playback(
    period_frames: u32,
    periods: u32,
    seconds: f64,
    idle_seconds: f64,
) -> SteadyResult {
    let (backend, recorder) = recording_backend(Arc::new(NullBackend));
    let mut dev = Device::new(backend, LoopMode::Thread);
    let params = stereo_48k(period_frames, periods);
    let period = period_of(period_frames);
    let slots = periods as usize;
    dev.prepare(&params, slots);
    let before = dev.stats();
    let mut tag = 0u64;
    for slot in 0..slots {
        dev.send_tx(slot, tag);
        tag += 1;
    }
    dev.kick(TXQ);
    // Idle baseline: the same threads, the stream prepared and full, not started.
    let idle_start = total(device_cpu(&dev));
    let idle_t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(idle_seconds));
    let idle_cpu_per_second = (total(device_cpu(&dev)).saturating_sub(idle_start)).as_secs_f64()
        / idle_t0.elapsed().as_secs_f64();

    dev.irq.record_times(Some(TXQ));
    let cpu0 = device_cpu(&dev);
    let t0 = Instant::now();
    dev.start(0);
    let end = t0 + Duration::from_secs_f64(seconds);
    let mut done = Vec::new();
    let mut bad_status = 0;
    while Instant::now() < end {
        done.clear();
        wait_tx(&mut dev, &mut done, 1);
        for &(slot, status) in &done {
            if status != S_OK {
                bad_status += 1;
            }
            dev.send_tx(slot, tag);
            tag += 1;
        }
        dev.kick(TXQ);
    }
    let cpu1 = device_cpu(&dev);
    let wall = t0.elapsed();
    let completions = dev.irq.record_times(None);
    let records = recorder.take();
    dev.stop_release(0);
    let stats = delta(before, dev.stats());
    SteadyResult {
        period,
        period_frames,
        wall,
        pcm_bytes_received: records.iter().map(|r| u64::from(r.filled)).sum(),
        records,
        completions,
        stats,
        device_cpu: total(cpu1).saturating_sub(total(cpu0)),
        period_thread_cpu: cpu1.1.saturating_sub(cpu0.1),
        idle_cpu_per_second,
        pcm_bytes_sent: tag * u64::from(params.period_bytes),
        bad_status,
    }
}

/// Bytes per second through the TX path with an unpaced backend: the driver keeps 64 periods
/// queued and re-sends each one as it comes back.
pub fn unpaced_throughput(period_bytes: u32, window: Duration) -> f64 {
    let mut dev = Device::new(Arc::new(UnpacedBackend), LoopMode::Thread);
    let slots = 64;
    let params = stereo_48k(period_bytes / 4, slots as u32 / 2);
    dev.prepare(&params, slots);
    for slot in 0..slots {
        dev.send_tx(slot, slot as u64);
    }
    dev.kick(TXQ);
    dev.start(0);
    let mut done = Vec::new();
    let mut run = |dev: &mut Device, until: Instant| {
        while Instant::now() < until {
            done.clear();
            wait_tx(dev, &mut done, 1);
            for &(slot, _) in &done {
                dev.send_tx(slot, slot as u64);
            }
            dev.kick(TXQ);
        }
    };
    run(&mut dev, Instant::now() + Duration::from_millis(100));
    let s0 = dev.stats().tx_bytes_played;
    let t0 = Instant::now();
    run(&mut dev, t0 + window);
    let bytes = dev.stats().tx_bytes_played - s0;
    let elapsed = t0.elapsed();
    dev.stop_release(0);
    bytes as f64 / elapsed.as_secs_f64()
}

/// Bytes per second of a plain copy of the same pieces: `period_bytes` at a time from a ring of
/// 64 periods into one period buffer.
pub fn memcpy_throughput(period_bytes: u32, window: Duration) -> f64 {
    let len = period_bytes as usize;
    let source: Vec<u8> = (0..len * 64).map(|i| i as u8).collect();
    let mut dest = vec![0u8; len];
    let mut bytes = 0u64;
    let t0 = Instant::now();
    let mut i = 0;
    loop {
        for _ in 0..64 {
            dest.copy_from_slice(std::hint::black_box(&source[i * len..(i + 1) * len]));
            std::hint::black_box(&mut dest);
            i = (i + 1) % 64;
            bytes += len as u64;
        }
        if t0.elapsed() >= window {
            break;
        }
    }
    bytes as f64 / t0.elapsed().as_secs_f64()
}

/// CPU per second of a thread that only runs the null backend's period clock (the devices
/// crate's `PeriodClock`, waking every period and doing nothing else): the floor under the
/// period thread's cost on this machine.
pub fn clock_only_cpu(period_frames: u32, seconds: f64) -> f64 {
    use canto_devices::virtio::snd::backend::clock::PeriodClock;
    use canto_devices::virtio::snd::backend::PcmParams;
    use canto_devices::virtio::snd::waker::Waker;
    use canto_devices::virtio::snd::wire::PcmFormat;
    let params = PcmParams {
        format: PcmFormat::S16,
        rate_hz: 48_000,
        channels: 2,
        period_bytes: period_frames * 4,
        buffer_bytes: period_frames * 16,
    };
    std::thread::spawn(move || {
        // SAFETY: getpid and gettid have no preconditions.
        let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        let waker = Waker::new().expect("eventfd");
        let mut clock = PeriodClock::new(&params);
        let c0 = thread_cpu(pid, tid).unwrap_or_default();
        let t0 = Instant::now();
        clock.start();
        while t0.elapsed().as_secs_f64() < seconds {
            clock.wait(&waker);
        }
        let cpu = thread_cpu(pid, tid).unwrap_or_default().saturating_sub(c0);
        cpu.as_secs_f64() / t0.elapsed().as_secs_f64()
    })
    .join()
    .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threaded fake driver and the recording backend end to end: every message the
    /// driver sent reaches the backend, tagged (20 periods of 10 ms).
    #[test]
    fn every_message_reaches_the_backend() {
        let result = latency_just_in_time(480, 20, 1);
        assert_eq!(result.missing, 0);
    }

    /// The fixed TX slots go round and come back through the threaded event loop.
    #[test]
    fn the_unpaced_path_plays() {
        assert!(unpaced_throughput(1920, Duration::from_millis(200)) > 0.0);
    }
}
