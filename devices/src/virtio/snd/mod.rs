//! virtio-snd: the virtio sound device (VIRTIO 1.2 §5.14, device type 25).
//!
//! # Using it
//! ```no_run
//! use canto_devices::virtio::snd::{probe, BackendConfig, Sound, SoundConfig};
//! let mut config: SoundConfig = "backend=alsa,capture=alsa,streams=1:1".parse().unwrap();
//! if let Err(e) = probe(&config) {
//!     eprintln!("sound: {e}; using the null backend");
//!     config = config.with_backend(BackendConfig::Null);
//! }
//! let sound = Sound::new(config).unwrap();
//! // ... hand it to the virtio-pci transport; read sound.stats() for counters.
//! ```
//!
//! # Design
//! - Topology: output streams, then input streams ([`SoundConfig`]), each offering every rate
//!   from 8 to 192 kHz, 1 to 8 channels and the backend's formats; a channel map per stream and
//!   channel count; one jack per stream (connected while its host device works, no remapping);
//!   with VIRTIO_SND_F_CTLS a volume and a switch per stream ([`mixer`]), applied in the period
//!   copy. The eventq's buffers are held for jack events and CTL_NOTIFY ([`events`]).
//! - The event loop runs the device's worker: control requests are carried out and answered at
//!   once; TX/RX messages are validated and queued on their stream as references to guest
//!   memory (no copy). Malformed messages come back at once with IO_ERR (or with length 0 if
//!   they have no room for a status); messages for a stream that is not prepared, or beyond
//!   what a stream may hold (the queue's size, twice the driver's buffer), with IO_ERR.
//! - PREPARE starts a period thread per stream, paced by the backend (ALSA poll, or a monotonic
//!   clock for null and WAV). Per period it copies guest PCM once, straight into the backend's
//!   period buffer, and returns each message once all its bytes were handed over.
//!   `latency_bytes` in a message's status is what the backend holds and has not played yet
//!   (ALSA's delay; 0 for null and WAV). With nothing queued, ALSA and null get silence and WAV
//!   records nothing.
//! - STOP keeps queued messages. RELEASE hands the queued bytes to the backend for at most
//!   0.3 s and returns every message (status OK) before it is answered; what a paced device did
//!   not take by then is dropped and counted (`tx_bytes_dropped_on_release`). ALSA then plays out
//!   what it holds (at most 0.5 s, in the released thread; the next PREPARE does not wait for
//!   it) while the stream is released. Device reset cuts every flush and drain short (what ALSA still held is
//!   counted in `tx_bytes_dropped_at_close`), joins every thread and drops queued messages.
//! - Locks: each stream's message queue, and the txq/rxq rings (shared by the event loop, which
//!   pops, and the period threads, which return chains), and each queue's revocation lock (read
//!   by a period thread across a copy from or into guest memory, written once at reset). None is
//!   held across audio I/O or a wait, so a vCPU's notification never waits for audio, and a
//!   vCPU's reset waits for no host call: stream threads are joined for at most 250 ms, and
//!   one stuck in a host call is left behind (its queues revoked) and joined later.

pub mod backend;
pub mod config;
pub(crate) mod control;
pub mod events;
pub(crate) mod io;
pub(crate) mod mailbox;
pub mod mixer;
pub(crate) mod period;
pub mod stats;
pub(crate) mod stream;
pub mod waker;
pub mod wire;
pub(crate) mod worker;

// The device tests record through the WAV backend and meet host faults through ALSA: they need
// both backends built (the default).
#[cfg(all(test, feature = "snd-alsa", feature = "snd-wav"))]
mod capture_tests;
#[cfg(all(test, feature = "snd-alsa", feature = "snd-wav"))]
mod ctl_tests;
#[cfg(all(test, feature = "snd-alsa", feature = "snd-wav"))]
mod fault_tests;
#[cfg(all(test, feature = "snd-alsa", feature = "snd-wav"))]
mod tests;

use std::sync::{Arc, Mutex, PoisonError};

pub use backend::{probe, Backend, BackendError};
pub use config::{BackendConfig, CaptureConfig, ConfigError, SoundConfig};
pub use io::Direction;
pub use mixer::{ControlKind, Controls};
pub use stats::{SoundStats, SoundStatsSnapshot};

