#!/usr/bin/env bash
# Builds the VFIO proof guest: the project's NativeAOT `ifcvf` binary (scripts/publish.sh), the shared libraries `ldd`
# lists for it, DPDK testpmd with its virtio-user plugin, static busybox, the virtio-net, VFIO and tun
# modules of the extracted Debian cloud kernel and scripts/vfio-guest/init as /init.
# Usage: build.sh [OUT_DIR]   (default .peers/vfio-guest; needs .peers/kernel from scripts/install-peers.sh
#                              or scripts/vfio-guest/prepare.sh)
# Writes OUT_DIR/vmlinuz, OUT_DIR/initrd.gz and OUT_DIR/ifcvf; skips steps whose output is newer than its inputs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.peers/vfio-guest}"
kdir="$root/.peers/kernel"
log() { echo "vfio-guest: $*"; }
mkdir -p "$out"

vmlinuz="$(compgen -G "$kdir/boot/vmlinuz-*" | sort | tail -n1 || true)"
[[ -n "$vmlinuz" ]] || { log "no kernel under $kdir/boot (run scripts/install-peers.sh)"; exit 1; }
kver="${vmlinuz##*/vmlinuz-}"
moddir="$kdir/lib/modules/$kver"

# 1. NativeAOT binary (scripts/publish.sh: rebuilt when any source or build file is newer than it)
bin="$("$root/scripts/publish.sh" "$out" | tail -n1)"
[[ -x "$bin" ]] || { log "publish did not produce the ifcvf binary"; exit 1; }

# 2. initramfs
initrd="$out/initrd.gz"
if [[ -f "$initrd" && "$initrd" -nt "$bin" && "$initrd" -nt "$here/init" && "$initrd" -nt "${BASH_SOURCE[0]}" \
      && "$initrd" -nt "$root/scripts/lib/initramfs.sh" \
      && "$initrd" -nt "$vmlinuz" && "$initrd" -nt "$(command -v dpdk-testpmd || echo /)" && -f "$out/vmlinuz" ]]; then
  exit 0
fi
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
# shellcheck source=scripts/lib/initramfs.sh
source "$root/scripts/lib/initramfs.sh"
initramfs_busybox "$stage"
cp "$bin" "$stage/bin/ifcvf"
initramfs_libs "$stage" "$bin"
# DPDK testpmd (a third-party vhost-user front-end: virtio-user) with the two plugins it needs here
initramfs_testpmd "$stage"
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover
         virtio_net irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci tun)
for m in "${modules[@]}"; do initramfs_module "$stage" "$moddir" "$m"; done
install -m 0755 "$here/init" "$stage/init"
initramfs_pack "$stage" "$vmlinuz" "$out"
log "$initrd ($kver, $(stat -c %s "$initrd") bytes, ifcvf $(stat -c %s "$bin") bytes)"
