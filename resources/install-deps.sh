#!/usr/bin/env bash
# Installs the Debian packages Canto needs that are missing on this machine, and nothing else.
# Usage: resources/install-deps.sh [build|guest|rootfs|test|bench|all]   (default: all = what
# make demo and make test need; bench adds QEMU for make bench; rootfs is make rootfs-debian's
# mmdebstrap plus the host's espeak-ng the Debian guest's speech is compared with)
set -euo pipefail

build=(libasound2-dev pkg-config)
guest=(bison flex libelf-dev bc cpio xz-utils linux-source-6.12 busybox-static alsa-utils python3 gcc make e2fsprogs)
rootfs=(mmdebstrap e2fsprogs espeak-ng)
test=(alsa-utils libasound2-plugins pulseaudio pulseaudio-utils)
bench=(binutils gcc make qemu-system-x86)

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
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "canto: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "canto: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
