#!/usr/bin/env bash
# Downloads (never installs) Debian's generic amd64 kernel from bookworm-backports (6.12: it has vduse,
# virtio_vdpa and vhost_vdpa; the cloud flavour has none of them) and extracts it under OUT_DIR.
# bookworm-backports is used through a private apt configuration (sources list and package lists under
# the cache directory): the host's apt sources and pinning are left untouched.
# Usage: fetch-kernel.sh [OUT_DIR]   (default .peers/vduse-kernel; skipped when a kernel is there)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
kdir="${1:-$root/.peers/vduse-kernel}"
log() { echo "vduse-guest: $*"; }
if compgen -G "$kdir/boot/vmlinuz-*" >/dev/null && compgen -G "$kdir/lib/modules/*/kernel/drivers/vdpa/vdpa_user/vduse.ko*" >/dev/null; then
  exit 0
fi
apt_dir="$root/.peers/apt-backports"
# shellcheck source=scripts/lib/private-apt.sh
source "$root/scripts/lib/private-apt.sh"
log "apt-get update (bookworm-backports, private lists under $apt_dir)"
private_apt "$apt_dir" deb bookworm-backports
# linux-image-amd64 is the meta package: its dependency names the versioned image package
kpkg="$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-6\.12\.[^ ]*-amd64\)$/\1/p' | head -n1)"
[[ -n "$kpkg" ]] || { log "linux-image-amd64 in bookworm-backports does not depend on a 6.12 image"; \
  apt-cache "${apt_opts[@]}" depends linux-image-amd64 >&2 || true; exit 1; }
log "downloading $kpkg (bookworm-backports)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get "${apt_opts[@]}" download -qq "$kpkg")
rm -rf "$kdir.tmp"
mkdir -p "$kdir.tmp"
dpkg-deb -x "$tmp"/*.deb "$kdir.tmp"
rm -rf "$kdir"
mv "$kdir.tmp" "$kdir"
log "kernel $(basename "$(compgen -G "$kdir/boot/vmlinuz-*" | head -n1)")"
