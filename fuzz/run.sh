#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds, one after another, and prints per target the
# executions (libFuzzer's own stat::number_of_executed_units) and the crashes it found.
#
#   bash fuzz/run.sh SECONDS [TARGET...]      (make fuzz / make fuzz-smoke call it)
#
# Environment:
#   FUZZ_SANITIZER  none (default) or address: cargo fuzz -s; ASAN works here but runs these
#                   thread- and syscall-heavy targets at about a quarter of the speed.
#   FUZZ_TIMEOUT    seconds one input may take before libFuzzer calls it a hang (default 30).
#   FUZZ_ARGS       more libFuzzer options.
#   FUZZ_JOBS       fuzzer processes per target, run side by side on the same corpus (default:
#                   the number of CPUs); the executions printed are their sum.
#
# Works on stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags (-Zsanitizer for
# ASAN) to a stable rustc. New corpus entries go to fuzz/corpus-work/<target>/ (not in git); the
# committed seeds in fuzz/corpus/<target>/ are read, never written. A crash stops its target
# (libFuzzer stops at the first one) and leaves its input in fuzz/artifacts/<target>/; the
# script goes on with the next target and exits 1 at the end.
set -euo pipefail

SECONDS_PER_TARGET=${1:?usage: run.sh SECONDS [TARGET...]}
shift
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(snd_control snd_io pci_common_config blk_requests)
fi
SANITIZER=${FUZZ_SANITIZER:-none}
TIMEOUT=${FUZZ_TIMEOUT:-30}
JOBS=${FUZZ_JOBS:-$(nproc)}
CARGO_FUZZ_VERSION=0.13.2

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install, from crates.io)"
    cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked
fi

# The seeds are generated from valid requests; regenerating them is idempotent.
cargo run --quiet --example seeds
# -a: debug assertions and overflow checks, so an arithmetic overflow a guest can cause is a
# crash here rather than a silent wrap.
for target in "${TARGETS[@]}"; do
    cargo fuzz build -s "$SANITIZER" -a "$target"
done

mkdir -p logs
summary=()
failed=0
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus-work/$target" "artifacts/$target"
    echo "fuzz: $target for ${SECONDS_PER_TARGET}s, $JOBS process(es) (sanitizer $SANITIZER, logs fuzz/logs/$target.*.log)"
    rm -f logs/"$target".*.log logs/"$target".log
    before=$(ls "artifacts/$target" | wc -l)
    # Each process reads the whole corpus, then adds what it finds to corpus-work/, where the
    # others pick it up (libFuzzer re-reads the corpus directory as it goes).
    pids=()
    for job in $(seq 1 "$JOBS"); do
        # shellcheck disable=SC2086
        cargo fuzz run -s "$SANITIZER" -a "$target" "corpus-work/$target" "corpus/$target" -- \
            -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -rss_limit_mb=2048 \
            -print_final_stats=1 ${FUZZ_ARGS:-} >"logs/$target.$job.log" 2>&1 &
        pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do
        wait "$pid" || status=$?
    done
    execs=0
    rate=0
    for job in $(seq 1 "$JOBS"); do
        log="logs/$target.$job.log"
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        r=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        if [ -z "$n" ]; then
            status=1 # no final stats: the process did not finish its run (see its log)
        fi
        execs=$((execs + ${n:-0}))
        rate=$((rate + ${r:-0}))
    done
    after=$(ls "artifacts/$target" | wc -l)
    crashes=$((after - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # a crash libFuzzer could not save, or a build/run failure: see the log
    fi
    line="$target: $execs executions ($rate/s), $crashes crash(es)"
    if [ "$crashes" -ne 0 ]; then
        failed=1
        artifact=$(cat logs/"$target".*.log | grep -o 'Test unit written to [^ ]*' | tail -1 | sed 's/Test unit written to //')
        line="$line; reproducer: fuzz/${artifact:-artifacts/$target/}; logs: fuzz/logs/$target.*.log"
        cat logs/"$target".*.log | grep -E 'panicked at|ERROR: libFuzzer|==ERROR|SUMMARY' | head -5 | sed 's/^/    /'
    fi
    echo "fuzz: $line"
    summary+=("$line")
done

echo "fuzz summary (${SECONDS_PER_TARGET}s per target, sanitizer $SANITIZER):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
