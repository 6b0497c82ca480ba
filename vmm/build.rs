//! Links the `canto` binary as a position-dependent executable (`-no-pie`).
//!
//! A PIE is relocated by the loader at every start: for `canto` that is ~47,000 relative
//! relocations (most of them the PCI ID name table of the `pci-ids` crate, a static array of
//! structs holding `&str`s), which writes, and so makes resident and private, all of
//! `.data.rel.ro` (1.4 MB) and reads all of `.rela.dyn` (1.2 MB) before `main`, whether or not
//! the run names a PCI device. Linked at a fixed address the static linker resolves them once and
//! the tables stay clean file pages that are only read when used (`--print-devices`). The objects
//! are still compiled position-independent (rustc's default), so only the link changes; shared
//! libraries (libc, libasound) keep their own ASLR. What is given up is a random load address
//! for the binary itself (docs/benchmarks.md, "Start and memory").
fn main() {
    println!("cargo:rustc-link-arg-bin=canto=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
