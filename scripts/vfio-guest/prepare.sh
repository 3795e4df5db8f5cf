#!/usr/bin/env bash
# Installs what the VFIO proof guest needs and builds it. Idempotent; quick when everything is there.
#   - QEMU, busybox-static, cpio and the extracted Debian cloud kernel: scripts/install-peers.sh
#     (or, if that script is absent, the same packages and kernel fetched here),
#   - a C toolchain and zlib1g-dev for the NativeAOT publish,
#   - then scripts/vfio-guest/build.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export DEBIAN_FRONTEND=noninteractive
log() { echo "vfio-guest: $*"; }
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then sudo_cmd=(sudo -n); else log "not root and no sudo"; fi
fi
installed() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]; }
updated=0
need() {
  local missing=()
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $updated -eq 0 ]]; then "${sudo_cmd[@]}" apt-get update -qq; updated=1; fi
  log "apt-get install ${missing[*]}"
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [[ -x "$root/scripts/install-peers.sh" ]]; then
  "$root/scripts/install-peers.sh" >/dev/null
else
  need qemu-system-x86 busybox-static cpio xz-utils
  kdir="$root/.peers/kernel"
  if ! compgen -G "$kdir/boot/vmlinuz-*" >/dev/null; then
    kpkg="$(apt-cache pkgnames linux-image-6.1.0- | grep -E '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' | sort -t- -k4,4n | tail -n1)"
    [[ -n "$kpkg" ]] || { log "no linux-image-6.1.0-*-cloud-amd64 package"; exit 1; }
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg")
    rm -rf "$kdir" && mkdir -p "$kdir"
    dpkg-deb -x "$tmp"/*.deb "$kdir"
    rm -rf "$tmp"
  fi
fi
command -v clang >/dev/null || command -v gcc >/dev/null || need gcc
need zlib1g-dev
for tool in qemu-system-x86_64 cpio; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done
[[ -x /bin/busybox ]] || { log "missing /bin/busybox"; exit 1; }
exec "$here/build.sh" "$@"
