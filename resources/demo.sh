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
