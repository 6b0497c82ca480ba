//! Backends for the unit-level measurements, built on the devices crate's public `Backend` trait:
//! - [`recording_backend`] wraps a real backend (null, WAV) and timestamps every period the device
//!   hands it, with the tag of the message whose PCM starts that period. Pacing stays the
//!   wrapped backend's own.
//! - [`UnpacedBackend`] wants a period whenever asked: the TX path at full speed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use canto_devices::virtio::snd::backend::{
    Backend, BackendError, InputStream, OutputStream, PcmParams, Readiness,
};
use canto_devices::virtio::snd::stats::SoundStats;
use canto_devices::virtio::snd::waker::Waker;
use canto_devices::virtio::snd::wire::PcmFormat;

use canto_devices::virtio::test_utils::{HookedBackend, PlayedPeriod};

use crate::device::TAG_BIT;

/// One period handed to the backend.
#[derive(Debug, Clone, Copy)]
pub struct PeriodRecord {
    /// When `play_period` was called: the period's PCM had just been copied in.
    pub at: Instant,
    /// The tag at the start of the period (without [`TAG_BIT`]), if it starts a message.
    pub tag: Option<u64>,
    /// Guest bytes in the period (less than a period: an underrun, the rest is silence).
    pub filled: u32,
}

/// The periods a [`recording_backend`] saw.
pub struct Recorder {
    records: Mutex<Vec<PeriodRecord>>,
}

/// Records kept without reallocating during a run.
const RECORDS_RESERVED: usize = 1 << 16;

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            records: Mutex::new(Vec::with_capacity(RECORDS_RESERVED)),
        }
    }
}

impl Recorder {
    /// The records so far; the next ones go to a fresh reserved list.
    pub fn take(&self) -> Vec<PeriodRecord> {
        std::mem::replace(
            &mut *self.records.lock().unwrap_or_else(PoisonError::into_inner),
            Vec::with_capacity(RECORDS_RESERVED),
        )
    }

    fn record(&self, period: &PlayedPeriod<'_>) {
        let at = Instant::now();
        let tag = tag_of(period.buffer, period.filled);
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(PeriodRecord {
                at,
                tag,
                filled: period.filled as u32,
            });
    }
}

/// Wraps a backend so that every period the device plays through it is timestamped (the
/// devices crate's [`HookedBackend`], with [`Recorder::record`] as its hook).
pub fn recording_backend(inner: Arc<dyn Backend>) -> (Arc<HookedBackend>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let hook = recorder.clone();
    (
        Arc::new(HookedBackend::new(inner, move |period| hook.record(period))),
        recorder,
    )
}

fn tag_of(buffer: &[u8], filled: usize) -> Option<u64> {
    let bytes: [u8; 8] = buffer.get(..8)?.try_into().ok()?;
    let tag = u64::from_le_bytes(bytes);
    (filled >= 8 && tag & TAG_BIT != 0).then_some(tag & !TAG_BIT)
}

/// Wants a period whenever the device asks: no clock. When the device had nothing queued for the
/// last period it waits up to 50 µs for a wake-up first, so a starved stream does not spin.
#[derive(Debug, Default)]
pub struct UnpacedBackend;

impl Backend for UnpacedBackend {
    fn name(&self) -> &'static str {
        "unpaced"
    }

    fn formats(&self) -> u64 {
        PcmFormat::mask_of(&PcmFormat::ALL)
    }

    fn open_output(
        &self,
        _stream_id: u32,
        params: &PcmParams,
        _stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        Ok(Box::new(UnpacedOutput {
            period: vec![0; params.period_bytes as usize],
            starving: true,
        }))
    }

    fn open_input(
        &self,
        _stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        canto_devices::virtio::snd::backend::null::NullBackend.open_input(0, params, stats)
    }
}

struct UnpacedOutput {
    period: Vec<u8>,
    starving: bool,
}

impl OutputStream for UnpacedOutput {
    fn start(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        if self.starving && waker.wait_for(Duration::from_micros(50)) {
            return Ok(Readiness::Woken);
        }
        Ok(Readiness::Ready)
    }

    fn period_buffer(&mut self) -> &mut [u8] {
        &mut self.period
    }

    fn play_period(&mut self, filled: usize) -> Result<usize, BackendError> {
        std::hint::black_box(&self.period[..filled]);
        self.starving = filled < self.period.len();
        Ok(self.period.len() - filled)
    }

    fn flush_bytes(&mut self, len: usize, _deadline: Instant) -> Result<usize, BackendError> {
        Ok(len)
    }

    fn latency_bytes(&mut self) -> u32 {
        0
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn close(self: Box<Self>, _drain: Option<&Waker>) {}
}
