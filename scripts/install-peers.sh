#!/usr/bin/env bash
# Installs the real peers the tests and benchmarks run against (see docs/peers.md):
#   - DPDK testpmd with virtio-user and vhost PMDs (Debian 12 packages),
#   - QEMU (x86_64 system emulator), busybox-static and cpio for a small Linux guest,
#   - a Debian cloud kernel (downloaded, not installed) extracted under .peers/kernel,
#   - the guest initramfs built from it (.peers/guest/initrd.gz),
#   - gcc and Debian's dpdk source package (.peers/dpdk-src, through a private deb-src entry) for the
#     issue 17 test that builds DPDK's unmodified IFC VF base code (scripts/dpdk-ifc/).
# Idempotent and non-interactive: when everything is present it only checks and exits quickly.
# `apt-get update` runs at most once, and only when something has to be fetched.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.peers"
export DEBIAN_FRONTEND=noninteractive

packages=(dpdk-dev librte-net-virtio23 librte-net-vhost23 librte-mempool-ring23
          qemu-system-x86 busybox-static cpio iproute2 iputils-ping xz-utils procps
          prometheus # promtool validates the metrics endpoint's output (tests/Peers.Tests/MetricsTests.cs)
          systemd    # systemd-analyze verifies contrib/systemd/ifcvf.service (tests/Peers.Tests/SystemdUnitTests.cs)
          libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients) # libvirt-managed guests (LibvirtGuestTests.cs)
# gcc + dpkg-source: the DPDK base-code harness (tests/Fidelity.Tests, scripts/dpdk-ifc)
packages+=(build-essential dpkg-dev)
# qemu-storage-daemon (qemu-system-common, with qemu-system-x86) and fio (in the bench guest): bench/blk.sh
packages+=(qemu-system-common fio)

log() { echo "install-peers: $*"; }

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then sudo_cmd=(sudo -n); else
    log "not root and no sudo: cannot install packages"; exit 1; fi
fi

updated=0
apt_update_once() {
  if [[ $updated -eq 0 ]]; then
    log "apt-get update"
    "${sudo_cmd[@]}" apt-get update -qq
    updated=1
  fi
}

installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]
}

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  apt_update_once
  log "apt-get install ${missing[*]}"
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in dpdk-testpmd qemu-system-x86_64 qemu-storage-daemon fio cpio promtool systemd-analyze gcc dpkg-source libvirtd virtlogd virsh; do
  command -v "$tool" >/dev/null || { log "missing $tool after install"; exit 1; }
done
[[ -x /bin/busybox ]] || { log "missing /bin/busybox after install"; exit 1; }

# The guest kernel: newest linux-image-6.1.0-N-cloud-amd64, extracted (not installed).
kdir="$cache/kernel"
if ! compgen -G "$kdir/boot/vmlinuz-*" >/dev/null; then
  list_kernels() {
    apt-cache pkgnames linux-image-6.1.0- 2>/dev/null | grep -E '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' \
      | sort -t- -k4,4n | tail -n1
  }
  kpkg="$(list_kernels || true)"
  if [[ -z "$kpkg" ]]; then
    apt_update_once
    kpkg="$(list_kernels || true)"
  fi
  [[ -n "$kpkg" ]] || { log "no linux-image-6.1.0-*-cloud-amd64 package found"; exit 1; }
  log "downloading $kpkg"
  mkdir -p "$cache/debs"
  rm -f "$cache/debs"/*.deb
  (cd "$cache/debs" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg")
  rm -rf "$kdir.tmp"
  mkdir -p "$kdir.tmp"
  dpkg-deb -x "$cache/debs"/"$kpkg"_*.deb "$kdir.tmp"
  rm -rf "$kdir"
  mv "$kdir.tmp" "$kdir"
  rm -f "$cache/debs"/*.deb
fi

# DPDK's source (apt-get source dpdk, the installed dpdk-dev's version), cached; never committed.
"$root/scripts/dpdk-ifc/fetch-source.sh" >/dev/null

# The guest initramfs (rebuilt when its inputs are newer than it).
"$root/scripts/guest/build-initramfs.sh" "$kdir" "$cache/guest"
log "ready: dpdk-dev $(dpkg-query -W -f='${Version}' dpdk-dev)," \
  "$(qemu-system-x86_64 --version | head -n1), kernel $(basename "$kdir"/boot/vmlinuz-*)"
