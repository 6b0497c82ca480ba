#!/usr/bin/env bash
# The order of the functions `canto` runs as it starts, which the release link puts next to each
# other (vmm/build.rs passes vmm/startup-symbols.txt to lld as --symbol-ordering-file).
#
#   resources/startup-order.sh             regenerate vmm/startup-symbols.txt (valgrind, /dev/kvm)
#   resources/startup-order.sh --check     how many of its symbols the built binary still has
#
# Why: the kernel maps a text page with the 64 KiB of the file around it, so the few hundred
# functions a start runs (~220 KB), scattered over 2.7 MB of text, made ~1.8 MiB of it resident;
# packed together they take a few 64 KiB windows (docs/benchmarks.md, "Start and memory").
#
# The profile: callgrind over the tiny PVH guest's boot, once with the seccomp filters (valgrind
# cannot install them, so that run ends after compiling them) and once with --seccomp off (the
# whole run, up to the guest's reset). Symbols are mangled names: a symbol's hash changes with the
# toolchain or a dependency's version, not with the code, so a rustc upgrade is the usual reason to
# regenerate; a stale name is skipped by the linker (the order only shrinks what is resident, it
# never changes what runs). `make build` prints the --check line.
set -euo pipefail
cd "$(dirname "$0")/.."
order=vmm/startup-symbols.txt
deps_bin() {
    # cargo's own copy of the binary keeps its symbol table (make build strips target/release/canto).
    ls -t target/release/deps/canto-* 2>/dev/null | grep -v '\.d$' | head -1
}

if [ "${1:-}" = --check ]; then
    bin="$(deps_bin)"
    [ -n "$bin" ] || { echo "startup-order: no release build (make build)" >&2; exit 1; }
    total=$(grep -c . "$order")
    found=$(nm --defined-only "$bin" | awk '{print $3}' | sort -u | comm -12 - <(sort -u "$order") | wc -l)
    echo "startup-order: $found of $total symbols of $order are in the binary$(
        [ $((found * 10)) -ge $((total * 8)) ] || echo ' (stale: regenerate with resources/startup-order.sh)')"
    exit 0
fi

for tool in valgrind; do
    command -v "$tool" >/dev/null || { echo "startup-order: '$tool' not found: apt-get install valgrind" >&2; exit 1; }
done
[ -w /dev/kvm ] || { echo "startup-order: /dev/kvm is not usable here (the profile boots a guest)" >&2; exit 1; }
cargo build --release -p canto
bin="$(deps_bin)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash resources/bench/build-pvh-hello.sh "$tmp/pvh-hello.elf"
profile() {
    local out="$1"
    shift
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$out" "$bin" \
        --kernel "$tmp/pvh-hello.elf" --memory 32M --serial stdio --sound backend=null "$@" \
        >"$out.log" 2>&1
}
profile "$tmp/seccomp.out" || true
if ! profile "$tmp/whole.out" --seccomp off || ! grep -q BENCH-HELLO "$tmp/whole.out.log"; then
    echo "startup-order: the profiled run did not boot the guest and end with its reset:" >&2
    grep -v '^==' "$tmp/whole.out.log" | tail -5 >&2
    exit 1
fi
# Callgrind names each object and function once, at its first mention (`ob=(ID) PATH`,
# `fn=(ID) NAME`, or as a callee: `cob=`, `cfn=`), then by ID alone; the IDs are per file. Keep the
# functions that ran in canto's own binary (not libc's), in the order they were first seen.
awk -v bin="$(basename "$bin")" '
    FNR == 1 { delete obname; delete fnname }
    /^c?ob=\(/ { id = $1; sub(/^c?ob=/, "", id); if (NF > 1) obname[id] = $2
                 if ($1 ~ /^ob=/) in_canto = (obname[id] ~ ("/" bin "$")); next }
    /^c?fn=\(/ { id = $1; sub(/^c?fn=/, "", id); if (NF > 1) fnname[id] = $2
                 if ($1 !~ /^fn=/ || !in_canto) next
                 name = fnname[id]; if (name ~ /^_/ && !seen[name]++) print name }
' "$tmp/seccomp.out" "$tmp/whole.out" >"$tmp/order"
[ -s "$tmp/order" ] || { echo "startup-order: the profile named no function of $bin" >&2; exit 1; }
mv "$tmp/order" "$order"
echo "startup-order: $(wc -l <"$order") functions in $order; rebuild (make build) to link them in this order"
