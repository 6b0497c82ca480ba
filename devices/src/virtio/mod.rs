//! Virtio devices and the virtio-pci transport that carries them.
//!
//! A device implements [`VirtioDevice`]: it knows its type, features, configuration space and
//! queues, and nothing about PCI. The transport (`pci`) owns negotiation, the status state machine
//! and queue setup, and calls [`VirtioDevice::activate`] once the driver sets DRIVER_OK.

pub mod block;
pub mod chain;
pub mod drain;
pub mod queue;
pub mod rng;
pub mod snd;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod transport;
pub mod vsock;

use std::sync::{Arc, Mutex};

use event_manager::{MutEventSubscriber, SubscriberId};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device ids (VIRTIO 1.2 §5), as `virtio-bindings` has them.
pub use virtio_bindings::virtio_ids::{VIRTIO_ID_RNG, VIRTIO_ID_SOUND, VIRTIO_ID_VSOCK};

/// VIRTIO_F_VERSION_1: the modern (1.x) interface. Every Canto device offers it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// VIRTIO_F_RING_EVENT_IDX: used/avail event fields suppress notifications and interrupts.
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// VIRTIO_F_INDIRECT_DESC: chains may point at indirect descriptor tables. No Canto device
/// offers it yet; [`chain::read_chain`] refuses indirect tables unless it was negotiated.
pub const VIRTIO_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// What an interrupt is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// The configuration space changed.
    Config,
    /// The used ring of this queue has new entries.
    Queue(u16),
}

/// How a device raises an interrupt to the driver. The transport implements it (MSI-X vectors
/// routed to irqfds), so a device thread raises an interrupt with one eventfd write.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()>;
    /// The device hit an error only a reset clears (a ring the driver broke): the transport sets
    /// DEVICE_NEEDS_RESET and sends a configuration change notification (VIRTIO 1.2 §2.1.2).
    fn needs_reset(&self) -> std::io::Result<()>;
    /// Whether the device may touch guest memory now: on PCI, the function's Bus Master Enable.
    /// While it is false a device neither reads nor writes guest RAM (no chains popped, no
    /// buffers filled or completed); [`queue::DeviceQueue`] holds what it would have done and
    /// the transport re-kicks the queues once it is true again.
    fn dma_allowed(&self) -> bool {
        true
    }
}

/// A subscriber of the VMM's event loop.
pub type SharedSubscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Adds and removes event-loop subscribers from any thread. The VMM implements it over the event
/// manager's remote endpoint; tests implement it over a local event manager.
pub trait SubscriberRegistrar: Send + Sync {
    fn add(&self, subscriber: SharedSubscriber) -> std::io::Result<SubscriberId>;
    fn remove(&self, id: SubscriberId) -> std::io::Result<()>;
}

/// A queue the driver has set up and enabled, handed to the device on activation.
pub struct ActiveQueue {
    /// The queue's index in the device.
    pub index: u16,
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (a KVM ioeventfd on the notify address).
    pub kick: EventFd,
}

/// Everything a device needs to run.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<ActiveQueue>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("cannot start the device's worker: {0}")]
    Worker(#[source] std::io::Error),
    #[error("device backend failed: {0}")]
    Backend(String),
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (4 = entropy, 25 = sound).
    fn device_type(&self) -> u32;
    /// The largest size the driver may give each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space; read-only or out-of-range bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device once the driver has set DRIVER_OK. Returns the subscribers the event
    /// loop must run for it (queue kicks arrive there).
    fn activate(&mut self, ctx: ActivateContext) -> Result<Vec<SharedSubscriber>, ActivateError>;
    /// Stops the device: its threads end, and it lets go of the queues and guest memory.
    fn reset(&mut self);
}
