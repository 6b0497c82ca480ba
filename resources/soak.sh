#!/usr/bin/env bash
# `make soak` (docs/soak.md): one long run of the driver-guest's `soak` mode, which keeps every
# virtio-snd and virtio-rng queue flooded while output stream 1 plays, until this script stops it.
# Meanwhile it samples canto's resident memory (VmRSS, /proc/PID/status) and CPU time
# (utime+stime, /proc/PID/stat) every SOAK_INTERVAL seconds into target/soak/soak.csv, and at the
# end checks that memory stayed flat after the warm-up and CPU stayed bounded. Exit 0 = PASS.
#
# Settings (environment):
#   SOAK_MINUTES=60         how long the flood runs
#   SOAK_INTERVAL=60        seconds between samples
#   SOAK_WARMUP=120         seconds before the RSS baseline (the first sample at or after it)
#   SOAK_RSS_MAX_KIB=1024   allowed VmRSS growth from the baseline to the end (and its peak)
#   SOAK_CPU_MAX=1.5        allowed CPU per interval, in cores (vCPU + device threads)
#   SOAK_LOG_MAX_BYTES=65536  allowed growth of canto's stderr (its log) after the warm-up
#   SOAK_SOUND=backend=null,capture=null,streams=2:1   canto's --sound (needs outputs 0, 1 and input 2)
#   SOAK_GUEST_ARGS=        more driver-guest arguments (e.g. rng_reset=0 report=30)
#   CARGO=cargo
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_MINUTES=${SOAK_MINUTES:-60}
SOAK_INTERVAL=${SOAK_INTERVAL:-60}
SOAK_WARMUP=${SOAK_WARMUP:-120}
SOAK_RSS_MAX_KIB=${SOAK_RSS_MAX_KIB:-1024}
SOAK_CPU_MAX=${SOAK_CPU_MAX:-1.5}
SOAK_LOG_MAX_BYTES=${SOAK_LOG_MAX_BYTES:-65536}
SOAK_SOUND=${SOAK_SOUND:-backend=null,capture=null,streams=2:1}
SOAK_GUEST_ARGS=${SOAK_GUEST_ARGS:-}
CARGO=${CARGO:-cargo}

