#!/usr/bin/env bash
# A private, headless PipeWire + WirePlumber with one null sink, for the vhost-device-sound
# comparison (docs/benchmarks.md, "Peers"): nothing touches the user's session or a sound card.
#   resources/bench/pipewire.sh start DIR   starts them; prints the environment to use them
#   resources/bench/pipewire.sh stop DIR    stops them (the pids in DIR/pids)
# Clients (vhost-device-sound, pw-record) find this server through XDG_RUNTIME_DIR=DIR/run and
# PIPEWIRE_REMOTE=canto-bench. The sink is `canto-null` (support.null-audio-sink: a node driven by
# the server's own timer at 48 kHz, S16 stereo in, like the test clip), so its monitor can be
# recorded bit for bit with `pw-record --target canto-null -P stream.capture.sink=true`.
set -euo pipefail
cmd="${1:?usage: $0 start|stop DIR}"
dir="$(mkdir -p "${2:?usage: $0 start|stop DIR}" && cd "$2" && pwd)"
case "$cmd" in
stop)
    if [ -f "$dir/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$dir/pids"
        rm -f "$dir/pids"
    fi
    exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
for tool in pipewire wireplumber pw-record; do
    command -v "$tool" >/dev/null || {
        echo "pipewire.sh: $tool not found (resources/install-deps.sh bench installs it)" >&2
        exit 1
    }
done
"$0" stop "$dir"
mkdir -p "$dir/run" "$dir/config/pipewire/pipewire.conf.d" "$dir/state"
chmod 700 "$dir/run"
cat > "$dir/config/pipewire/pipewire.conf.d/canto-bench.conf" <<'CONF'
context.properties = {
    core.name = canto-bench
    default.clock.rate = 48000
    default.clock.allowed-rates = [ 48000 ]
    default.clock.quantum = 1024
    default.clock.min-quantum = 32
    # No realtime module, no dbus: nothing outside this directory.
    support.dbus = false
}
context.objects = [
    { factory = adapter
      args = {
          factory.name = support.null-audio-sink
          node.name = canto-null
          node.description = "canto bench null sink"
          media.class = Audio/Sink
          audio.format = S16LE
          audio.rate = 48000
          audio.channels = 2
          audio.position = [ FL FR ]
          # Driven by its own timer: plays at 48 kHz with no hardware.
          node.driver = true
          object.linger = true
          monitor.channel-volumes = false
      }
    }
]
CONF
env_vars=(XDG_RUNTIME_DIR="$dir/run" XDG_CONFIG_HOME="$dir/config" XDG_STATE_HOME="$dir/state"
          PIPEWIRE_REMOTE=canto-bench PIPEWIRE_CORE=canto-bench DISABLE_RTKIT=1
          DBUS_SESSION_BUS_ADDRESS=disabled: WIREPLUMBER_DEBUG=1)
: > "$dir/pids"
env "${env_vars[@]}" pipewire > "$dir/pipewire.log" 2>&1 &
echo $! >> "$dir/pids"
for _ in $(seq 100); do [ -S "$dir/run/canto-bench" ] && break; sleep 0.1; done
[ -S "$dir/run/canto-bench" ] || { echo "pipewire.sh: pipewire did not start: $dir/pipewire.log" >&2; exit 1; }
env "${env_vars[@]}" wireplumber > "$dir/wireplumber.log" 2>&1 &
echo $! >> "$dir/pids"
sleep 1
printf '%s\n' "${env_vars[@]}"
