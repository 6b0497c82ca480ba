//! A PCM stream's control side: the state machine of §5.14.6.6.1, parameter validation, and
//! the period thread's lifetime.
//!
//! | request    | allowed from                              | to        |
//! |------------|-------------------------------------------|-----------|
//! | SET_PARAMS | initial, params set, prepared, released   | params set|
//! | PREPARE    | params set, prepared (no-op), released    | prepared  |
//! | START      | prepared, stopped                         | started   |
//! | STOP       | started                                   | stopped   |
//! | RELEASE    | prepared, stopped                         | released  |
//!
//! Anything else is answered BAD_MSG and changes nothing. PREPARE opens the backend stream and
//! spawns the period thread; SET_PARAMS on a prepared stream, RELEASE and device reset end it
//! (joined, so no thread or backend stream outlives its use; a released thread still draining
//! is joined once it has finished, or at reset). Messages the guest queued stay
//! queued across SET_PARAMS/PREPARE; RELEASE returns them all before it is answered, within
//! [`period::RELEASE_FLUSH_TIME`] whatever was queued. Device reset cancels the stream's
//! waker first, so neither a flush nor a drain holds it up.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::backend::{Backend, PcmParams};
use super::io::{Direction, IoMessage};
use super::mailbox::{Command, CommandError, StreamMailbox};
use super::period;
use super::stats::SoundStats;
use super::wire::{
    mask_has, rate_hz, PcmFormat, PcmInfo, SetParams, S_BAD_MSG, S_IO_ERR, S_NOT_SUPP, S_OK,
};
use crate::virtio::queue::DeviceQueue;

/// The largest period the device accepts (1 MiB; the Linux driver's largest is ~480 KiB).
pub const MAX_PERIOD_BYTES: u32 = 1 << 20;
/// The largest buffer the device accepts (8 MiB).
pub const MAX_BUFFER_BYTES: u32 = 8 << 20;
/// The shortest period the device accepts, in microseconds (1 ms; the Linux driver asks 10 ms
/// or more). A period thread wakes once a period whether or not the guest sends anything, so a
/// floor on the period bounds what an idle started stream costs the host.
pub const MIN_PERIOD_US: u64 = 1000;

/// How many released threads of one stream may still be draining when it is prepared again.
const MAX_DRAINING: usize = 2;

/// How long a device reset waits for the streams' threads, their waits cancelled, to end. A
/// thread that takes longer is in a host call that does not return (a hung sound server): the
/// reset goes on without it, and it is joined later (see `Sound`).
pub const RESET_JOIN_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// What the device offers for one stream (its `virtio_snd_pcm_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub id: u32,
    pub direction: Direction,
    /// The stream's `hda_fn_nid`: the Linux driver makes one ALSA PCM device per nid, numbered
    /// by it, so this is the guest's `hw:C,<pcm_device>`.
    pub pcm_device: u32,
    pub formats: u64,
    pub rates: u64,
    pub channels_min: u8,
    pub channels_max: u8,
}

impl StreamInfo {
    pub fn pcm_info(&self) -> PcmInfo {
        PcmInfo {
            hda_fn_nid: self.pcm_device,
            features: 0,
            formats: self.formats,
            rates: self.rates,
            direction: self.direction.wire(),
            channels_min: self.channels_min,
            channels_max: self.channels_max,
        }
    }
}

/// The PCM stream states of §5.14.6.6.1 (`Initial` is the state after device reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcmState {
    Initial,
    ParamsSet,
    Prepared,
    Started,
    Stopped,
    Released,
}

/// Checks SET_PARAMS against what PCM_INFO offered; returns the parameters or a status code.
pub fn validate_params(request: &SetParams, info: &StreamInfo) -> Result<PcmParams, u32> {
    // The driver MUST NOT select features the device did not offer (it offers none).
    if request.features != 0 {
        return Err(S_BAD_MSG);
    }
    let format = PcmFormat::from_code(request.format)
        .filter(|f| mask_has(info.formats, f.code()))
        .ok_or(S_BAD_MSG)?;
    let rate_hz = rate_hz(request.rate)
        .filter(|_| mask_has(info.rates, request.rate))
        .ok_or(S_BAD_MSG)?;
    if request.channels < info.channels_min || request.channels > info.channels_max {
        return Err(S_BAD_MSG);
    }
    let frame_bytes = format.sample_bytes() * u32::from(request.channels);
    let (period, buffer) = (request.period_bytes, request.buffer_bytes);
    if frame_bytes == 0
        || period == 0
        || period % frame_bytes != 0
        || buffer < period
        || buffer % period != 0
    {
        return Err(S_BAD_MSG);
    }
    // Valid, but more than the device is willing to hold, or periods too short to pace.
    if period > MAX_PERIOD_BYTES || buffer > MAX_BUFFER_BYTES {
        return Err(S_NOT_SUPP);
    }
    let period_frames = u64::from(period / frame_bytes);
    if period_frames * 1_000_000 < u64::from(rate_hz) * MIN_PERIOD_US {
        return Err(S_NOT_SUPP);
    }
    Ok(PcmParams {
        format,
        rate_hz,
        channels: request.channels,
        period_bytes: period,
        buffer_bytes: buffer,
    })
}

