#!/usr/bin/env bash
# Builds the VDUSE proof guest: Debian's generic 6.12 kernel (fetch-kernel.sh), an initramfs with static
# busybox, the kernel modules the proof needs (vduse, virtio_vdpa, vhost_vdpa, virtio_net, tun and their
# dependencies, read from each module's own depends= line, decompressed), iproute2's `vdpa` tool with its
# shared libraries, DPDK testpmd with its virtio-user plugin, the project's NativeAOT `ifcvf` (scripts/publish.sh) and scripts/vduse-guest/init.
# Usage: build.sh [OUT_DIR]   (default .peers/vduse-guest)
# Writes OUT_DIR/vmlinuz, OUT_DIR/initrd.gz and OUT_DIR/inputs.sha256; does nothing when the digest of the
# inputs (init, this script, kernel, busybox, vdpa, ifcvf) is unchanged.
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

digest() { cat "$here/init" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1; }
inputs="$(digest) $kver $(stat -c %s "$vmlinuz" /bin/busybox "$vdpa" "$(command -v dpdk-testpmd || echo /)" | tr '\n' ' ')$(sha256sum "$bin" | cut -c1-16)"
if [[ -f "$out/initrd.gz" && -f "$out/vmlinuz" && "$(cat "$out/inputs.sha256" 2>/dev/null)" == "$inputs" ]]; then
  exit 0
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,usr/bin,sbin,dev,proc,sys,tmp,run,lib/modules}
cp /bin/busybox "$stage/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ "$applet" == busybox ]] || ln -s busybox "$stage/bin/$applet"
done
cp "$bin" "$stage/bin/ifcvf"
cp "$vdpa" "$stage/bin/vdpa"
for lib in $( (ldd "$bin"; ldd "$vdpa") | grep -o '/[^ ]*' | sort -u); do
  [[ -e "$stage$lib" ]] && continue
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done

# DPDK testpmd with its virtio-user plugin (a userspace front-end on /dev/vhost-vdpa-0), as the VFIO guest has it
testpmd="$(command -v dpdk-testpmd || true)"
[[ -n "$testpmd" ]] || { log "dpdk-testpmd missing (prepare.sh installs dpdk-dev)"; exit 1; }
pmddir="$(compgen -G "/usr/lib/x86_64-linux-gnu/dpdk/pmds-*" | sort | tail -n1 || true)"
[[ -n "$pmddir" ]] || { log "no DPDK plugin directory"; exit 1; }
mkdir -p "$stage$pmddir" "$stage/var"
ln -s /run "$stage/var/run"
cp "$testpmd" "$stage/usr/bin/dpdk-testpmd"
plugins=()
for p in librte_net_virtio librte_mempool_ring; do
  f="$(compgen -G "$pmddir/$p.so.[0-9]*" | sort | head -n1 || true)"
  [[ -n "$f" ]] || { log "DPDK plugin $p missing in $pmddir"; exit 1; }
  cp -L "$f" "$stage$pmddir/$p.so"
  plugins+=("$f")
done
libgcc="$(ldconfig -p | grep -o '/[^ ]*/libgcc_s\.so\.1$' | head -n1)"
for lib in $(for f in "$testpmd" "${plugins[@]}"; do ldd "$f"; done | grep -o '/[^ ]*' | sort -u) "$libgcc"; do
  [[ -e "$stage$lib" ]] && continue
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done

# modules with their dependencies, in load order (dependencies first): lib/modules/order
declare -A seen=()
order=()
modfile() { find "$moddir" \( -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" -o -name "$1.ko.gz" \) | head -n1; }
unpack() {
  case "$1" in
    *.ko) cat "$1" ;; *.ko.xz) xz -dc "$1" ;; *.ko.gz) gzip -dc "$1" ;; *.ko.zst) zstd -dc "$1" ;;
  esac
}
add_module() {
  local m="$1" f deps d
  [[ -n "${seen[$m]:-}" ]] && return 0
  seen[$m]=1
  f="$(modfile "$m")"
  [[ -n "$f" ]] || { log "module $m not found under $moddir"; exit 1; }
  unpack "$f" >"$stage/lib/modules/$m.ko"
  deps="$(grep -a -o 'depends=[^[:cntrl:]]*' "$stage/lib/modules/$m.ko" | head -n1 | cut -d= -f2)"
  for d in ${deps//,/ }; do add_module "$d"; done
  order+=("$m")
}
for m in vduse virtio_vdpa virtio_net tun vhost_vdpa; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$stage/lib/modules/order"
install -m 0755 "$here/init" "$stage/init"
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -6 >"$out/initrd.gz.tmp"
cp "$vmlinuz" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
echo "$inputs" >"$out/inputs.sha256"
log "$out/initrd.gz ($kver, modules: ${order[*]}, $(stat -c %s "$out/initrd.gz") bytes)"
