//! One fake driver for the unit tests, the fuzz targets and the bench (cargo feature
//! `test-utils`; always built for this crate's own tests):
//! - [`queue`]: the driver's side of a split queue ([`DriverQueue`]: chains, indirect tables,
//!   loops, used entries) in guest RAM ([`GuestRam`], [`Bump`]).
//! - [`interrupt`]: an interrupt line that counts what the device raised ([`InterruptRecorder`]).
//! - [`sound`]: a virtio-snd device activated on those queues, with control and I/O helpers
//!   ([`SoundRig`]).
//! - [`stream`]: a backend that delegates to another and hooks each period ([`HookedBackend`]).
//! - [`pulse`]: a private PulseAudio server for tests that need a paced ALSA device
//!   ([`PulseServer`]), and the skip-or-fail rule for missing prerequisites.

pub mod interrupt;
pub mod pulse;
pub mod queue;
pub mod sound;
pub mod stream;

pub use interrupt::InterruptRecorder;
pub use pulse::{prerequisite, PulseServer};
pub use queue::{Bump, ChainOpts, Desc, DriverQueue, GuestRam};
pub use sound::{Captured, LoopMode, Recorder, RigLayout, Sent, SoundRig, STALE};
pub use stream::{HookedBackend, HookedInput, HookedOutput, PlayedPeriod};
