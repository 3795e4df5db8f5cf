#!/usr/bin/env bash
# Boots the VFIO proof guest (software emulation): q35 with an emulated Intel IOMMU (interrupt
# remapping on), a modern virtio-net-pci function behind it at 00:03.0 (disable-legacy, iommu_platform:
# 1af4:1041, the device the guest drives through VFIO; page-per-vq puts each doorbell on its own page,
# so it can be handed to a vhost-user front-end as a host notifier) and a second virtio-net-pci at 00:04.0 that the
# guest kernel drives. Both NICs sit on one QEMU hub: nothing leaves QEMU.
# Usage: run.sh [OUT_DIR] [TIMEOUT_SECONDS]   (serial console on stdout)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.peers/vfio-guest}"
timeout="${2:-240}"
exec timeout -s KILL "$((timeout + 30))" qemu-system-x86_64 \
  -machine q35 -accel tcg -cpu max -m 1024 -smp 2 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -device intel-iommu,intremap=on,aw-bits=48 \
  -kernel "$out/vmlinuz" -initrd "$out/initrd.gz" \
  -append "console=ttyS0 intel_iommu=on panic=-1 quiet vfio_timeout=$timeout" \
  -netdev hubport,id=h1,hubid=0 \
  -device virtio-net-pci,netdev=h1,addr=03.0,disable-legacy=on,iommu_platform=on,page-per-vq=on,mac=52:54:00:77:00:02 \
  -netdev hubport,id=h2,hubid=0 \
  -device virtio-net-pci,netdev=h2,addr=04.0,mac=52:54:00:77:00:01