die() { echo "soak: $*" >&2; exit 2; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$SOAK_MINUTES" && [ "$SOAK_MINUTES" -ge 1 ] || die "SOAK_MINUTES=$SOAK_MINUTES: expected a whole number >= 1"
is_uint "$SOAK_INTERVAL" && [ "$SOAK_INTERVAL" -ge 1 ] || die "SOAK_INTERVAL=$SOAK_INTERVAL: expected a whole number >= 1"
is_uint "$SOAK_WARMUP" || die "SOAK_WARMUP=$SOAK_WARMUP: expected a whole number of seconds"
is_uint "$SOAK_RSS_MAX_KIB" || die "SOAK_RSS_MAX_KIB=$SOAK_RSS_MAX_KIB: expected KiB"
is_uint "$SOAK_LOG_MAX_BYTES" || die "SOAK_LOG_MAX_BYTES=$SOAK_LOG_MAX_BYTES: expected bytes"
[[ $SOAK_CPU_MAX =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "SOAK_CPU_MAX=$SOAK_CPU_MAX: expected cores, e.g. 1.5"
DURATION=$((SOAK_MINUTES * 60))
[ "$DURATION" -ge $((SOAK_WARMUP + SOAK_INTERVAL)) ] ||
    die "a $DURATION s run has no sample after the ${SOAK_WARMUP} s warm-up plus one interval: raise SOAK_MINUTES or lower SOAK_WARMUP"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || die "/dev/kvm is not usable by $(id -un)"

echo "soak: building canto (release) and the driver-guest"
$CARGO build --release -p canto
make -s -C tests/driver-guest
CANTO=target/release/canto
ELF=tests/driver-guest/build/driver-guest.elf

OUT=target/soak
mkdir -p "$OUT"
# One soak at a time per tree: a second one would truncate this one's files.
exec 9>"$OUT/.lock"
flock -n 9 || die "another soak is running in $OUT (lock $OUT/.lock)"
CSV=$OUT/soak.csv
SERIAL=$OUT/serial.log
STDERR=$OUT/canto.log
rm -f "$CSV"
: >"$SERIAL"
: >"$STDERR"

CMDLINE="test=soak $SOAK_GUEST_ARGS"
"$CANTO" --kernel "$ELF" --memory 64M --serial stdio --sound "$SOAK_SOUND" \
    --cmdline "${CMDLINE% }" </dev/null >"$SERIAL" 2>"$STDERR" &
PID=$!
stop_canto() {
    if kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    wait "$PID" 2>/dev/null || true
}
trap stop_canto EXIT
trap 'echo "soak: interrupted" >&2; exit 130' INT TERM HUP

guest_failed() {
    echo "soak: FAIL: $1" >&2
    grep -a '^DG FAIL' "$SERIAL" >&2 || true
    echo "--- last guest lines ($SERIAL):" >&2
    tail -n 5 "$SERIAL" >&2 || true
    echo "--- canto stderr ($STDERR):" >&2
    tail -n 10 "$STDERR" >&2 || true
    exit 1
}

# The flood starts when the guest says so (a few seconds at most, even interpreted).
for _ in $(seq 300); do
    grep -aq '^DG soak: started' "$SERIAL" && break
    kill -0 "$PID" 2>/dev/null || guest_failed "canto exited before the soak started"
    sleep 0.2
done
grep -aq '^DG soak: started' "$SERIAL" || guest_failed "the guest did not start the soak within 60 s"

CLK_TCK=$(getconf CLK_TCK)
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status" 2>/dev/null; }
# utime + stime in clock ticks: fields 14 and 15, counted after the ")" that ends the name.
cpu_ticks() { sed 's/.*) //' "/proc/$PID/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }
now_ns() { date +%s%N; }

echo "soak: canto pid $PID, $SOAK_MINUTES min, a sample every $SOAK_INTERVAL s -> $CSV"
echo "elapsed_s,rss_kib,cpu_s,cpu_cores,log_bytes" >"$CSV"
printf '%10s %10s %10s %10s %10s\n' elapsed_s rss_kib cpu_s cpu_cores log_bytes
T0=$(now_ns)
PREV_TICKS=$(cpu_ticks)
PREV_NS=$T0
sample() {
    local rss ticks ns log cores elapsed
    rss=$(rss_kib) ticks=$(cpu_ticks) ns=$(now_ns)
    [ -n "$rss" ] && [ -n "$ticks" ] || return 1
    log=$(stat -c %s "$STDERR")
    elapsed=$(awk -v a="$ns" -v b="$T0" 'BEGIN { printf "%.1f", (a - b) / 1e9 }')
    cores=$(awk -v t="$ticks" -v p="$PREV_TICKS" -v hz="$CLK_TCK" -v a="$ns" -v b="$PREV_NS" \
        'BEGIN { printf "%.3f", (t - p) / hz / ((a - b) / 1e9) }')
    local cpu_s
    cpu_s=$(awk -v t="$ticks" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
    echo "$elapsed,$rss,$cpu_s,$cores,$log" >>"$CSV"
    printf '%10s %10s %10s %10s %10s\n' "$elapsed" "$rss" "$cpu_s" "$cores" "$log"
    PREV_TICKS=$ticks PREV_NS=$ns
}

N=$((DURATION / SOAK_INTERVAL))
for i in $(seq "$N"); do
    DEADLINE=$((T0 + i * SOAK_INTERVAL * 1000000000))
    while [ "$(now_ns)" -lt "$DEADLINE" ]; do
        kill -0 "$PID" 2>/dev/null || guest_failed "canto exited during the soak"
        grep -aq '^DG FAIL' "$SERIAL" && guest_failed "the guest reported a failure"
        sleep 1
    done
    sample || guest_failed "canto exited during the soak"
done
grep -aq '^DG FAIL' "$SERIAL" && guest_failed "the guest reported a failure"
LAST_GUEST=$(grep -a '^DG soak: [0-9]' "$SERIAL" | tail -n 1 || true)
stop_canto
trap - EXIT

# The verdict, from the CSV: RSS growth from the first sample at or after the warm-up to the
# last one (and to the peak in between), the largest per-interval CPU, and the log's growth over
# the same span.
awk -F, -v warm="$SOAK_WARMUP" -v rss_max="$SOAK_RSS_MAX_KIB" -v cpu_max="$SOAK_CPU_MAX" \
    -v log_max="$SOAK_LOG_MAX_BYTES" \
    -v minutes="$SOAK_MINUTES" -v guest="$LAST_GUEST" '
NR == 1 { next }
{
    n++; cpu_sum += $4; if ($4 > cpu_peak) cpu_peak = $4
    if (base == "" && $1 >= warm) { base = $2; base_t = $1; peak = $2; log_base = $5 }
    if (base != "" && $2 > peak) peak = $2
    last = $2; last_t = $1; log_bytes = $5
}
END {
    if (base == "") { print "soak: FAIL: no sample after the warm-up"; exit 1 }
    growth = last - base; peak_growth = peak - base
    log_growth = log_bytes - log_base
    ok = growth <= rss_max && peak_growth <= rss_max && cpu_peak <= cpu_max && log_growth <= log_max
    printf "soak: %s %d min: VmRSS %d KiB at %d s -> %d KiB at %d s (%+d KiB, peak %+d KiB; limit %d); " \
           "CPU per interval mean %.3f max %.3f cores (limit %s); canto stderr %d bytes (%+d; limit %d)\n",
           ok ? "PASS" : "FAIL", minutes, base, base_t, last, last_t, growth, peak_growth, rss_max,
           cpu_sum / n, cpu_peak, cpu_max, log_bytes, log_growth, log_max
    if (guest != "") print "soak: the last guest line: " guest
    exit ok ? 0 : 1
}' "$CSV"
