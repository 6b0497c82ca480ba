//! Virtio transports: how a [`super::VirtioDevice`] reaches the driver. Canto has one, the modern
//! virtio-pci transport ([`pci`]); the PCI bus itself is `crate::pci`.

pub mod pci;
