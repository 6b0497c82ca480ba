//! Canto's benchmarks (`make bench`): the harness that measures boot time and memory of the
//! `canto` binary against QEMU on the same guests, and the virtio-snd TX path at unit level
//! through the devices crate's public API. See docs/benchmarks.md.
//!
//! main.rs reads a `config::Config`, runs `sections::run_all` (one module per section of the
//! report) into one `report::Report`, and writes it. The rest are the tools the sections use:
//! `audio` and `device` (the unit-level audio path), `vmm` (running a VMM process and sampling
//! it), `kv` (reading `key=value` lines), `util` (statistics, /proc).

pub mod audio;
pub mod backends;
pub mod config;
pub mod device;
pub mod host;
pub mod kv;
pub mod peers;
pub mod report;
pub mod sections;
pub mod util;
pub mod vmm;
