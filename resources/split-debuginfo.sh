#!/usr/bin/env bash
# Ships the release `canto` stripped, with its debug info kept apart for profiling:
#   resources/split-debuginfo.sh [target/release/canto]
# writes the DWARF and the symbol table to canto.debug beside it (objcopy --only-keep-debug) and
# replaces the binary by a stripped copy that names it (.gnu_debuglink): perf, gdb and addr2line
# find canto.debug next to the binary by themselves. Run by `make build` after cargo; a later
# `cargo build --release` that relinks puts the unstripped binary back, which runs the same.
set -euo pipefail
bin="${1:-target/release/canto}"
[ -f "$bin" ] || { echo "split-debuginfo: $bin not found" >&2; exit 1; }
dir="$(dirname "$bin")"
name="$(basename "$bin")"
# Already stripped by an earlier run (cargo did not relink): nothing to split.
if ! readelf -S "$bin" | grep -q '\.debug_info'; then
    exit 0
fi
objcopy --only-keep-debug "$bin" "$dir/$name.debug"
# A new file, not an edit in place: cargo hard-links target/release/canto to its deps/ copy,
# which stays unstripped.
( cd "$dir" && objcopy --strip-all --add-gnu-debuglink="$name.debug" "$name" "$name.stripped" )
mv -f "$dir/$name.stripped" "$bin"
echo "split-debuginfo: $bin $(stat -c %s "$bin") bytes, debug info in $dir/$name.debug"
