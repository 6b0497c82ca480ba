//! The null backend: output is discarded, input is silence, both paced in real time so the
//! guest sees a sound card that runs at its nominal rate.

use std::sync::Arc;

use super::clock::{ClockedOutput, PeriodClock, PeriodSink};
use super::{Backend, BackendError, InputStream, OutputStream, PcmParams, Readiness};
use crate::virtio::snd::stats::SoundStats;
use crate::virtio::snd::waker::Waker;
use crate::virtio::snd::wire::PcmFormat;

/// Accepts every format Canto knows.
#[derive(Debug, Default)]
pub struct NullBackend;

impl Backend for NullBackend {
    fn name(&self) -> &'static str {
        "null"
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
        Ok(Box::new(ClockedOutput::new(params, Discard)))
    }

    fn open_input(
        &self,
        _stream_id: u32,
        params: &PcmParams,
        _stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        Ok(Box::new(SilentInput::new(params)))
    }
}

/// Null output: periods go nowhere; the discarded remainder of a short period stands for the
/// silence a card would play.
struct Discard;

impl PeriodSink for Discard {
    fn play(&mut self, data: &[u8], period_bytes: usize) -> Result<usize, BackendError> {
        Ok(period_bytes - data.len())
    }

    fn flush(&mut self, _data: &[u8]) -> Result<(), BackendError> {
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Captures silence of the stream's format, paced by a clock (null and WAV input streams).
pub struct SilentInput {
    clock: PeriodClock,
    period: Vec<u8>,
}

impl SilentInput {
    pub fn new(params: &PcmParams) -> SilentInput {
        let mut period = vec![0; params.period_bytes as usize];
        params.format.fill_silence(&mut period);
        SilentInput {
            clock: PeriodClock::new(params),
            period,
        }
    }
}

impl InputStream for SilentInput {
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

    fn capture_period(&mut self) -> Result<&[u8], BackendError> {
        Ok(&self.period)
    }

    fn latency_bytes(&mut self) -> u32 {
        0
    }

    fn close(self: Box<Self>) {}
}
