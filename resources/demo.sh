#!/usr/bin/env bash
# make demo: boot the Canto guest and play the test clip with aplay inside it.
# With a working ALSA `default` device on the host you hear it; on a machine with no sound card
# the guest's audio goes to a WAV file instead, which is then compared with the clip it played.
set -euo pipefail
cd "$(dirname "$0")/.."
canto=target/release/canto
guest=target/guest
out=target/demo
mkdir -p "$out"

if timeout 5 aplay -q -D default -f S16_LE -r 48000 -c 2 -d 1 /dev/zero >/dev/null 2>&1; then
  sound=(--sound backend=alsa,device=default)
  where="the host's default ALSA device"
else
  sound=(--sound "backend=wav,path=$out/guest-played.wav")
  where="$out/guest-played.wav (this host has no usable ALSA 'default' device)"
fi

echo "canto: booting the guest; its aplay plays a 2 s clip to $where"
if [ -e /sys/module/kvm_pvm ]; then
  echo "canto: this host's KVM is kvm_pvm (software): the guest kernel is interpreted, expect about a minute"
fi
start=$(date +%s.%N)
RUST_LOG=vmm=info "$canto" --kernel "$guest/vmlinux" --initramfs "$guest/initramfs.cpio" \
  --memory 256M --cmdline "canto.run=play" "${sound[@]}" 2> >(grep -E 'sound stats|canto:' >&2)
end=$(date +%s.%N)
printf 'canto: the VM ran for %.1f s and exited 0\n' "$(echo "$end - $start" | bc)"

if [ -f "$out/guest-played.wav" ]; then
  if cmp -s "$out/guest-played.wav" "$guest/test.wav"; then
    echo "canto: $out/guest-played.wav is bit-identical to the clip the guest played ($guest/test.wav)"
  else
    echo "canto: $out/guest-played.wav differs from $guest/test.wav" >&2
    exit 1
  fi
fi

# The sandbox: `canto run` boots the Debian root disk (make rootfs-debian), whose espeak-ng says a
# sentence through virtio-snd. Without a sound card it goes to a WAV file, checked against what the
# host's espeak-ng (the same Debian package) makes of the same sentence.
debian=$guest/rootfs-debian.ext4
sentence="Hello from the Canto sandbox."
if [ "${sound[0]}" = --sound ] && [ "${sound[1]}" = backend=alsa,device=default ]; then
  said=()
  said_where="the host's default ALSA device"
else
  rm -f "$out/sandbox-said.wav"
  sound=(--sound "backend=wav,path=$out/sandbox-said.wav")
  said=("$out/sandbox-said.wav")
  said_where="$out/sandbox-said.wav"
fi
echo "canto: canto run in the Debian guest: espeak-ng says \"$sentence\" into $said_where"
start=$(date +%s.%N)
"$canto" run --rootfs "$debian" --memory 512M "${sound[@]}" -- \
  sh -c "espeak-ng -w /tmp/said.wav '$sentence' && aplay -q -D hw:0,0 /tmp/said.wav && echo 'guest: said it'"
end=$(date +%s.%N)
printf 'canto: canto run took %.1f s (boot included) and exited 0\n' "$(echo "$end - $start" | bc)"

if [ ${#said[@]} -gt 0 ]; then
  if command -v espeak-ng >/dev/null; then
    espeak-ng -w "$out/host-said.wav" "$sentence"
    python3 - "$out/host-said.wav" "${said[0]}" <<'PY'
import sys, wave
host, guest = (wave.open(p) for p in sys.argv[1:3])
want, got = (w.readframes(w.getnframes()) for w in (host, guest))
same = host.getparams()[:3] == guest.getparams()[:3] and got[:len(want)] == want \
    and not got[len(want):].strip(b"\0")
print(f"canto: {sys.argv[2]}: {len(want)} bytes of speech, "
      + ("the same PCM as the host's espeak-ng makes" if same else "DIFFERENT from the host's espeak-ng"))
sys.exit(0 if same else 1)
PY
  else
    echo "canto: ${said[0]} written ($(stat -c %s "${said[0]}") bytes); no espeak-ng on the host to compare with"
  fi
fi
