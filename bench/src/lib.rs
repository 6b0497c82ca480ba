//! Canto's benchmarks (`make bench`): the harness that measures boot time and memory of the
//! `canto` binary against QEMU on the same guests, and the virtio-snd TX path at unit level
//! through the devices crate's public API. See docs/benchmarks.md.

pub mod audio;
pub mod backends;
pub mod device;
pub mod report;
pub mod util;
pub mod vmm;
