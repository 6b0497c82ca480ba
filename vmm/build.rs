//! Links the `canto` binary with the functions it runs at start packed together.
//!
//! `vmm/startup-symbols.txt` (written by `resources/startup-order.sh` from a profile of a tiny
//! guest's boot) lists those functions; lld places them first in `.text`, in that order. A start
//! runs a few hundred functions (~220 KB) spread over 2.7 MB of text, and the kernel maps each
//! text page it faults in together with the cached pages of the 64 KiB around it, so scattered
//! they made ~1.8 MiB of the binary resident and packed they make a few windows of it (the
//! tiny guest's peak RSS, issue 16; docs/benchmarks.md, "Start and memory"). A name the build no
//! longer has (a new toolchain changes the hashes) is skipped without a warning; `make build`
//! prints how many are left.
//!
//! Only for targets whose rustc links with lld, as x86_64-unknown-linux-gnu does by default
//! since Rust 1.90 (GNU ld has no --symbol-ordering-file); `CANTO_NO_SYMBOL_ORDER=1` turns it
//! off for a build with another linker.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=startup-symbols.txt");
    println!("cargo:rerun-if-env-changed=CANTO_NO_SYMBOL_ORDER");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || std::env::var_os("CANTO_NO_SYMBOL_ORDER").is_some() {
        return;
    }
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&dir).join("startup-symbols.txt");
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=canto=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=canto=-Wl,--no-warn-symbol-ordering");
    }
}
