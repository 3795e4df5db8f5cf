#!/usr/bin/env bash
# Fetches Debian bookworm's DPDK source package (`apt-get source dpdk`, the version of the installed
# dpdk-dev) into .peers/dpdk-src, for the issue 17 test that builds DPDK's UNMODIFIED IFC VF base code
# (drivers/vdpa/ifc/base/ifcvf.c) against the project's own ifcvf_osdep.h. DPDK source is never
# committed: it lives only in this cache.
# The deb-src entry is used through a private apt configuration (sources list and package lists under
# .peers/apt-src): the host's apt sources are left untouched.
# Prints the path of ifcvf.c's directory on its last line. Idempotent: skips the download when the cache
# already holds the tree.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/.peers/dpdk-src"
log() { echo "dpdk-ifc: $*" >&2; }
find_base() { compgen -G "$out/dpdk-*/drivers/vdpa/ifc/base/ifcvf.c" | head -n1 | xargs -r dirname; }
base="$(find_base || true)"
if [[ -n "$base" && -f "$base/ifcvf.h" ]]; then echo "$base"; exit 0; fi

command -v dpkg-source >/dev/null || { log "dpkg-source missing (dpkg-dev; scripts/install-peers.sh installs it)"; exit 1; }
version="$(dpkg-query -W -f='${Version}' dpdk-dev 2>/dev/null || true)"
[[ -n "$version" ]] || { log "dpdk-dev is not installed (scripts/install-peers.sh)"; exit 1; }

apt_dir="$root/.peers/apt-src"
# shellcheck source=scripts/lib/private-apt.sh
source "$root/scripts/lib/private-apt.sh"
log "apt-get update (deb-src bookworm, private lists under $apt_dir)"
private_apt "$apt_dir" deb-src bookworm bookworm-updates bookworm-security
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
log "apt-get source dpdk=$version"
(cd "$out.tmp" && apt-get "${apt_opts[@]}" source -qq "dpdk=$version" >/dev/null)
# keep the unpacked tree only (the .orig/.debian tarballs and .dsc are not needed again)
rm -f "$out.tmp"/*.tar.* "$out.tmp"/*.dsc
rm -rf "$out"
mv "$out.tmp" "$out"
base="$(find_base || true)"
[[ -n "$base" ]] || { log "no drivers/vdpa/ifc/base/ifcvf.c in the dpdk source package"; exit 1; }
log "DPDK $version ifc base code: $base"
echo "$base"
