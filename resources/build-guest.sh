#!/usr/bin/env bash
# Build the Canto guest image: target/guest/{vmlinux,bzImage,vmlinux-up,initramfs.cpio,rootfs.ext4,test.wav}.
# Usage (from anywhere): bash resources/build-guest.sh
# See resources/README.md for what is built, the cache and the measurements.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
umask 022 # file modes in the initramfs must not depend on the caller
ROOT=$(pwd)
RES=$ROOT/resources/guest
OUT=$ROOT/target/guest

log() { printf 'canto-guest: %s\n' "$*" >&2; }
die() { printf 'canto-guest: ERROR: %s\n' "$*" >&2; exit 1; }

KSRC_PKG=linux-source-6.12
KSRC_TAR=/usr/src/linux-source-6.12.tar.xz
KSRC_DIR=linux-source-6.12 # top directory inside the tarball

# ---------------------------------------------------------------- packages --
# Everything the build needs on a fresh Debian bookworm machine.
# (linux-source-6.12 comes from bookworm-security.)
PKGS=(make gcc libc6-dev bison flex libelf-dev bc cpio xz-utils patch binutils
      python3 gzip lz4 coreutils util-linux "$KSRC_PKG" busybox-static alsa-utils libasound2-data
      libasound2-dev pkg-config e2fsprogs)

ensure_packages() {
    local missing=() p
    for p in "${PKGS[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing missing packages: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "missing packages (${missing[*]}) and not root; run: apt-get install -y ${missing[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ------------------------------------------------------------------ kernel --
CACHE=${CANTO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canto}

# The config fragments of a kernel variant, in merge order: "smp" (target/guest/vmlinux and
# bzImage) is kernel.config; "up" (target/guest/vmlinux-up) adds kernel-up.config on top.
variant_fragments() {
    case $1 in
        smp) echo "$RES/kernel.config" ;;
        up) echo "$RES/kernel.config $RES/kernel-up.config" ;;
        *) die "unknown kernel variant $1" ;;
    esac
}

