//! Real-time pacing for backends without a hardware clock (null, WAV): one period per period
//! duration, at absolute deadlines computed from the start instant, so rounding never
//! accumulates into drift. [`ClockedOutput`] is the output stream of both, paced so; what
//! differs is where its periods go (a [`PeriodSink`]).

use std::time::{Duration, Instant};

use super::{BackendError, OutputStream, PcmParams, Readiness};
use crate::virtio::snd::waker::Waker;

/// How long a stopped clock waits for a wake-up before reporting a timeout.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How many periods late the clock may fall (the host stalled) before it gives up catching up
/// and restarts from now.
const MAX_LATE_PERIODS: u64 = 8;

/// Deadlines at origin + k × period for k = 1, 2, ...: the k-th period is due when it has
/// fully elapsed.
#[derive(Debug)]
pub struct PeriodClock {
    period_frames: u64,
    rate_hz: u64,
    origin: Option<Instant>,
    ticks: u64,
}

impl PeriodClock {
    pub fn new(params: &PcmParams) -> PeriodClock {
        PeriodClock {
            period_frames: u64::from(params.period_frames().max(1)),
            rate_hz: u64::from(params.rate_hz.max(1)),
            origin: None,
            ticks: 0,
        }
    }

    /// Starts counting periods from now.
    pub fn start(&mut self) {
        self.origin = Some(Instant::now());
        self.ticks = 0;
    }

    pub fn stop(&mut self) {
        self.origin = None;
    }

    fn offset(&self, periods: u64) -> Duration {
        let nanos = u128::from(periods) * u128::from(self.period_frames) * 1_000_000_000
            / u128::from(self.rate_hz);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Waits for the next deadline. `Ready` once per period; `Woken` if `waker` fired first.
    pub fn wait(&mut self, waker: &Waker) -> Readiness {
        let Some(origin) = self.origin else {
            return if waker.wait_for(IDLE_WAIT) {
                Readiness::Woken
            } else {
                Readiness::TimedOut
            };
        };
        let deadline = origin + self.offset(self.ticks + 1);
        if waker.wait_until(deadline) {
            return Readiness::Woken;
        }
        self.ticks += 1;
        let late = Instant::now().saturating_duration_since(deadline);
        if late > self.offset(MAX_LATE_PERIODS) {
            log::debug!("virtio-snd: period clock {late:?} late, restarting it");
            self.start();
        }
        Readiness::Ready
    }
}

/// Where a [`ClockedOutput`]'s periods go.
pub(super) trait PeriodSink: Send {
    /// Takes one period's guest PCM: all of it, or less after an underrun (`data` is then
    /// shorter than `period_bytes`). Returns the bytes of silence played in place of the rest.
    fn play(&mut self, data: &[u8], period_bytes: usize) -> Result<usize, BackendError>;
    /// Takes `data` without pacing (RELEASE flush).
    fn flush(&mut self, data: &[u8]) -> Result<(), BackendError>;
    /// Completes the release flush.
    fn finish(&mut self) -> Result<(), BackendError>;
}

/// An output stream paced by a [`PeriodClock`] that holds nothing back (its latency is always 0)
/// and hands each period to its sink.
pub(super) struct ClockedOutput<S> {
    clock: PeriodClock,
    period: Vec<u8>,
    sink: S,
}

impl<S: PeriodSink> ClockedOutput<S> {
    pub(super) fn new(params: &PcmParams, sink: S) -> ClockedOutput<S> {
        ClockedOutput {
            clock: PeriodClock::new(params),
            period: vec![0; params.period_bytes as usize],
            sink,
        }
    }
}

impl<S: PeriodSink> OutputStream for ClockedOutput<S> {
    fn start(&mut self) -> Result<(), BackendError> {
        self.clock.start();
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.clock.stop();
        Ok(())
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        Ok(self.clock.wait(waker))
    }

    fn period_buffer(&mut self) -> &mut [u8] {
        &mut self.period
    }

    fn play_period(&mut self, filled: usize) -> Result<usize, BackendError> {
        let period_bytes = self.period.len();
        let data = &self.period[..filled.min(period_bytes)];
        self.sink.play(data, period_bytes)
    }

    fn flush_bytes(&mut self, len: usize, _deadline: Instant) -> Result<usize, BackendError> {
        // A sink never waits for room: it takes everything at once.
        let data = &self.period[..len.min(self.period.len())];
        self.sink.flush(data)?;
        Ok(data.len())
    }

    fn latency_bytes(&mut self) -> u32 {
        0
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        self.sink.finish()
    }

    fn close(self: Box<Self>, _drain: Option<&Waker>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::snd::wire::PcmFormat;

    fn params(period_frames: u32, rate_hz: u32) -> PcmParams {
        PcmParams {
            format: PcmFormat::S16,
            rate_hz,
            channels: 1,
            period_bytes: period_frames * 2,
            buffer_bytes: period_frames * 8,
        }
    }

    #[test]
    fn paces_at_the_period_without_drift() {
        // 441 frames at 44.1 kHz: exactly 10 ms.
        let mut clock = PeriodClock::new(&params(441, 44100));
        let waker = Waker::new().unwrap();
        let start = Instant::now();
        clock.start();
        for _ in 0..10 {
            assert_eq!(clock.wait(&waker), Readiness::Ready);
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
    }

    #[test]
    fn offsets_are_exact() {
        // 1 frame at 3 Hz: 333_333_333.3 ns per period; 3 periods are exactly 1 s.
        let clock = PeriodClock::new(&params(1, 3));
        assert_eq!(clock.offset(3), Duration::from_secs(1));
        assert_eq!(clock.offset(30_000), Duration::from_secs(10_000));
    }

    #[test]
    fn a_wake_interrupts_the_wait() {
        let mut clock = PeriodClock::new(&params(48000, 48000));
        let waker = Waker::new().unwrap();
        clock.start();
        waker.wake();
        assert_eq!(clock.wait(&waker), Readiness::Woken);
        clock.stop();
        waker.wake();
        assert_eq!(clock.wait(&waker), Readiness::Woken);
    }
}
