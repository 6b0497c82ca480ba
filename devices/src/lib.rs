//! Canto's emulated devices, kept apart from KVM and from the event loop.
//!
//! - [`bus`]: address-range buses (port I/O and MMIO) that the vCPU threads dispatch exits to.
//! - [`legacy`]: the 16550 serial console and the i8042 reset line.
//! - [`log_limit`]: rate-limited logging for anything a guest can make happen again and again.
//! - [`pci`]: the PCI root bus, configuration space and MSI-X.
//! - [`thread_start`]: the hook each device thread runs first (the VMM confines it there).
//! - [`virtio`]: the `VirtioDevice` trait, the virtio-pci transport and the virtio devices.
//!
//! Devices never call KVM themselves: interrupts go out through traits the VMM implements
//! (an irqfd write, in practice), and queue notifications come in through eventfds that the VMM
//! registers as ioeventfds and routes through its event loop.

pub mod bus;
pub mod legacy;
pub mod log_limit;
pub mod pci;
pub mod thread_start;
pub mod virtio;
