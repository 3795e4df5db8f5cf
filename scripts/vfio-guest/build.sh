#!/usr/bin/env bash
# Builds the VFIO proof guest: the project's NativeAOT `ifcvf` binary (published from a copy of the
# sources, so a parallel build of the working tree is never disturbed), the shared libraries `ldd`
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

# 1. NativeAOT binary (rebuilt when any source or build file is newer than it)
bin="$out/ifcvf"
newer="$(find "$root/src" "$root/Directory.Build.props" "$root/Directory.Packages.props" "$root/global.json" \
  "$root/.editorconfig" \( -name bin -o -name obj \) -prune -o -type f -newer "$bin" -print -quit 2>/dev/null || true)"
if [[ ! -x "$bin" || -n "$newer" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  tar -C "$root" --exclude=bin --exclude=obj -cf - src Directory.Build.props Directory.Packages.props \
    global.json .editorconfig | tar -C "$work" -xf -
  log "dotnet publish (NativeAOT) of src/Cli"
  (cd "$work" && dotnet publish src/Cli/Cli.csproj -c Release -r linux-x64 -p:PublishAot=true \
     -o "$work/out" --nologo -v quiet >"$work/publish.log" 2>&1) || { cat "$work/publish.log"; exit 1; }
  cp "$work/out/ifcvf" "$bin.tmp"
  mv "$bin.tmp" "$bin"
fi

# 2. initramfs
initrd="$out/initrd.gz"
if [[ -f "$initrd" && "$initrd" -nt "$bin" && "$initrd" -nt "$here/init" && "$initrd" -nt "${BASH_SOURCE[0]}" \
      && "$initrd" -nt "$vmlinuz" && "$initrd" -nt "$(command -v dpdk-testpmd || echo /)" && -f "$out/vmlinuz" ]]; then
  exit 0
fi
stage="$(mktemp -d)"
trap 'rm -rf "$stage" ${work:+"$work"}' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,run,lib/modules}
cp /bin/busybox "$stage/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ "$applet" == busybox ]] || ln -s busybox "$stage/bin/$applet"
done
cp "$bin" "$stage/bin/ifcvf"
# shared libraries of the binary, at the paths the loader expects
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
# DPDK testpmd (a third-party vhost-user front-end: virtio-user) with the two plugins it needs here
# (net_virtio, mempool_ring) and every shared library of all three, at the paths the loader expects.
testpmd="$(command -v dpdk-testpmd || true)"
[[ -n "$testpmd" ]] || { log "dpdk-testpmd missing (scripts/install-peers.sh installs dpdk-dev)"; exit 1; }
pmddir="$(compgen -G "/usr/lib/x86_64-linux-gnu/dpdk/pmds-*" | sort | tail -n1 || true)"
[[ -n "$pmddir" ]] || { log "no DPDK plugin directory under /usr/lib/x86_64-linux-gnu/dpdk"; exit 1; }
mkdir -p "$stage/usr/bin" "$stage$pmddir" "$stage/var"
ln -s /run "$stage/var/run"
cp "$testpmd" "$stage/usr/bin/dpdk-testpmd"
plugins=()
for p in librte_net_virtio librte_mempool_ring; do
  f="$(compgen -G "$pmddir/$p.so.[0-9]*" | sort | head -n1 || true)"
  [[ -n "$f" ]] || { log "DPDK plugin $p missing in $pmddir"; exit 1; }
  cp -L "$f" "$stage$pmddir/$p.so"   # EAL loads *.so (or *.so.<full ABI>) from its plugin directory
  plugins+=("$f")
done
# glibc loads libgcc_s at run time for pthread_cancel (testpmd's shutdown): ldd does not list it
libgcc="$(ldconfig -p | grep -o '/[^ ]*/libgcc_s\.so\.1$' | head -n1)"
[[ -n "$libgcc" ]] || { log "libgcc_s.so.1 not found"; exit 1; }
for lib in $(for f in "$testpmd" "${plugins[@]}"; do ldd "$f"; done | grep -o '/[^ ]*' | sort -u) "$libgcc"; do
  [[ -e "$stage$lib" ]] && continue
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover
         virtio_net irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci tun)
for m in "${modules[@]}"; do
  f="$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n1)"
  [[ -n "$f" ]] || { log "module $m not found under $moddir"; exit 1; }
  case "$f" in
    *.ko) cp "$f" "$stage/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$stage/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$stage/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -dc "$f" >"$stage/lib/modules/$m.ko" ;;
  esac
done
install -m 0755 "$here/init" "$stage/init"
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -6 >"$initrd.tmp"
cp "$vmlinuz" "$out/vmlinuz"
mv "$initrd.tmp" "$initrd"
log "$initrd ($kver, $(stat -c %s "$initrd") bytes, ifcvf $(stat -c %s "$bin") bytes)"