/// What PREPARE needs to start a period thread.
pub struct StreamResources<'a> {
    pub backend: &'a Arc<dyn Backend>,
    /// The controls (the period thread's gain) and the jacks (its host device's state).
    pub topology: &'a Arc<super::control::Topology>,
    pub tx: &'a Arc<DeviceQueue>,
    pub rx: &'a Arc<DeviceQueue>,
    pub stats: &'a Arc<SoundStats>,
}

/// One PCM stream, driven by control requests from the event loop.
pub struct StreamControl {
    pub info: StreamInfo,
    state: PcmState,
    params: Option<PcmParams>,
    mailbox: Arc<StreamMailbox>,
    thread: Option<JoinHandle<()>>,
    /// Released streams' threads, perhaps still letting the backend drain (bounded): joined
    /// once finished, at a PREPARE, or at reset (their drains cut short).
    retired: Vec<JoinHandle<()>>,
}

impl StreamControl {
    /// `pending_limit` bounds the messages queued for the stream (the queue's size).
    pub fn new(info: StreamInfo, pending_limit: usize) -> std::io::Result<StreamControl> {
        Ok(StreamControl {
            info,
            state: PcmState::Initial,
            params: None,
            mailbox: Arc::new(StreamMailbox::new(info.id, pending_limit)?),
            thread: None,
            retired: Vec::new(),
        })
    }

    pub fn state(&self) -> PcmState {
        self.state
    }

    #[cfg(all(test, feature = "snd-alsa", feature = "snd-wav"))]
    pub fn params(&self) -> Option<PcmParams> {
        self.params
    }

    /// Whether I/O messages are taken: from PREPARE (pre-buffering) to RELEASE.
    pub fn accepts_io(&self) -> bool {
        matches!(
            self.state,
            PcmState::Prepared | PcmState::Started | PcmState::Stopped
        )
    }

    /// Queues an I/O message for the period thread; gives it back if the queue is full.
    pub fn enqueue(&self, message: IoMessage) -> Result<(), IoMessage> {
        self.mailbox.push(message)
    }

    #[cfg(all(test, feature = "snd-alsa", feature = "snd-wav"))]
    pub fn pending_len(&self) -> usize {
        self.mailbox.pending_len()
    }

    pub fn set_params(&mut self, request: &SetParams) -> u32 {
        if !matches!(
            self.state,
            PcmState::Initial | PcmState::ParamsSet | PcmState::Prepared | PcmState::Released
        ) {
            return S_BAD_MSG;
        }
        let params = match validate_params(request, &self.info) {
            Ok(params) => params,
            Err(status) => return status,
        };
        if self.state == PcmState::Prepared {
            // The prepared backend stream has the old parameters: close it now.
            self.end_thread();
        }
        self.params = Some(params);
        self.state = PcmState::ParamsSet;
        S_OK
    }

    pub fn prepare(&mut self, resources: &StreamResources) -> u32 {
        match self.state {
            PcmState::ParamsSet | PcmState::Released => {}
            // Already prepared with these parameters: nothing to redo, nothing to leak.
            PcmState::Prepared => return S_OK,
            _ => return S_BAD_MSG,
        }
        let Some(params) = self.params else {
            return S_BAD_MSG;
        };
        if !self.reap_retired() {
            crate::warn_limited!(
                "virtio-snd: stream {}: earlier threads are stuck in host audio calls",
                self.info.id
            );
            return S_IO_ERR;
        }
        self.mailbox.set_byte_limit(&params);
        let context = period::PeriodContext {
            mailbox: self.mailbox.clone(),
            queue: match self.info.direction {
                Direction::Output => resources.tx.clone(),
                Direction::Input => resources.rx.clone(),
            },
            stats: resources.stats.clone(),
            params,
            topology: resources.topology.clone(),
        };
        let id = self.info.id;
        let spawned = match self.info.direction {
            Direction::Output => resources
                .backend
                .open_output(id, &params, resources.stats)
                .map(|stream| period::spawn_output(context, stream, resources.backend.name())),
            Direction::Input => resources
                .backend
                .open_input(id, &params, resources.stats)
                .map(|stream| period::spawn_input(context, stream, resources.backend.input_name())),
        };
        // The host device opened or not: the stream's jack says so.
        resources.topology.jack_state.set(id, spawned.is_ok());
        match spawned {
            Ok(Ok(thread)) => {
                self.thread = Some(thread);
                self.state = PcmState::Prepared;
                S_OK
            }
            Ok(Err(e)) => {
                crate::error_limited!(
                    "virtio-snd: stream {id}: cannot start its period thread: {e}"
                );
                S_IO_ERR
            }
            Err(e) => {
                crate::warn_limited!("virtio-snd: stream {id}: {e}");
                S_IO_ERR
            }
        }
    }

