#!/usr/bin/env bash
# Installs the Debian packages Canto needs that are missing on this machine, and nothing else.
# Usage: resources/install-deps.sh [build|guest|rootfs|test|bench|all]   (default: all = what
# make demo and make test need; rootfs is make rootfs-debian's mmdebstrap plus the host's
# espeak-ng the Debian guest's speech is compared with; bench adds what make bench compares
# against: QEMU 10 from bookworm-backports (virtio-sound-pci, vhost-user-snd-pci), and PipeWire +
# WirePlumber with the development headers vhost-device-sound's PipeWire backend builds against)
set -euo pipefail

build=(libasound2-dev pkg-config)
guest=(bison flex libelf-dev bc cpio xz-utils linux-source-6.12 busybox-static alsa-utils python3 gcc make e2fsprogs)
rootfs=(mmdebstrap e2fsprogs espeak-ng)
test=(alsa-utils libasound2-plugins pulseaudio pulseaudio-utils)
bench=(binutils gcc make qemu-system-x86 pipewire wireplumber libpipewire-0.3-dev libspa-0.2-dev
       clang libclang-dev pulseaudio-utils time)
# The bench packages that must come from bookworm-backports: QEMU 7.2 (bookworm) has no
# virtio-sound, and vhost-device-sound 0.3's PipeWire backend needs libpipewire >= 0.3.7x.
backports=(qemu-system-x86 pipewire wireplumber libpipewire-0.3-dev libspa-0.2-dev)

case "${1:-all}" in
  build) want=("${build[@]}") ;;
  guest) want=("${guest[@]}") ;;
  rootfs) want=("${rootfs[@]}") ;;
  test) want=("${test[@]}") ;;
  bench) want=("${bench[@]}") ;;
  all) want=("${build[@]}" "${guest[@]}" "${rootfs[@]}" "${test[@]}") ;;
  *) echo "usage: $0 [build|guest|rootfs|test|bench|all]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# bench wants QEMU 10, not bookworm's 7.2: an installed 7.2 counts as missing.
if [ "${1:-all}" = bench ] && command -v qemu-system-x86_64 >/dev/null \
   && ! qemu-system-x86_64 -device help 2>/dev/null | grep -q virtio-sound-pci; then
  missing+=(qemu-system-x86)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "canto: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "canto: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if [ "${1:-all}" = bench ] && grep -q bookworm /etc/os-release 2>/dev/null; then
  list=/etc/apt/sources.list.d/bookworm-backports.sources
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "canto: adding bookworm-backports ($list) for QEMU 10 and PipeWire 1.4"
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
      | $sudo tee "$list" >/dev/null
  fi
  $sudo apt-get update -qq
  from_backports=()
  rest=()
  for pkg in "${missing[@]}"; do
    if [[ " ${backports[*]} " == *" $pkg "* ]]; then from_backports+=("$pkg"); else rest+=("$pkg"); fi
  done
  [ ${#rest[@]} -eq 0 ] || $sudo apt-get install -y -qq --no-install-recommends "${rest[@]}"
  [ ${#from_backports[@]} -eq 0 ] \
    || $sudo apt-get install -y -qq --no-install-recommends -t bookworm-backports "${from_backports[@]}"
  exit 0
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
