#!/usr/bin/env bash
# Boots the VDUSE proof guest under QEMU (TCG, no NIC: every frame is between the guest's kernel and the
# project's software VFs inside it). Serial console on stdout.
# Usage: run.sh [OUT_DIR] [TIMEOUT_SECONDS] [SCENARIO]   (SCENARIO: net (default) or blk, the block VF)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.peers/vduse-guest}"
timeout="${2:-300}"
scenario="${3:-net}"
exec timeout -s KILL "$((timeout + 30))" qemu-system-x86_64 \
  -machine q35 -accel tcg -cpu max -m 1536 -smp 2 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -kernel "$out/vmlinuz" -initrd "$out/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet vduse_timeout=$timeout vduse_scenario=$scenario"
