#!/usr/bin/env bash
# Builds the Debian bookworm root disk: target/guest/rootfs-debian.ext4 (`make rootfs-debian`).
# Usage (from anywhere): bash resources/build-rootfs-debian.sh
#
# mmdebstrap fetches the packages of resources/rootfs/debian-packages.txt from deb.debian.org into
# a tarball cached under $CANTO_CACHE_DIR, else $XDG_CACHE_HOME/canto, else ~/.cache/canto, keyed
# by the package list and this recipe. The image is then made without root or loop mounts: the
# tarball is unpacked into a staging directory, Canto's init bits and the agent go in (the same
# /init as the initramfs), and `mke2fs -d` writes the ext4 image from it. Canto boots it read-only
# (`canto run --rootfs target/guest/rootfs-debian.ext4 -- COMMAND`): the guest's init puts a tmpfs
# overlay on top, so one image serves many VMs.
#
# mmdebstrap runs in its `unshare` mode when not root (needs user namespaces), else `root`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
umask 022
ROOT=$(pwd)
RES=$ROOT/resources
OUT=$ROOT/target/guest
LIST=$RES/rootfs/debian-packages.txt
SUITE=bookworm
MIRROR=${CANTO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${CANTO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canto}

log() { printf 'canto-rootfs: %s\n' "$*" >&2; }
die() { printf 'canto-rootfs: ERROR: %s\n' "$*" >&2; exit 1; }

command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: bash resources/install-deps.sh rootfs"
command -v mke2fs >/dev/null || die "mke2fs (e2fsprogs) is missing"
[ -x "$ROOT/target/agent/canto-agent" ] \
    || die "target/agent/canto-agent is missing: run bash resources/build-agent.sh (make agent) first"

packages=$(grep -v '^[[:space:]]*#' "$LIST" | tr -s ' \t\n' '\n' | grep -v '^$' | LC_ALL=C sort -u | paste -sd, -)
[ -n "$packages" ] || die "no packages in $LIST"

# The key: the package list, the suite and the recipe (bump it when the mmdebstrap call changes).
key=$(printf 'canto-rootfs-debian recipe 1\nsuite %s\npackages %s\n' "$SUITE" "$packages" | sha256sum | cut -c1-16)
cdir=$CACHE/rootfs-debian-$key
tarball=$cdir/rootfs.tar
mkdir -p "$cdir" "$OUT"
exec 9>"$cdir/.lock"
flock 9

t0=$SECONDS
if [ -f "$tarball" ]; then
    log "debian: cached ($tarball)"
else
    log "debian: mmdebstrap $SUITE with $packages (a few minutes; log: $cdir/mmdebstrap.log)"
    mode=unshare
    [ "$(id -u)" -eq 0 ] && mode=root
    # No documentation, manuals or locales: they are most of a small system's size and a
    # sandbox needs none of them. No recommends: the list names what is wanted.
    mmdebstrap --mode="$mode" --variant=apt --include="$packages" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
        "$SUITE" "$cdir/rootfs.tmp.tar" "$MIRROR" > "$cdir/mmdebstrap.log" 2>&1 \
        || { tail -n 30 "$cdir/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $cdir/mmdebstrap.log)"; }
    mv "$cdir/rootfs.tmp.tar" "$tarball"
    log "debian: fetched and installed in $((SECONDS - t0)) s"
fi
exec 9>&-

# ------------------------------------------------------------- the image --
STAGE=$OUT/rootfs-debian.d
rm -rf "$STAGE"
mkdir -p "$STAGE"
# As root, tar keeps the owners; otherwise the files become the caller's (a sandbox's users
# are root in the guest anyway).
tar -xf "$tarball" -C "$STAGE" --numeric-owner
# Canto's init bits, shared with the initramfs and the small root disk.
source "$RES/guest/stage-init.sh"
stage_canto_init "$STAGE" "$ROOT"
# The guest's busybox for /init (Debian's own tools stay what users run).
install -m 0755 /bin/busybox "$STAGE/canto/busybox"
install -m 0644 "$RES/guest/asound.conf" "$STAGE/etc/asound.conf"

make_ext4 "$STAGE" "$OUT/rootfs-debian.ext4"
rm -rf "$STAGE"
log "done: target/guest/rootfs-debian.ext4 ($(stat -c %s "$OUT/rootfs-debian.ext4") bytes) in $((SECONDS - t0)) s"
