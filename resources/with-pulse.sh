#!/usr/bin/env bash
# Runs a command with a private, headless PulseAudio server (a null sink at 48 kHz stereo S16)
# and the environment that reaches it: a real-time paced ALSA device (PCM `pulse`) on a machine
# with no sound card. The server is stopped by its PID afterwards.
#   resources/with-pulse.sh cargo test -- --ignored
set -euo pipefail
dir=$(mktemp -d /tmp/canto-pulse.XXXXXX)
chmod 700 "$dir"
export XDG_RUNTIME_DIR="$dir" PULSE_RUNTIME_PATH="$dir" PULSE_STATE_PATH="$dir"
export PULSE_SERVER="unix:$dir/native" CANTO_ALSA_TEST_PCM=pulse
HOME="$dir" pulseaudio -n --daemonize=no --exit-idle-time=-1 --disallow-exit --use-pid-file=no --disable-shm=yes \
  --load="module-null-sink sink_name=vsink format=s16le rate=48000 channels=2 norewinds=1" \
  --load="module-native-protocol-unix auth-anonymous=1 socket=$dir/native" >"$dir/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$dir/native" ] && break; sleep 0.05; done
[ -S "$dir/native" ] || { echo "with-pulse: the PulseAudio server did not start:" >&2; cat "$dir/server.log" >&2; exit 1; }
"$@"
