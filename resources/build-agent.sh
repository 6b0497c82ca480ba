#!/usr/bin/env bash
# Builds the guest agent as a static binary: target/agent/canto-agent.
# There is no musl toolchain here, so it is glibc with crt-static (the agent uses no NSS or
# dlopen, which static glibc cannot serve). Its own target dir keeps these RUSTFLAGS from
# invalidating the normal build.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
TARGET=x86_64-unknown-linux-gnu
# Stripped: it goes into guest images, where its size is boot time.
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
RUSTFLAGS="-C target-feature=+crt-static" \
    "$CARGO" build --release -p canto-agent --target "$TARGET" --target-dir target/agent-build
mkdir -p target/agent
cp "target/agent-build/$TARGET/release/canto-agent" target/agent/canto-agent
if ldd target/agent/canto-agent 2>&1 | grep -Eq 'not a dynamic executable|statically linked'; then
    echo "canto-agent: static binary target/agent/canto-agent ($(stat -c %s target/agent/canto-agent) bytes)"
else
    echo "canto-agent: target/agent/canto-agent is not static:" >&2
    ldd target/agent/canto-agent >&2 || true
    exit 1
fi