use self::control::Topology;
use self::events::{Event, Jacks, SoundEvents};
use self::wire::NUM_QUEUES;
use self::worker::{SoundWorker, WorkerQueues};
use super::queue::DeviceQueue;
use super::{
    ActivateContext, ActivateError, SharedSubscriber, VirtioDevice, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1, VIRTIO_ID_SOUND,
};

/// The size of each of the four queues the device offers.
pub const QUEUE_SIZE: u16 = 256;

/// Why a sound device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid sound configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("sound backend: {0}")]
    Backend(#[from] BackendError),
}

/// The virtio sound device.
pub struct Sound {
    config: SoundConfig,
    backend: Arc<dyn Backend>,
    topology: Arc<Topology>,
    events: Arc<SoundEvents>,
    config_space: [u8; 16],
    queue_sizes: [u16; NUM_QUEUES],
    stats: Arc<SoundStats>,
    worker: Option<Arc<Mutex<SoundWorker>>>,
    /// Period threads a device reset did not wait for (stuck in a host audio call): joined once
    /// they end. While more than [`MAX_STRAGGLERS`] are left, the device does not activate.
    stragglers: Vec<std::thread::JoinHandle<()>>,
}

/// The most period threads stuck in host calls the device keeps while it runs again: beyond,
/// activation fails (DEVICE_NEEDS_RESET) rather than let a guest that resets the device over
/// and over pile up threads and host PCMs.
const MAX_STRAGGLERS: usize = 16;

/// How long dropping the device waits for stragglers (VMM exit).
const STRAGGLER_WAIT_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Sound {
    /// Builds the device and its backend. WAV files are created here (a bad path fails now);
    /// ALSA devices are opened when a stream is prepared (see [`probe`] to check them first).
    pub fn new(config: SoundConfig) -> Result<Sound, Error> {
        config.validate()?;
        let backend = backend::create(&config)?;
        Sound::with_backend(config, backend)
    }

    /// Builds the device on a given backend (tests, or a backend the VMM made itself).
    pub fn with_backend(config: SoundConfig, backend: Arc<dyn Backend>) -> Result<Sound, Error> {
        config.validate()?;
        let events = Arc::new(SoundEvents::default());
        // Jack N is stream N's: connected while its host device can be opened.
        let initial: Vec<bool> = (0..config.streams())
            .map(|id| {
                backend.device_available(if id < config.outputs {
                    Direction::Output
                } else {
                    Direction::Input
                })
            })
            .collect();
        let jacks = Arc::new(Jacks::new(&initial, events.clone()));
        let mut topology = Topology::new(&config, backend.formats(), jacks);
        if let Some(caps) = backend.input_caps() {
            // The capture source's own formats (a WAV file's single format, rate and channels).
            for stream in topology
                .streams
                .iter_mut()
                .filter(|s| s.direction == Direction::Input)
            {
                stream.formats = caps.formats;
                stream.rates = caps.rates;
                stream.channels_min = caps.channels_min;
                stream.channels_max = caps.channels_max;
            }
        }
        let mut config_space = [0u8; 16];
        // One jack per stream; a channel map per stream and channel count; two controls per
        // stream (`controls` means something only with VIRTIO_SND_F_CTLS, but reads the same
        // either way).
        config_space[0..4].copy_from_slice(&(topology.jacks.len() as u32).to_le_bytes());
        config_space[4..8].copy_from_slice(&config.streams().to_le_bytes());
        config_space[8..12].copy_from_slice(&(topology.chmaps.len() as u32).to_le_bytes());
        config_space[12..16].copy_from_slice(&topology.controls.count().to_le_bytes());
        Ok(Sound {
            config,
            backend,
            topology: Arc::new(topology),
            events,
            config_space,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            stats: Arc::new(SoundStats::default()),
            worker: None,
            stragglers: Vec::new(),
        })
    }

    /// The worker of an active device (the fake driver's direct kicks).
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn worker(&self) -> Option<&Arc<Mutex<SoundWorker>>> {
        self.worker.as_ref()
    }

    pub fn config(&self) -> &SoundConfig {
        &self.config
    }

    /// The backend's name: `alsa`, `wav` or `null`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The device's counters now (cumulative over resets).
    pub fn stats(&self) -> SoundStatsSnapshot {
        self.stats.snapshot()
    }

    /// The live counters, to read from another thread.
    pub fn stats_handle(&self) -> Arc<SoundStats> {
        self.stats.clone()
    }

    /// Every stream's volume and switch (read them; set them with [`Sound::set_control`]).
    pub fn controls(&self) -> &Arc<Controls> {
        &self.topology.controls
    }

    /// Sets control `id` from the host side (not the guest): a change is sent to the driver as
    /// CTL_NOTIFY, so the guest's mixer shows it. Returns whether the value changed; None for a
    /// value out of the control's range or an unknown control.
    pub fn set_control(&self, id: u32, value: i32) -> Option<bool> {
        match self.topology.controls.write(id, value) {
            mixer::WriteResult::Changed => {
                // At most 32 controls.
                self.events.post(Event::CtlNotify {
                    control: id as u16,
                    mask: wire::CTL_EVT_MASK_VALUE,
                });
                Some(true)
            }
            mixer::WriteResult::Unchanged => Some(false),
            mixer::WriteResult::Invalid => None,
        }
    }

    /// Whether jack `jack` (stream `jack`'s) is connected now.
    pub fn jack_connected(&self, jack: u32) -> bool {
        self.topology.jack_state.is_connected(jack)
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            let running = worker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .shutdown();
            self.stragglers.extend(running);
        }
        self.reap_stragglers();
    }

    /// Joins the stragglers that have ended.
    fn reap_stragglers(&mut self) {
        let threads = std::mem::take(&mut self.stragglers);
        self.stragglers = stream::join_within(threads, std::time::Duration::ZERO);
    }
}