    pub fn start(&mut self) -> u32 {
        if !matches!(self.state, PcmState::Prepared | PcmState::Stopped) {
            return S_BAD_MSG;
        }
        match self.command(Command::Start) {
            Ok(()) => {
                self.state = PcmState::Started;
                S_OK
            }
            Err(e) => {
                crate::warn_limited!("virtio-snd: stream {}: START failed: {e}", self.info.id);
                S_IO_ERR
            }
        }
    }

    pub fn stop(&mut self) -> u32 {
        if self.state != PcmState::Started {
            return S_BAD_MSG;
        }
        match self.command(Command::Stop) {
            Ok(()) => {
                self.state = PcmState::Stopped;
                S_OK
            }
            // The thread stopped consuming even if the backend failed to pause.
            Err(CommandError::Backend(e)) => {
                crate::warn_limited!("virtio-snd: stream {}: STOP: {e}", self.info.id);
                self.state = PcmState::Stopped;
                S_IO_ERR
            }
            Err(e) => {
                crate::warn_limited!("virtio-snd: stream {}: STOP failed: {e}", self.info.id);
                S_IO_ERR
            }
        }
    }

    /// Flushes (for a bounded time, dropping what the backend does not take by then) and
    /// returns every queued message, then answers. The backend may go on draining in the retired
    /// thread, for a bounded time too.
    pub fn release(&mut self) -> u32 {
        if !matches!(self.state, PcmState::Prepared | PcmState::Stopped) {
            return S_BAD_MSG;
        }
        let result = self.command(Command::Release);
        // The thread ends after a release, whatever it answered.
        self.retired.extend(self.thread.take());
        self.state = PcmState::Released;
        match result {
            Ok(()) => S_OK,
            Err(e) => {
                crate::warn_limited!("virtio-snd: stream {}: RELEASE: {e}", self.info.id);
                S_IO_ERR
            }
        }
    }

    /// Device reset: the stream's threads are told to end, queued messages are dropped (the
    /// driver reinitializes the queues, so nothing may be written to their rings; the caller
    /// revokes them first), and the stream is back to `Initial`. Returns the threads, for the
    /// caller to join: nothing here waits for them, since one may be in a host call that does not
    /// return soon (a hung sound server), and a vCPU resets the device.
    #[must_use = "the stream's threads are to be joined"]
    pub fn reset(&mut self) -> Vec<JoinHandle<()>> {
        // Cut short whatever a thread of the stream waits for: a RELEASE flush, the drain after
        // it, a pacing wait. Left cancelled: the stream is going away (the worker is dropped
        // after a reset), and so is any thread that outlives this.
        self.mailbox.waker.cancel();
        self.mailbox.drain_waker.cancel();
        let mut threads = std::mem::take(&mut self.retired);
        if let Some(thread) = self.thread.take() {
            self.mailbox.post(Command::Exit);
            threads.push(thread);
        }
        drop(self.mailbox.take_all());
        self.params = None;
        self.state = PcmState::Initial;
        threads
    }

    fn command(&mut self, command: Command) -> Result<(), CommandError> {
        match &self.thread {
            Some(thread) if !thread.is_finished() => self.mailbox.send(command),
            _ => Err(CommandError::NoThread),
        }
    }

