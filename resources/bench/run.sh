#!/usr/bin/env bash
# `make bench`: Canto's benchmarks (docs/benchmarks.md). Prints one table and writes
# target/bench/report.md, target/bench/pacing.svg and target/bench/periods.csv.
#
#   BENCH_QUICK=1          small guests only (pvh-hello, driver-guest) and the unit-level audio
#                          figures: no Linux guest (~1-2 min instead of ~6-10)
#   BENCH_NO_QEMU=1        no QEMU comparison (QEMU is installed when missing otherwise)
#   BENCH_NO_LINUX=1       no Linux guest
#   BENCH_RUNS=5           runs per VMM for the small guests
#   BENCH_LINUX_RUNS=3     runs per VMM for the Linux guest (~45 s each on kvm_pvm)
#   BENCH_PACING_SECONDS=20  length of the unit-level steady playback (60 for the full target)
#   BENCH_QEMU_MACHINE=microvm  QEMU's -M (pc works too; SeaBIOS adds seconds on kvm_pvm)
#   BENCH_NO_MICRO=1       skip the criterion micro-benchmarks
#   BENCH_NO_PEERS=1       skip the playback on QEMU 10 virtio-sound-pci and vhost-device-sound
#   BENCH_CAPTURE_SECONDS=5  length of each capture run (the capture section)
#   BENCH_ONLY=a,b         only these sections (bench/src/sections module names)
#   FIRECRACKER_BIN, CH_BIN  add a Firecracker / Cloud Hypervisor column (pvh-hello, Linux);
#                          unset, the binaries in ${XDG_CACHE_HOME:-~/.cache}/canto/peers/bin/
#                          (firecracker, cloud-hypervisor) are used when they are there
#   BENCH_LINUX_ROOTFS=F   the Linux rows' read-only root disk (default target/guest/rootfs.ext4)
#   BENCH_LINUX_INITRAMFS=1  the Linux rows unpack target/guest/initramfs.cpio instead of the disk
# Expects `cargo build --release -p canto` done (the Makefile's `bench: build` does it).
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO="${CARGO:-cargo}"

if command -v dpkg-query >/dev/null 2>&1; then
    bash resources/install-deps.sh bench \
        || echo "bench: could not install binutils/gcc/QEMU: the comparison columns may be empty" >&2
fi

mkdir -p target/bench
# Firecracker and Cloud Hypervisor are in no registry: a release binary put once in the cache
# directory is found there by every later run.
peers_bin="${XDG_CACHE_HOME:-$HOME/.cache}/canto/peers/bin"
if [ -z "${FIRECRACKER_BIN:-}" ] && [ -x "$peers_bin/firecracker" ]; then
    export FIRECRACKER_BIN="$peers_bin/firecracker"
fi
if [ -z "${CH_BIN:-}" ] && [ -x "$peers_bin/cloud-hypervisor" ]; then
    export CH_BIN="$peers_bin/cloud-hypervisor"
fi
# The vhost-user sound daemon for the peers section, built once (~10 min) from crates.io into the
# same cache directory, so a new checkout does not build it again.
peers_root="${XDG_CACHE_HOME:-$HOME/.cache}/canto/peers"
if [ -z "${BENCH_NO_PEERS:-}" ] && [ -z "${BENCH_QUICK:-}" ] && [ -z "${VHOST_DEVICE_SOUND_BIN:-}" ]; then
    if [ ! -x "$peers_root/bin/vhost-device-sound" ]; then
        echo "bench: building vhost-device-sound 0.3.0 (PipeWire backend) into $peers_root"
        "$CARGO" install --locked vhost-device-sound --version 0.3.0 --no-default-features \
            --features pw-backend --root "$peers_root" \
            || echo "bench: vhost-device-sound did not build: its column will be skipped" >&2
    fi
    if [ -x "$peers_root/bin/vhost-device-sound" ]; then
        export VHOST_DEVICE_SOUND_BIN="$peers_root/bin/vhost-device-sound"
    fi
fi
bash resources/bench/build-pvh-hello.sh target/bench/pvh-hello.elf
make -s -C tests/driver-guest

if [ -z "${BENCH_NO_MICRO:-}" ]; then
    echo "bench: criterion micro-benchmarks (about 25 s)"
    CRITERION_HOME="$PWD/target/criterion" "$CARGO" bench -p canto-bench --bench micro -- --noplot
fi
"$CARGO" build --release -p canto-bench
# Each VMM's binary leaves the page cache once before the runs, so that every one is mapped as read
# from disk and not as the build or the install just wrote it: canto's peak RSS right after its
# link varied 3.6-4.9 MiB, and 3.4-3.9 once the file was read back (docs/benchmarks.md, "Start and
# memory").
for vmm_bin in "${CANTO_BIN:-target/release/canto}" "${FIRECRACKER_BIN:-}" "${CH_BIN:-}" \
    "$(command -v "${QEMU_BIN:-qemu-system-x86_64}" || true)"; do
    if [ -n "$vmm_bin" ] && [ -f "$vmm_bin" ]; then
        dd if="$vmm_bin" iflag=nocache count=0 status=none || true
    fi
done
CRITERION_HOME="$PWD/target/criterion" ./target/release/canto-bench
