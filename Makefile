# Canto: two commands set everything up on a fresh Debian/Ubuntu machine:
#   make demo   build Canto and the guest, boot it, play sound
#   make test   everything CI checks
SHELL := /bin/bash
CARGO ?= cargo
GUEST := target/guest
CANTO := target/release/canto

.PHONY: all deps build guest rootfs-debian agent demo test check unit guest-tests bench fuzz soak clean

all: build

deps:
	@bash resources/install-deps.sh all

# The release binary ships stripped, its debug info in target/release/canto.debug (found by perf
# and gdb through its .gnu_debuglink). Its start-up functions are linked together
# (vmm/startup-symbols.txt, vmm/build.rs); the last line says how many of them the build still has.
build:
	@bash resources/install-deps.sh build
	$(CARGO) build --release -p canto
	bash resources/split-debuginfo.sh $(CANTO)
	@bash resources/startup-order.sh --check

guest: agent
	@bash resources/install-deps.sh guest
	bash resources/build-guest.sh

# A Debian bookworm root disk (packages: resources/rootfs/debian-packages.txt), cached by its package
# list: target/guest/rootfs-debian.ext4 (`canto run --rootfs target/guest/rootfs-debian.ext4 -- ...`).
rootfs-debian: agent
	@bash resources/install-deps.sh rootfs
	bash resources/build-rootfs-debian.sh

# The guest agent as a static binary (docs/agent-protocol.md): target/agent/canto-agent.
agent:
	bash resources/build-agent.sh

demo: build guest rootfs-debian
	bash resources/demo.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The devices without the sound backends (no libasound) stay clean too.
	$(CARGO) clippy -p canto-devices --no-default-features --all-targets -- -D warnings

# The tests run beside a private PulseAudio server (resources/with-pulse.sh), so the ALSA tests
# that need a real-time paced device (marked #[ignore] for a plain `cargo test`) run too.
test: deps guest rootfs-debian check
	$(CARGO) build -p canto
	mkdir -p target
	set -o pipefail; bash resources/with-pulse.sh $(CARGO) test --workspace -- --include-ignored 2>&1 | tee target/test.log
	$(MAKE) fuzz-smoke
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log

# Fuzzing (docs/fuzzing.md): each cargo-fuzz target in fuzz/ for FUZZ_SECONDS, or until FUZZ_RUNS
# executions if set, one after another, on stable Rust (RUSTC_BOOTSTRAP=1, set by fuzz/run.sh),
# each input limited to FUZZ_TIMEOUT seconds (default 2); prints executions, crashes and timeouts
# per target.
FUZZ_SECONDS ?= 300
fuzz:
	bash fuzz/run.sh $(if $(FUZZ_RUNS),--runs $(FUZZ_RUNS),$(FUZZ_SECONDS))

# A short run of every target (20 s each), for make test.
.PHONY: fuzz-smoke
fuzz-smoke:
	bash fuzz/run.sh 20

# Benchmarks (docs/benchmarks.md): boot time and memory against QEMU on the same guests, the
# virtio-snd audio path, criterion micro-benchmarks -> target/bench/report.md. About 6-10 minutes;
# BENCH_QUICK=1 for the small guests only (1-2 minutes). Settings: resources/bench/run.sh.
bench: build
	@if [ -z "$$BENCH_QUICK" ] && [ -z "$$BENCH_NO_LINUX" ]; then $(MAKE) guest; fi
	bash resources/bench/run.sh

# Soak (docs/soak.md), not part of make test: SOAK_MINUTES (default 60) of the driver-guest's
# `soak` mode, which floods every virtio-snd and virtio-rng queue while one stream plays; canto's
# VmRSS and CPU every SOAK_INTERVAL s (default 60) -> target/soak/soak.csv. Fails if VmRSS grows
# more than 1 MiB after the 2-minute warm-up, CPU goes over 1.5 cores in any interval or the log
# grows more than 64 KiB. A quick check: make soak SOAK_MINUTES=3 SOAK_INTERVAL=20. More settings:
# resources/soak.sh.
SOAK_MINUTES ?= 60
SOAK_INTERVAL ?= 60
soak: build
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_INTERVAL=$(SOAK_INTERVAL) bash resources/soak.sh

clean:
	$(CARGO) clean
