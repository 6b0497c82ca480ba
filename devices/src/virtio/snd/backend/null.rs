//! The null backend: output is discarded, input is silence, both paced in real time so the
//! guest sees a sound card that runs at its nominal rate.

use std::sync::Arc;

use super::clock::PeriodClock;
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
        PcmFormat::ALL.iter().fold(0, |mask, f| mask | f.bit())
    }

    fn open_output(
        &self,
        _stream_id: u32,
        params: &PcmParams,
        _stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        Ok(Box::new(NullOutput {
            clock: PeriodClock::new(params),
            period: vec![0; params.period_bytes as usize],
        }))
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

struct NullOutput {
    clock: PeriodClock,
    period: Vec<u8>,
}

impl OutputStream for NullOutput {
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
        // The discarded remainder stands for the silence a card would play.
        Ok(self.period.len().saturating_sub(filled))
    }

    fn flush_bytes(&mut self, _len: usize) -> Result<(), BackendError> {
        Ok(())
    }

    fn latency_bytes(&mut self) -> u32 {
        0
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn close(self: Box<Self>, _drain: Option<&Waker>) {}
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