    /// Ends the period thread (queued messages stay queued) and joins it, waiting at most
    /// [`RESET_JOIN_WAIT`] once it was told: a thread stuck in a host call is left with the old
    /// mailbox (see [`StreamMailbox::successor`]) among the released threads, and the event loop
    /// goes on.
    fn end_thread(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // No answer to wait for: the thread has answered EXIT once it has ended.
        self.mailbox.post(Command::Exit);
        let running = join_within(vec![thread], RESET_JOIN_WAIT);
        if running.is_empty() {
            return;
        }
        match self.mailbox.successor() {
            Ok(next) => {
                crate::warn_limited!(
                    "virtio-snd: stream {}: its thread is stuck in a host audio call; going on \
                     without it",
                    self.info.id
                );
                self.mailbox = Arc::new(next);
                self.retired.extend(running);
            }
            Err(e) => {
                crate::error_limited!(
                    "virtio-snd: stream {}: no new mailbox ({e}): waiting for its thread",
                    self.info.id
                );
                running.into_iter().for_each(|t| join(self.info.id, t));
            }
        }
    }

    /// Joins the released threads that have finished. A released thread still draining is left
    /// to it (it holds its own backend stream), unless [`MAX_DRAINING`] are: then every drain is
    /// cut short and waited for (at most [`RESET_JOIN_WAIT`]), so a guest cycling PREPARE and
    /// RELEASE cannot pile up threads and PCMs. Returns false if that many are still running
    /// (stuck in host calls): the stream is not to be prepared again until a reset.
    fn reap_retired(&mut self) -> bool {
        let threads = std::mem::take(&mut self.retired);
        self.retired = join_within(threads, std::time::Duration::ZERO);
        if self.retired.len() >= MAX_DRAINING {
            self.mailbox.drain_waker.cancel();
            let threads = std::mem::take(&mut self.retired);
            self.retired = join_within(threads, RESET_JOIN_WAIT);
            self.mailbox.drain_waker.uncancel();
        }
        self.retired.len() < MAX_DRAINING
    }
}

fn join(id: u32, thread: JoinHandle<()>) {
    if thread.join().is_err() {
        crate::error_limited!("virtio-snd: stream {id}: its period thread panicked");
    }
}