kernel_key() {
    # Anything that changes the kernel changes the key: the config fragments,
    # the patches (names and contents, in order), the source package version
    # and the recipe version below (bump it when the build steps change). The
    # SMP variant's key is the one it always had (its cache stays valid).
    local variant=$1 f
    {
        echo "canto-guest-kernel-recipe 2"
        echo "source $KSRC_PKG $(dpkg-query -W -f='${Version}' "$KSRC_PKG")"
        for f in $(variant_fragments "$variant"); do
            if [ "$f" = "$RES/kernel.config" ]; then
                echo "== kernel.config"
            else
                echo "== $(basename "$f")"
            fi
            cat "$f"
        done
        local p
        for p in "$RES"/patches/*.patch; do
            echo "== patch $(basename "$p")"; cat "$p"
        done
    } | sha256sum | cut -c1-16
}

# Fails naming every fragment line that did not survive olddefconfig.
verify_config() {
    local cfg=$1 frag=$2 line sym bad=()
    while IFS= read -r line; do
        case $line in
            CONFIG_*=*)
                grep -qxF "$line" "$cfg" || bad+=("$line (got: $(grep -m1 "^${line%%=*}=" "$cfg" || echo 'not set'))")
                ;;
            "# CONFIG_"*" is not set")
                sym=${line#\# }; sym=${sym%% *}
                if grep -q "^$sym=" "$cfg"; then bad+=("$sym should be off (got: $(grep -m1 "^$sym=" "$cfg"))"); fi
                ;;
        esac
    done < "$frag"
    if [ ${#bad[@]} -gt 0 ]; then
        printf 'canto-guest: ERROR: kernel .config does not match resources/guest/kernel.config:\n' >&2
        printf 'canto-guest:   %s\n' "${bad[@]}" >&2
        return 1
    fi
}

# The variant's fragments merged into one (a later fragment's line for a symbol wins), for
# verify_config.
merged_fragment() {
    local out=$1 f
    : > "$out"
    for f in $(variant_fragments "$2"); do
        python3 - "$out" "$f" <<'PY'
import re, sys
out, frag = sys.argv[1], sys.argv[2]
def sym(line):
    m = re.match(r"(CONFIG_\w+)=", line) or re.match(r"# (CONFIG_\w+) is not set", line)
    return m and m.group(1)
lines = open(out).read().splitlines()
new = [l for l in open(frag).read().splitlines() if sym(l)]
gone = {sym(l) for l in new}
open(out, "w").write("\n".join([l for l in lines if sym(l) not in gone] + new) + "\n")
PY
    done
}

# build_kernel VARIANT: "smp" -> target/guest/{vmlinux,bzImage,vmlinux.config};
# "up" -> target/guest/{vmlinux-up,vmlinux-up.config} (no bzImage: the bzImage test boots the
# SMP build).
build_kernel() {
    local variant=$1 key kdir src ver t0 frag targets
    key=$(kernel_key "$variant")
    kdir=$CACHE/kernel-$key
    mkdir -p "$kdir"
    # One build per cache directory at a time.
    exec 9>"$kdir/.lock"
    flock 9

    frag=$kdir/fragment.config
    merged_fragment "$frag" "$variant"
    targets="vmlinux bzImage"
    [ "$variant" = up ] && targets=vmlinux
    if [ -f "$kdir/vmlinux" ] && { [ "$variant" = up ] || [ -f "$kdir/bzImage" ]; }; then
        log "kernel ($variant): cached ($kdir/vmlinux)"
    else
        src=$kdir/$KSRC_DIR
        if [ ! -f "$src/.canto-patched" ]; then
            log "kernel: extracting $KSRC_TAR into $kdir"
            rm -rf "$kdir/extract.tmp" "$src"
            mkdir -p "$kdir/extract.tmp"
            tar -xJf "$KSRC_TAR" -C "$kdir/extract.tmp"
            local p
            for p in "$RES"/patches/*.patch; do
                log "kernel: applying $(basename "$p")"
                patch -d "$kdir/extract.tmp/$KSRC_DIR" -p1 --quiet --forward < "$p" \
                    || die "patch $(basename "$p") does not apply to $KSRC_PKG"
            done
            touch "$kdir/extract.tmp/$KSRC_DIR/.canto-patched"
            mv "$kdir/extract.tmp/$KSRC_DIR" "$src"
            rm -rf "$kdir/extract.tmp"
        fi
        if [ ! -f "$src/.canto-configured" ]; then
            log "kernel ($variant): configuring (tinyconfig + $(variant_fragments "$variant" | sed "s|$RES/||g"))"
            {
                make -C "$src" tinyconfig
                # shellcheck disable=SC2046 # one word per fragment
                "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" $(variant_fragments "$variant")
                make -C "$src" olddefconfig
            } > "$kdir/config.log" 2>&1 || { tail -n 30 "$kdir/config.log" >&2; die "kernel configuration failed (log: $kdir/config.log)"; }
            verify_config "$src/.config" "$frag" || die "kernel configuration check failed"
            touch "$src/.canto-configured"
        fi
        ver=$(make -s -C "$src" kernelversion 2>/dev/null || echo 6.12)
        log "kernel ($variant): building kernel $ver (first build takes ~3-5 min; log: $kdir/build.log)..."
        t0=$SECONDS
        # One build gives both images: the ELF vmlinux (booted through PVH) and the bzImage
        # wrapping the same kernel (LZ4-compressed: its decompressor runs interpreted on kvm_pvm).
        # shellcheck disable=SC2086 # one word per make target
        make -C "$src" -j"$(nproc)" $targets > "$kdir/build.log" 2>&1 \
            || { tail -n 40 "$kdir/build.log" >&2; die "kernel build failed (log: $kdir/build.log)"; }
        log "kernel: built in $((SECONDS - t0)) s"
        verify_config "$src/.config" "$frag" || die "kernel configuration check failed after build"
        # PVH entry: an ELF note of owner "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
        readelf -n "$src/vmlinux" | grep -A3 '^  Xen' | grep -q '0x00000012' \
            || die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); is CONFIG_PVH set?"
        cp "$src/vmlinux" "$kdir/vmlinux.tmp"
        cp "$src/.config" "$kdir/config"
        if [ "$variant" = smp ]; then cp "$src/arch/x86/boot/bzImage" "$kdir/bzImage"; fi
        mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
    fi
    exec 9>&-
    mkdir -p "$OUT"
    if [ "$variant" = smp ]; then
        cp "$kdir/vmlinux" "$OUT/vmlinux.tmp" && mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
        cp "$kdir/bzImage" "$OUT/bzImage.tmp" && mv "$OUT/bzImage.tmp" "$OUT/bzImage"
        cp "$kdir/config" "$OUT/vmlinux.config"
    else
        cp "$kdir/vmlinux" "$OUT/vmlinux-up.tmp" && mv "$OUT/vmlinux-up.tmp" "$OUT/vmlinux-up"
        cp "$kdir/config" "$OUT/vmlinux-up.config"
    fi
}

# ---------------------------------------------------------------- test.wav --
build_wav() {
    python3 "$RES/make-test-wav.py" "$OUT/test.wav.tmp"
    mv "$OUT/test.wav.tmp" "$OUT/test.wav"
}

# ---------------------------------------------------------- ALSA selftests --
# The kernel's own ALSA selftests (tools/testing/selftests/alsa: mixer-test and pcm-test), from
# the guest kernel's source package, built against the host's alsa-lib: the same Debian
# libasound the guest gets with aplay. Only their sources are taken out of the tarball (cached per
# source version); the kernel build is not involved. The tests run them from
# /canto/alsa-selftests (pcm-test reads pcm-test.conf and conf.d/ from its working directory;
# conf.d/canto.conf is Canto's card).
build_alsa_selftests() {
    local ver src out t
    ver=$(dpkg-query -W -f='${Version}' "$KSRC_PKG")
    src=$CACHE/alsa-selftests-$ver
    if [ ! -f "$src/.extracted" ]; then
        log "alsa selftests: extracting tools/testing/selftests/alsa from $KSRC_TAR"
        rm -rf "$src"
        mkdir -p "$src"
        tar -xJf "$KSRC_TAR" -C "$src" --strip-components=4 \
            "$KSRC_DIR/tools/testing/selftests/alsa" "$KSRC_DIR/tools/testing/selftests/kselftest.h" \
            || die "cannot extract the ALSA selftests from $KSRC_TAR"
        touch "$src/.extracted"
    fi
    out=$OUT/alsa-selftests
    rm -rf "$out"
    mkdir -p "$out/conf.d"
    for t in mixer-test pcm-test; do
        # conf.c is the selftests' libatest.so, linked in: no rpath games in the guest.
        gcc -O2 $(pkg-config --cflags alsa) -o "$out/$t" "$src/alsa/$t.c" "$src/alsa/conf.c" \
            $(pkg-config --libs alsa) -lm -lpthread > "$out/$t.log" 2>&1 \
            || { cat "$out/$t.log" >&2; die "building the ALSA selftest $t failed"; }
        rm -f "$out/$t.log"
    done
    install -m 0644 "$src/alsa/pcm-test.conf" "$out/pcm-test.conf"
    install -m 0644 "$RES/alsa-selftests/canto.conf" "$out/conf.d/canto.conf"
}

# --------------------------------------------------------------- initramfs --
# Copy a file (following symlinks) to the same path under the staging root.
stage_file() {
    local src=$1 dst=${2:-$1}
    mkdir -p "$STAGE$(dirname "$dst")"
    cp -L "$src" "$STAGE$dst"
}

build_initramfs() {
    STAGE=$OUT/initramfs.d
    rm -rf "$STAGE"
    mkdir -p "$STAGE"/bin
    # /init, /etc/fstab, the agent, the run scripts (resources/guest/stage-init.sh).
    stage_canto_init "$STAGE" "$ROOT"

    # busybox (static) and the applets /init and the run scripts use.
    stage_file /bin/busybox /bin/busybox
    local a
    for a in sh mount cat echo reboot poweroff setsid cttyhack ls sleep mkdir dmesg; do
        ln -s busybox "$STAGE/bin/$a"
    done
    # halt knows -p (busybox's applet does not): resources/guest/halt, staged as /canto/halt.
    ln -s ../canto/halt "$STAGE/bin/halt"

    # aplay/arecord (one binary) plus exactly the shared objects ldd lists,
    # including the dynamic loader at its absolute path.
    local aplay lib
    aplay=$(command -v aplay)
    stage_file "$aplay" /bin/aplay
    ln -s aplay "$STAGE/bin/arecord"
    for lib in $(ldd "$aplay" | grep -o '/[^ ]*'); do
        stage_file "$lib" "$lib"
    done
    # amixer (the mixer controls, VIRTIO_SND_F_CTLS) the same way.
    local amixer
    amixer=$(command -v amixer)
    stage_file "$amixer" /bin/amixer
    for lib in $(ldd "$amixer" | grep -o '/[^ ]*'); do
        stage_file "$lib" "$lib"
    done

    # alsa-lib's configuration: alsa.conf defines every PCM/CTL name,
    # including "hw" (used by `aplay -D hw:0,0`).
    stage_file /usr/share/alsa/alsa.conf
    # The "default" device: alsa.conf's cards.* fallback for a card without a
    # driver-specific file is pcm/default.conf via cards/aliases.conf;
    # /etc/asound.conf makes "default" the first card's hw PCM through plug
    # (format/rate conversion), so plain `aplay file.wav` works too.
    install -m 0644 "$RES/asound.conf" "$STAGE/etc/asound.conf"
    install -m 0644 "$OUT/test.wav" "$STAGE/canto/test.wav"

    # The ALSA selftests (build_alsa_selftests), with any library they need beyond aplay's.
    local st
    mkdir -p "$STAGE/canto/alsa-selftests/conf.d"
    for st in mixer-test pcm-test; do
        install -m 0755 "$OUT/alsa-selftests/$st" "$STAGE/canto/alsa-selftests/$st"
        for lib in $(ldd "$OUT/alsa-selftests/$st" | grep -o '/[^ ]*'); do
            [ -e "$STAGE$lib" ] || stage_file "$lib" "$lib"
        done
    done
    install -m 0644 "$OUT/alsa-selftests/pcm-test.conf" "$STAGE/canto/alsa-selftests/pcm-test.conf"
    install -m 0644 "$OUT/alsa-selftests/conf.d/canto.conf" "$STAGE/canto/alsa-selftests/conf.d/canto.conf"

    # Reproducible newc archive: sorted names, root owner, mtime 0,
    # renumbered inodes (--reproducible).
    find "$STAGE" -exec touch -h -d @0 {} +
    (cd "$STAGE" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort \
        | cpio -o -H newc --reproducible --owner=0:0 --quiet) > "$OUT/initramfs.cpio.tmp"
    # Ends with the newc "TRAILER!!!" record and cpio pads the output to a
    # multiple of 512 bytes (the kernel needs the next archive's header at a
    # 4-byte aligned offset and skips zero padding), so a test can append a
    # second newc archive (plain or gzip) with `cat`.
    local size
    size=$(stat -c %s "$OUT/initramfs.cpio.tmp")
    [ $((size % 4)) -eq 0 ] || die "initramfs size $size is not a multiple of 4"
    case $(tail -c 1024 "$OUT/initramfs.cpio.tmp" | tr -d '\0') in
        *'TRAILER!!!') ;;
        *) die "initramfs does not end with a newc trailer" ;;
    esac
    mv "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio"
    # Uncompressed, and named so: measured under kvm_pvm, the gzip'ed image took
    # ~170 s to unpack, the plain one ~20 s. Older builds also wrote an
    # uncompressed copy named initramfs.cpio.gz; it goes.
    rm -f "$OUT/initramfs.cpio.gz"

    # The same userland as a root disk (root=/dev/vda, no initramfs): `canto run` boots it
    # read-only, and /init puts a tmpfs overlay on top of it.
    make_ext4 "$STAGE" "$OUT/rootfs.ext4" || die "cannot write target/guest/rootfs.ext4"
    rm -rf "$STAGE"
}

# -------------------------------------------------------------------- main --
source "$RES/stage-init.sh"
ensure_packages
mkdir -p "$OUT"
build_kernel smp
build_kernel up
build_wav
build_alsa_selftests
build_initramfs
log "done: $(cd "$ROOT" && for f in target/guest/vmlinux target/guest/bzImage target/guest/vmlinux-up target/guest/initramfs.cpio target/guest/rootfs.ext4 target/guest/test.wav; do printf '%s (%s bytes) ' "$f" "$(stat -c %s "$f")"; done)"
