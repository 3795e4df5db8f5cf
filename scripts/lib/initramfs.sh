# Sourced by the guest build scripts (scripts/guest, scripts/vfio-guest, scripts/vduse-guest): the steps
# every test initramfs shares. Each function takes the staging directory first; all fail loudly.
#   initramfs_busybox STAGE            static /bin/busybox and a link per applet
#   initramfs_libs STAGE FILE...       the shared libraries ldd lists for FILEs, at the loader's paths
#   initramfs_testpmd STAGE            DPDK testpmd, its net_virtio and mempool_ring plugins, their libraries
#   initramfs_e2fsprogs STAGE          e2fsprogs' mke2fs (mkfs.ext4), e2fsck (fsck.ext4), debugfs in /usr/sbin, libraries
#   initramfs_module STAGE MODDIR NAME kernel module NAME from MODDIR, decompressed, as lib/modules/NAME.ko
#   initramfs_pack STAGE VMLINUZ OUT   OUT/initrd.gz and OUT/vmlinuz, each replaced atomically

initramfs_busybox() {
  local stage="$1" applet
  mkdir -p "$stage"/{bin,dev,proc,sys,tmp,run,lib/modules}
  cp /bin/busybox "$stage/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$stage/bin/$applet"
  done
}

initramfs_libs() {
  local stage="$1" lib
  shift
  for lib in $(for f in "$@"; do ldd "$f"; done | grep -o '/[^ ]*' | sort -u); do
    [[ -e "$stage$lib" ]] && continue
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
  done
}

initramfs_testpmd() {
  local stage="$1" testpmd pmddir libgcc p f
  testpmd="$(command -v dpdk-testpmd || true)"
  [[ -n "$testpmd" ]] || { echo "initramfs: dpdk-testpmd missing (scripts/install-peers.sh installs dpdk-dev)" >&2; return 1; }
  pmddir="$(compgen -G "/usr/lib/x86_64-linux-gnu/dpdk/pmds-*" | sort | tail -n1 || true)"
  [[ -n "$pmddir" ]] || { echo "initramfs: no DPDK plugin directory under /usr/lib/x86_64-linux-gnu/dpdk" >&2; return 1; }
  mkdir -p "$stage/usr/bin" "$stage$pmddir" "$stage/var"
  ln -sfn /run "$stage/var/run"
  cp "$testpmd" "$stage/usr/bin/dpdk-testpmd"
  local plugins=()
  for p in librte_net_virtio librte_mempool_ring; do
    f="$(compgen -G "$pmddir/$p.so.[0-9]*" | sort | head -n1 || true)"
    [[ -n "$f" ]] || { echo "initramfs: DPDK plugin $p missing in $pmddir" >&2; return 1; }
    cp -L "$f" "$stage$pmddir/$p.so"   # EAL loads *.so (or *.so.<full ABI>) from its plugin directory
    plugins+=("$f")
  done
  initramfs_libs "$stage" "$testpmd" "${plugins[@]}"
  # glibc loads libgcc_s at run time for pthread_cancel (testpmd's shutdown): ldd does not list it
  libgcc="$(ldconfig -p | grep -o '/[^ ]*/libgcc_s\.so\.1$' | head -n1)"
  [[ -n "$libgcc" ]] || { echo "initramfs: libgcc_s.so.1 not found" >&2; return 1; }
  mkdir -p "$stage$(dirname "$libgcc")"
  cp -L "$libgcc" "$stage$libgcc"
}

initramfs_e2fsprogs() {
  local stage="$1" p f bins=()
  mkdir -p "$stage/usr/sbin" "$stage/etc"
  for p in mke2fs e2fsck debugfs; do
    f="$(PATH=/usr/sbin:/sbin:$PATH command -v "$p" || true)"
    [[ -n "$f" ]] || { echo "initramfs: $p missing (apt-get install e2fsprogs)" >&2; return 1; }
    cp -L "$f" "$stage/usr/sbin/$p"   # /usr/sbin: busybox's own mke2fs (ext2 only) stays in /bin
    bins+=("$f")
  done
  ln -sf mke2fs "$stage/usr/sbin/mkfs.ext4"
  ln -sf e2fsck "$stage/usr/sbin/fsck.ext4"
  [[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$stage/etc/mke2fs.conf"
  initramfs_libs "$stage" "${bins[@]}"
}

initramfs_module() {
  local stage="$1" moddir="$2" m="$3" f
  f="$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n1)"
  [[ -n "$f" ]] || { echo "initramfs: module $m not found under $moddir" >&2; return 1; }
  case "$f" in
    *.ko) cat "$f" ;; *.ko.xz) xz -dc "$f" ;; *.ko.gz) gzip -dc "$f" ;; *.ko.zst) zstd -dc "$f" ;;
  esac >"$stage/lib/modules/$m.ko"
}

initramfs_pack() {
  local stage="$1" vmlinuz="$2" out="$3"
  mkdir -p "$out"
  (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -6 >"$out/initrd.gz.tmp"
  cp "$vmlinuz" "$out/vmlinuz.tmp"
  mv "$out/vmlinuz.tmp" "$out/vmlinuz"
  mv "$out/initrd.gz.tmp" "$out/initrd.gz"
}
