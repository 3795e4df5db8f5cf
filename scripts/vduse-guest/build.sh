#!/usr/bin/env bash
# Builds the VDUSE proof guest: Debian's generic 6.12 kernel (fetch-kernel.sh), an initramfs with static
# busybox, the kernel modules the proof needs (vduse, virtio_vdpa, vhost_vdpa, virtio_net, tun and their
# dependencies, read from each module's own depends= line, decompressed; virtio_blk and ext4 for the block
# scenario), iproute2's `vdpa` tool with its shared libraries, DPDK testpmd with its virtio-user plugin,
# e2fsprogs (mke2fs, e2fsck, debugfs), the project's NativeAOT `ifcvf` (scripts/publish.sh),
# scripts/vduse-guest/init and blk.sh (the block scenario).
# Usage: build.sh [OUT_DIR]   (default .peers/vduse-guest)
# Writes OUT_DIR/vmlinuz, OUT_DIR/initrd.gz and OUT_DIR/inputs.sha256; does nothing when the digest of the
# inputs (init, blk.sh, this script, kernel, busybox, vdpa, e2fsprogs, ifcvf) is unchanged.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.peers/vduse-guest}"
kdir="$root/.peers/vduse-kernel"
log() { echo "vduse-guest: $*"; }
mkdir -p "$out"

"$here/fetch-kernel.sh" "$kdir"
vmlinuz="$(compgen -G "$kdir/boot/vmlinuz-*" | sort | tail -n1 || true)"
[[ -n "$vmlinuz" ]] || { log "no kernel under $kdir/boot"; exit 1; }
kver="${vmlinuz##*/vmlinuz-}"
moddir="$kdir/lib/modules/$kver"

bin="$("$root/scripts/publish.sh" "$root/artifacts/publish/linux-x64" | tail -n1)"
[[ -x "$bin" ]] || { log "publish did not produce the ifcvf binary"; exit 1; }
vdpa="$(command -v vdpa || true)"
[[ -n "$vdpa" ]] || { log "iproute2's vdpa tool is missing (apt-get install iproute2)"; exit 1; }

digest() { cat "$here/init" "$here/blk.sh" "${BASH_SOURCE[0]}" "$root/scripts/lib/initramfs.sh" | sha256sum | cut -d' ' -f1; }
inputs="$(digest) $kver $(stat -c %s "$vmlinuz" /bin/busybox "$vdpa" "$(command -v dpdk-testpmd || echo /)" "$(command -v e2fsck || echo /sbin/e2fsck)" | tr '\n' ' ')$(sha256sum "$bin" | cut -c1-16)"
if [[ -f "$out/initrd.gz" && -f "$out/vmlinuz" && "$(cat "$out/inputs.sha256" 2>/dev/null)" == "$inputs" ]]; then
  exit 0
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
# shellcheck source=scripts/lib/initramfs.sh
source "$root/scripts/lib/initramfs.sh"
initramfs_busybox "$stage"
mkdir -p "$stage/usr/bin"
cp "$bin" "$stage/bin/ifcvf"
cp "$vdpa" "$stage/bin/vdpa"
initramfs_libs "$stage" "$bin" "$vdpa"
# DPDK testpmd with its virtio-user plugin (a userspace front-end on /dev/vhost-vdpa-0), as the VFIO guest has it
initramfs_testpmd "$stage"
# e2fsprogs for the block scenario (mkfs.ext4, fsck, debugfs on the image)
initramfs_e2fsprogs "$stage"

# modules with their dependencies, in load order (dependencies first): lib/modules/order
declare -A seen=()
order=()
add_module() {
  local m="$1" deps d
  [[ -n "${seen[$m]:-}" ]] && return 0
  seen[$m]=1
  initramfs_module "$stage" "$moddir" "$m"
  deps="$(grep -a -o 'depends=[^[:cntrl:]]*' "$stage/lib/modules/$m.ko" | head -n1 | cut -d= -f2)"
  for d in ${deps//,/ }; do add_module "$d"; done
  order+=("$m")
}
# crc32c_generic first: jbd2 and ext4 want crc32c through the crypto API (a soft dependency, not in depends=)
for m in vduse virtio_vdpa virtio_net tun crc32c_generic virtio_blk ext4 vhost_vdpa; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$stage/lib/modules/order"
install -m 0755 "$here/init" "$stage/init"
install -m 0644 "$here/blk.sh" "$stage/blk.sh"
initramfs_pack "$stage" "$vmlinuz" "$out"
echo "$inputs" >"$out/inputs.sha256"
log "$out/initrd.gz ($kver, modules: ${order[*]}, $(stat -c %s "$out/initrd.gz") bytes)"
