#!/usr/bin/env bash
# Builds the test guest's initramfs: static busybox, scripts/guest/init as /init and the virtio-net
# and virtio-blk driver modules from an extracted Debian cloud kernel.
# Usage: build-initramfs.sh KERNEL_DIR OUT_DIR    (KERNEL_DIR holds boot/vmlinuz-* and lib/modules/)
# Writes OUT_DIR/vmlinuz and OUT_DIR/initrd.gz and OUT_DIR/inputs.sha256 (a digest of the init script,
# this script, the kernel and busybox); does nothing when that digest is unchanged and the output is newer
# than its inputs. The digest makes a changed init rebuild even when its mtime is older than the initrd
# (another branch checked out, a copied .peers).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kdir="${1:?kernel dir}"
out="${2:?output dir}"
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover
         net_failover virtio_net virtio_blk)

vmlinuz="$(compgen -G "$kdir/boot/vmlinuz-*" | sort | tail -n1)"
[[ -n "$vmlinuz" ]] || { echo "build-initramfs: no kernel in $kdir/boot" >&2; exit 1; }
kver="${vmlinuz##*/vmlinuz-}"
moddir="$kdir/lib/modules/$kver"
busybox=/bin/busybox

inputs="$(cat "$here/init" "${BASH_SOURCE[0]}" "$here/../lib/initramfs.sh" | sha256sum | cut -d' ' -f1) $kver $(stat -c %s "$vmlinuz" "$busybox" | tr '\n' ' ')"
if [[ -f "$out/initrd.gz" && -f "$out/vmlinuz" && -f "$out/inputs.sha256" \
      && "$(cat "$out/inputs.sha256")" == "$inputs" && "$out/initrd.gz" -nt "$here/init" \
      && "$out/initrd.gz" -nt "${BASH_SOURCE[0]}" && "$out/initrd.gz" -nt "$vmlinuz" \
      && "$out/initrd.gz" -nt "$busybox" ]]; then
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# shellcheck source=scripts/lib/initramfs.sh
source "$here/../lib/initramfs.sh"
initramfs_busybox "$work"
for m in "${modules[@]}"; do initramfs_module "$work" "$moddir" "$m"; done
install -m 0755 "$here/init" "$work/init"
initramfs_pack "$work" "$vmlinuz" "$out"
echo "$inputs" >"$out/inputs.sha256"
echo "build-initramfs: $out/initrd.gz ($kver, $(stat -c %s "$out/initrd.gz") bytes)"
