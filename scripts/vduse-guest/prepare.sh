#!/usr/bin/env bash
# Installs what the VDUSE proof guest needs and builds it. Idempotent; quick when everything is there:
# QEMU, busybox-static, cpio, xz-utils, iproute2 and DPDK testpmd (Debian 12 packages), then build.sh (which fetches the
# bookworm-backports kernel through a private apt configuration and publishes the NativeAOT binary).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DEBIAN_FRONTEND=noninteractive
log() { echo "vduse-guest: $*"; }
installed() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]; }
missing=()
for p in qemu-system-x86 busybox-static cpio xz-utils iproute2 dpdk-dev librte-net-virtio23 librte-mempool-ring23; do installed "$p" || missing+=("$p"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  [[ $(id -u) -eq 0 ]] || { log "not root: apt-get install ${missing[*]}"; exit 1; }
  apt-get update -qq
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
exec "$here/build.sh" "$@"
