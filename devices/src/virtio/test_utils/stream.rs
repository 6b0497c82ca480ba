//! A backend that hands everything to another one and calls a hook before every period it
//! plays: to record periods (the bench), or to stall the period thread (the host-fault tests).
//! Input streams can be hooked too, before every period they capture
//! ([`HookedBackend::with_capture_hook`]).

use std::sync::Arc;
use std::time::Instant;

use crate::virtio::snd::backend::{
    Backend, BackendError, InputStream, OutputStream, PcmParams, Readiness, StreamCaps,
};
use crate::virtio::snd::stats::SoundStats;
use crate::virtio::snd::waker::Waker;

/// One period an output stream is about to hand to the wrapped backend.
pub struct PlayedPeriod<'a> {
    pub stream_id: u32,
    /// Periods this stream played before this one.
    pub index: u64,
    /// The period buffer, guest PCM in its first `filled` bytes.
    pub buffer: &'a [u8],
    pub filled: usize,
}

/// What [`HookedBackend`] calls, on the period thread, before each period.
pub type PlayHook = dyn Fn(&PlayedPeriod<'_>) + Send + Sync;

/// What [`HookedBackend::with_flush_hook`] calls instead of the inner stream's `flush_bytes`:
/// given the bytes asked for and the deadline, returns the bytes taken.
pub type FlushHook = dyn Fn(usize, Instant) -> usize + Send + Sync;

/// What [`HookedBackend::with_capture_hook`] calls, on the period thread, before each period an
/// input stream captures: the stream id and how many periods it captured before this one.
pub type CaptureHook = dyn Fn(u32, u64) + Send + Sync;

/// Wraps a backend: its output streams are [`HookedOutput`]s; input streams are the inner ones,
/// or [`HookedInput`]s with a capture hook.
pub struct HookedBackend {
    inner: Arc<dyn Backend>,
    hook: Arc<PlayHook>,
    flush: Option<Arc<FlushHook>>,
    capture: Option<Arc<CaptureHook>>,
}

impl HookedBackend {
    pub fn new(
        inner: Arc<dyn Backend>,
        hook: impl Fn(&PlayedPeriod<'_>) + Send + Sync + 'static,
    ) -> HookedBackend {
        HookedBackend {
            inner,
            hook: Arc::new(hook),
            flush: None,
            capture: None,
        }
    }

    /// Input streams call `capture` before each period they capture (e.g. to stall the period
    /// thread until the host device overruns).
    pub fn with_capture_hook(
        mut self,
        capture: impl Fn(u32, u64) + Send + Sync + 'static,
    ) -> HookedBackend {
        self.capture = Some(Arc::new(capture));
        self
    }

    /// Output streams answer a RELEASE flush with `flush` instead of the inner stream (e.g. a
    /// host device with no room left).
    pub fn with_flush_hook(
        mut self,
        flush: impl Fn(usize, Instant) -> usize + Send + Sync + 'static,
    ) -> HookedBackend {
        self.flush = Some(Arc::new(flush));
        self
    }
}

impl Backend for HookedBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn formats(&self) -> u64 {
        self.inner.formats()
    }

    fn device_available(&self, direction: crate::virtio::snd::io::Direction) -> bool {
        self.inner.device_available(direction)
    }

    fn open_output(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        Ok(Box::new(HookedOutput {
            inner: self.inner.open_output(stream_id, params, stats)?,
            hook: self.hook.clone(),
            flush: self.flush.clone(),
            stream_id,
            periods: 0,
        }))
    }

    fn open_input(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        let inner = self.inner.open_input(stream_id, params, stats)?;
        Ok(match &self.capture {
            Some(hook) => Box::new(HookedInput {
                inner,
                hook: hook.clone(),
                stream_id,
                periods: 0,
            }),
            None => inner,
        })
    }

    fn input_caps(&self) -> Option<StreamCaps> {
        self.inner.input_caps()
    }
}

/// An input stream that calls its hook before each period it captures and delegates
/// everything.
pub struct HookedInput {
    inner: Box<dyn InputStream>,
    hook: Arc<CaptureHook>,
    stream_id: u32,
    periods: u64,
}

impl InputStream for HookedInput {
    fn start(&mut self) -> Result<(), BackendError> {
        self.inner.start()
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.inner.stop()
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        self.inner.wait_ready(waker)
    }

    fn capture_period(&mut self) -> Result<&[u8], BackendError> {
        (self.hook)(self.stream_id, self.periods);
        self.periods += 1;
        self.inner.capture_period()
    }

    fn latency_bytes(&mut self) -> u32 {
        self.inner.latency_bytes()
    }

    fn close(self: Box<Self>) {
        self.inner.close()
    }
}

/// An output stream that calls its hook before each period and delegates everything.
pub struct HookedOutput {
    inner: Box<dyn OutputStream>,
    hook: Arc<PlayHook>,
    flush: Option<Arc<FlushHook>>,
    stream_id: u32,
    periods: u64,
}

impl OutputStream for HookedOutput {
    fn start(&mut self) -> Result<(), BackendError> {
        self.inner.start()
    }

    fn stop(&mut self) -> Result<(), BackendError> {
        self.inner.stop()
    }

    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        self.inner.wait_ready(waker)
    }

    fn period_buffer(&mut self) -> &mut [u8] {
        self.inner.period_buffer()
    }

    fn play_period(&mut self, filled: usize) -> Result<usize, BackendError> {
        (self.hook)(&PlayedPeriod {
            stream_id: self.stream_id,
            index: self.periods,
            buffer: self.inner.period_buffer(),
            filled,
        });
        self.periods += 1;
        self.inner.play_period(filled)
    }

    fn flush_bytes(&mut self, len: usize, deadline: Instant) -> Result<usize, BackendError> {
        match &self.flush {
            Some(flush) => Ok(flush(len, deadline)),
            None => self.inner.flush_bytes(len, deadline),
        }
    }

    fn latency_bytes(&mut self) -> u32 {
        self.inner.latency_bytes()
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        self.inner.finish()
    }

    fn close(self: Box<Self>, drain: Option<&Waker>) {
        self.inner.close(drain)
    }
}
