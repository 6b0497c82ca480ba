# Canto: two commands set everything up on a fresh Debian/Ubuntu machine:
#   make demo   build Canto and the guest, boot it, play sound
#   make test   everything CI checks
SHELL := /bin/bash
CARGO ?= cargo
GUEST := target/guest
CANTO := target/release/canto

.PHONY: all deps build guest demo test check unit guest-tests bench fuzz clean

all: build

deps:
	@bash resources/install-deps.sh all

build:
	@bash resources/install-deps.sh build
	$(CARGO) build --release -p canto

guest:
	@bash resources/install-deps.sh guest
	bash resources/build-guest.sh

demo: build guest
	bash resources/demo.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The tests run beside a private PulseAudio server (resources/with-pulse.sh), so the ALSA tests
# that need a real-time paced device (marked #[ignore] for a plain `cargo test`) run too.
test: deps guest check
	$(CARGO) build -p canto
	bash resources/with-pulse.sh $(CARGO) test --workspace -- --include-ignored

clean:
	$(CARGO) clean
