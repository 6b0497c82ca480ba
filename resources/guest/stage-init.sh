# Sourced by resources/build-guest.sh and resources/build-rootfs-debian.sh: the pieces every
# Canto guest userland holds, and the ext4 image writer.

# stage_canto_init STAGE ROOT: /init, /etc/fstab, the agent, the run scripts and the directories
# /init uses (the overlay's mount points for a read-only root disk) into the staging root STAGE.
stage_canto_init() {
    local stage=$1 root=$2 res=$2/resources/guest a
    [ -x "$root/target/agent/canto-agent" ] \
        || { echo "target/agent/canto-agent is missing: run bash resources/build-agent.sh (make agent) first" >&2; return 1; }
    mkdir -p "$stage"/{dev,proc,sys,tmp,etc,canto/run,canto/overlay,canto/oldroot}
    chmod 1777 "$stage/tmp"
    install -m 0755 "$res/init" "$stage/init"
    install -m 0644 "$res/fstab" "$stage/etc/fstab"
    install -m 0644 "$res/shrc" "$stage/etc/shrc"
    install -m 0755 "$res/halt" "$stage/canto/halt"
    # $stage/bin may be a symlink to usr/bin (Debian's merged /usr): install follows it.
    mkdir -p "$stage/bin"
    install -m 0755 "$root/target/agent/canto-agent" "$stage/bin/canto-agent"
    for a in "$res"/run/*; do
        install -m 0755 "$a" "$stage/canto/run/$(basename "$a")"
    done
}

# make_ext4 STAGE IMAGE: an ext4 image holding STAGE, written by `mke2fs -d` (no root, no loop
# mount) with room to spare, then shrunk by `resize2fs -M` to the contents and a little slack (a
# root disk is used read-only; the guest's writes go to a tmpfs overlay). No journal: nothing writes to a read-only image, and a disk
# given writable is the user's own image.
make_ext4() {
    local stage=$1 image=$2 kib inodes
    kib=$(du -sk --apparent-size "$stage" | cut -f1)
    inodes=$(find "$stage" | wc -l)
    # Block rounding and metadata: 4 KiB per file or directory at most, plus 20 % and 4 MiB.
    kib=$(( (kib + inodes * 4) * 6 / 5 + 4096 ))
    inodes=$(( inodes + inodes / 4 + 256 ))
    rm -f "$image.tmp"
    mke2fs -q -F -t ext4 -O ^has_journal -m 0 -N "$inodes" -L canto-root \
        -E root_owner=0:0 -d "$stage" "$image.tmp" "${kib}k" \
        || { echo "mke2fs failed for $image" >&2; return 1; }
    # Then shrink it to what the contents need (resize2fs wants a checked file system; e2fsck
    # exits 1 when it only tidied something).
    e2fsck -fy "$image.tmp" >/dev/null 2>&1 || [ $? -le 1 ] \
        || { echo "e2fsck failed for $image" >&2; return 1; }
    resize2fs -M "$image.tmp" >/dev/null 2>&1 || { echo "resize2fs -M failed for $image" >&2; return 1; }
    mv "$image.tmp" "$image"
}
