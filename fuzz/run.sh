#!/usr/bin/env bash
# Runs every fuzz target, one after another, for SECONDS seconds or until N executions, and
# prints per target the executions (libFuzzer's own stat::number_of_executed_units), the crashes
# and the timeouts it found.
#
#   bash fuzz/run.sh SECONDS [TARGET...]            (make fuzz / make fuzz-smoke call it)
#   bash fuzz/run.sh --runs N [SECONDS] [TARGET...] (N executions per target, summed over the
#                                                    processes; SECONDS, if given, still caps it)
#
# Environment:
#   FUZZ_RUNS       the same as --runs N.
#   FUZZ_SANITIZER  none (default) or address: cargo fuzz -s; ASAN works here but runs these
#                   thread- and syscall-heavy targets at about a quarter of the speed.
#   FUZZ_TIMEOUT    seconds one input may take before libFuzzer calls it a timeout (default 2;
#                   every input takes milliseconds). A timeout fails the run like a crash, and is
#                   counted apart from crashes.
#   FUZZ_ARGS       more libFuzzer options.
#   FUZZ_JOBS       fuzzer processes per target, run side by side on the same corpus (default:
#                   the number of CPUs); the executions printed are their sum.
#
# Works on stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags (-Zsanitizer for
# ASAN) to a stable rustc. New corpus entries go to fuzz/corpus-work/<target>/ (not in git); the
# committed seeds in fuzz/corpus/<target>/ are read, never written. A crash or timeout stops its
# process (libFuzzer stops at the first one) and leaves its input in fuzz/artifacts/<target>/
# (crash-*, timeout-*, oom-*); the script goes on with the next target and exits 1 at the end.
set -euo pipefail

usage() {
    echo "usage: run.sh SECONDS [TARGET...] | run.sh --runs N [SECONDS] [TARGET...]" >&2
    exit 2
}
is_number() { [[ "${1:-}" =~ ^[0-9]+$ ]]; }

RUNS=${FUZZ_RUNS:-}
if [ "${1:-}" = "--runs" ]; then
    RUNS=${2:-}
    is_number "$RUNS" || usage
    shift 2
fi
SECONDS_PER_TARGET=0 # libFuzzer: no time limit
if is_number "${1:-}"; then
    SECONDS_PER_TARGET=$1
    shift
elif [ -z "$RUNS" ]; then
    usage
fi
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(snd_control snd_io pci_common_config rng vsock blk_requests)
fi
SANITIZER=${FUZZ_SANITIZER:-none}
TIMEOUT=${FUZZ_TIMEOUT:-2}
JOBS=${FUZZ_JOBS:-$(nproc)}
CARGO_FUZZ_VERSION=0.13.2
# Executions per process: N over the processes, rounded up, so their sum is at least N.
RUNS_ARG=()
LIMIT="${SECONDS_PER_TARGET}s"
if [ -n "$RUNS" ]; then
    RUNS_ARG=(-runs=$(((RUNS + JOBS - 1) / JOBS)))
    LIMIT="$RUNS executions"
    if [ "$SECONDS_PER_TARGET" -ne 0 ]; then
        LIMIT="$LIMIT or ${SECONDS_PER_TARGET}s"
    fi
fi

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
    echo "fuzz: $target for $LIMIT, $JOBS process(es) (sanitizer $SANITIZER, timeout ${TIMEOUT}s, logs fuzz/logs/$target.*.log)"
    rm -f logs/"$target".*.log logs/"$target".log
    started=$(date +%s)
    # Each process reads the whole corpus, then adds what it finds to corpus-work/, where the
    # others pick it up (libFuzzer re-reads the corpus directory as it goes).
    pids=()
    for job in $(seq 1 "$JOBS"); do
        # shellcheck disable=SC2086
        cargo fuzz run -s "$SANITIZER" -a "$target" "corpus-work/$target" "corpus/$target" -- \
            -max_total_time="$SECONDS_PER_TARGET" "${RUNS_ARG[@]}" -timeout="$TIMEOUT" \
            -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-} >"logs/$target.$job.log" 2>&1 &
        pids+=($!)
    done
    statuses=()
    for pid in "${pids[@]}"; do
        st=0
        wait "$pid" || st=$?
        statuses+=("$st")
    done
    elapsed=$(($(date +%s) - started))
    execs=0
    rate=0
    crashes=0
    timeouts=0
    for job in $(seq 1 "$JOBS"); do
        log="logs/$target.$job.log"
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        r=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        execs=$((execs + ${n:-0}))
        rate=$((rate + ${r:-0}))
        # libFuzzer stops a process at its first failure, so each process found at most one.
        # Classified from its log: a hang is "ERROR: libFuzzer: timeout after N seconds"
        # (input in artifacts/<target>/timeout-*); anything else that ended the process early
        # (a panic, a signal, out-of-memory, a build or run failure, no final stats) is a crash.
        if grep -q 'ERROR: libFuzzer: timeout' "$log"; then
            timeouts=$((timeouts + 1))
        elif [ "${statuses[$((job - 1))]}" -ne 0 ] || [ -z "$n" ]; then
            crashes=$((crashes + 1))
        fi
    done
    line="$target: $execs executions in ${elapsed}s ($rate/s), $crashes crash(es), $timeouts timeout(s)"
    if [ "$crashes" -ne 0 ] || [ "$timeouts" -ne 0 ]; then
        failed=1
        artifact=$(cat logs/"$target".*.log | grep -o 'Test unit written to [^ ]*' | tail -1 | sed 's/Test unit written to //')
        artifact=${artifact#"$PWD/"} # cargo fuzz gives an absolute path
        line="$line; reproducer: fuzz/${artifact:-artifacts/$target/}; logs: fuzz/logs/$target.*.log"
        cat logs/"$target".*.log | grep -E 'panicked at|ERROR: libFuzzer|==ERROR|SUMMARY|ALARM' | head -5 | sed 's/^/    /'
    fi
    echo "fuzz: $line"
    summary+=("$line")
done

echo "fuzz summary ($LIMIT per target, sanitizer $SANITIZER, timeout ${TIMEOUT}s per input):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
