#!/usr/bin/env bash
# Builds pvh-hello, the smallest guest both Canto and QEMU boot through PVH (see pvh-hello.S).
#   resources/bench/build-pvh-hello.sh OUT.elf
# Needs binutils (as, ld), which `make test` installs for the driver-guest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: $0 OUT.elf}"
for tool in as ld; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build-pvh-hello: '$tool' not found: install binutils (apt-get install binutils)" >&2
        exit 1
    }
done
mkdir -p "$(dirname "$out")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
as --64 "$here/pvh-hello.S" -o "$tmp/pvh-hello.o"
ld -nostdlib -static -z noexecstack -T "$here/pvh-hello.ld" "$tmp/pvh-hello.o" -o "$tmp/pvh-hello.elf"
mv "$tmp/pvh-hello.elf" "$out"