/// Joins `threads`, waiting at most `bound` for all of them; returns the ones still running.
pub fn join_within(
    threads: Vec<JoinHandle<()>>,
    bound: std::time::Duration,
) -> Vec<JoinHandle<()>> {
    let deadline = std::time::Instant::now() + bound;
    let mut running = threads;
    loop {
        let (finished, left): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|thread| thread.is_finished());
        for thread in finished {
            if thread.join().is_err() {
                log::error!("virtio-snd: a period thread panicked");
            }
        }
        running = left;
        if running.is_empty() || std::time::Instant::now() >= deadline {
            return running;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

impl Drop for StreamControl {
    fn drop(&mut self) {
        // After a device reset there is nothing left; otherwise (a worker dropped without one)
        // the threads get the bound a reset gives them, then are left to end on their own.
        let threads = self.reset();
        drop(join_within(threads, RESET_JOIN_WAIT));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::snd::wire::{all_rates_mask, rate_code};

    fn info() -> StreamInfo {
        StreamInfo {
            pcm_device: 0,
            id: 0,
            direction: Direction::Output,
            formats: PcmFormat::S16.bit() | PcmFormat::U8.bit() | PcmFormat::S24_3.bit(),
            rates: all_rates_mask(),
            channels_min: 1,
            channels_max: 8,
        }
    }

    fn good() -> SetParams {
        SetParams {
            stream_id: 0,
            buffer_bytes: 4 * 4096,
            period_bytes: 4096,
            features: 0,
            channels: 2,
            format: PcmFormat::S16.code(),
            rate: rate_code(48000).unwrap(),
        }
    }

    #[test]
    fn accepts_valid_parameters() {
        let params = validate_params(&good(), &info()).unwrap();
        assert_eq!(params.rate_hz, 48000);
        assert_eq!(params.frame_bytes(), 4);
        // S24_3 stereo: 6-byte frames.
        let odd = SetParams {
            format: PcmFormat::S24_3.code(),
            period_bytes: 6 * 100,
            buffer_bytes: 6 * 100 * 3,
            ..good()
        };
        assert!(validate_params(&odd, &info()).is_ok());
        // The buffer may be a single period.
        let single = SetParams {
            buffer_bytes: 4096,
            ..good()
        };
        assert!(validate_params(&single, &info()).is_ok());
    }

    #[test]
    fn rejects_each_bad_field() {
        let bad = |request: SetParams| validate_params(&request, &info()).unwrap_err();
        assert_eq!(
            bad(SetParams {
                features: 1,
                ..good()
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                features: 1 << 31,
                ..good()
            }),
            S_BAD_MSG
        );
        // A known format the stream does not offer, unknown formats, and codes past 63.
        assert_eq!(
            bad(SetParams {
                format: PcmFormat::Float.code(),
                ..good()
            }),
            S_BAD_MSG
        );
        for format in [0, 20, 63, 64, 200, 255] {
            assert_eq!(
                bad(SetParams { format, ..good() }),
                S_BAD_MSG,
                "format {format}"
            );
        }
        for rate in [0, 13, 14, 15, 63, 64, 255] {
            assert_eq!(bad(SetParams { rate, ..good() }), S_BAD_MSG, "rate {rate}");
        }
        assert_eq!(
            bad(SetParams {
                channels: 0,
                ..good()
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                channels: 9,
                ..good()
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                channels: 255,
                ..good()
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                period_bytes: 0,
                ..good()
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                period_bytes: 0,
                buffer_bytes: 0,
                ..good()
            }),
            S_BAD_MSG
        );
        // Not a multiple of the 4-byte S16 stereo frame (2 would be for mono or U8).
        assert_eq!(
            bad(SetParams {
                period_bytes: 4094,
                buffer_bytes: 4094 * 4,
                ..good()
            }),
            S_BAD_MSG
        );
        let s24_3 = SetParams {
            format: PcmFormat::S24_3.code(),
            ..good()
        };
        assert_eq!(
            bad(SetParams {
                period_bytes: 4096,
                buffer_bytes: 4096 * 2,
                ..s24_3
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                buffer_bytes: 2048,
                ..good()
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                buffer_bytes: 4096 * 3 + 4,
                ..good()
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                buffer_bytes: 0,
                ..good()
            }),
            S_BAD_MSG
        );
        assert_eq!(
            bad(SetParams {
                period_bytes: 2 << 20,
                buffer_bytes: 4 << 20,
                ..good()
            }),
            S_NOT_SUPP
        );
        assert_eq!(
            bad(SetParams {
                period_bytes: 4 << 20,
                buffer_bytes: 4 << 20,
                ..good()
            }),
            S_NOT_SUPP
        );
        assert_eq!(
            bad(SetParams {
                period_bytes: 1 << 20,
                buffer_bytes: 16 << 20,
                ..good()
            }),
            S_NOT_SUPP
        );
        assert_eq!(
            bad(SetParams {
                period_bytes: 0xffff_fffc,
                buffer_bytes: 0xffff_fffc,
                ..good()
            }),
            S_NOT_SUPP
        );
    }

    #[test]
    fn periods_shorter_than_the_floor_are_not_supported() {
        let bad = |request: SetParams| validate_params(&request, &info()).unwrap_err();
        // One frame at 192 kHz (5 us), period = buffer.
        let one_frame = SetParams {
            period_bytes: 4,
            buffer_bytes: 4,
            rate: rate_code(192_000).unwrap(),
            ..good()
        };
        assert_eq!(bad(one_frame), S_NOT_SUPP);
        // One frame short of 1 ms at 48 kHz, and at 8 kHz mono U8.
        assert_eq!(
            bad(SetParams {
                period_bytes: 47 * 4,
                buffer_bytes: 47 * 4 * 4,
                ..good()
            }),
            S_NOT_SUPP
        );
        let u8_mono = SetParams {
            format: PcmFormat::U8.code(),
            channels: 1,
            rate: rate_code(8000).unwrap(),
            ..good()
        };
        assert_eq!(
            bad(SetParams {
                period_bytes: 7,
                buffer_bytes: 7,
                ..u8_mono
            }),
            S_NOT_SUPP
        );
        // Exactly 1 ms is accepted: (request, frame bytes, frames in 1 ms).
        for (request, frame_bytes, frames) in
            [(good(), 4, 48), (one_frame, 4, 192), (u8_mono, 1, 8)]
        {
            let at_floor = SetParams {
                period_bytes: frames * frame_bytes,
                buffer_bytes: frames * frame_bytes * 2,
                ..request
            };
            assert!(validate_params(&at_floor, &info()).is_ok(), "{at_floor:?}");
        }
    }

    #[test]
    fn channel_range_follows_pcm_info() {
        let narrow = StreamInfo {
            channels_min: 2,
            channels_max: 2,
            ..info()
        };
        assert_eq!(
            validate_params(
                &SetParams {
                    channels: 1,
                    period_bytes: 2048,
                    ..good()
                },
                &narrow
            )
            .unwrap_err(),
            S_BAD_MSG
        );
        assert!(validate_params(&good(), &narrow).is_ok());
    }
}