impl VirtioDevice for Sound {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_SOUND
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | 1 << wire::F_CTLS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| self.config_space.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-snd: ignoring a {}-byte write to read-only config at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<Vec<SharedSubscriber>, ActivateError> {
        if ctx.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                got: ctx.queues.len(),
                want: NUM_QUEUES,
            });
        }
        self.stop_worker();
        if self.stragglers.len() > MAX_STRAGGLERS {
            return Err(ActivateError::Backend(format!(
                "{} sound threads are still stuck in host audio calls since earlier resets",
                self.stragglers.len()
            )));
        }
        let mut slots: [Option<DeviceQueue>; NUM_QUEUES] = Default::default();
        for active in ctx.queues {
            let index = usize::from(active.index);
            let queue = DeviceQueue::new(
                "virtio-snd",
                active,
                ctx.mem.clone(),
                ctx.interrupt.clone(),
                ctx.acked_features,
                worker::CHAIN_LIMITS,
            );
            match slots.get_mut(index) {
                Some(slot) if slot.is_none() => *slot = Some(queue),
                _ => {
                    return Err(ActivateError::QueueCount {
                        got: index + 1,
                        want: NUM_QUEUES,
                    })
                }
            }
        }
        let [Some(controlq), Some(eventq), Some(txq), Some(rxq)] = slots else {
            return Err(ActivateError::QueueCount {
                got: 0,
                want: NUM_QUEUES,
            });
        };
        let worker = SoundWorker::new(
            WorkerQueues {
                controlq,
                eventq,
                txq,
                rxq,
            },
            self.topology.clone(),
            self.backend.clone(),
            self.stats.clone(),
            worker::Extras {
                events: self.events.clone(),
                ctls: ctx.acked_features & (1 << wire::F_CTLS) != 0,
            },
        )
        .map_err(ActivateError::Worker)?;
        let worker = Arc::new(Mutex::new(worker));
        self.worker = Some(worker.clone());
        Ok(vec![worker as SharedSubscriber])
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Sound {
    fn drop(&mut self) {
        self.stop_worker();
        // Give the stuck ones a last chance to finish (a WAV file its header); the rest are
        // left behind, the process being about to end.
        let threads = std::mem::take(&mut self.stragglers);
        let left = stream::join_within(threads, STRAGGLER_WAIT_AT_EXIT);
        if !left.is_empty() {
            log::warn!(
                "virtio-snd: {} period thread(s) still stuck in host audio calls, left behind",
                left.len()
            );
        }
    }
}
