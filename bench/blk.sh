#!/usr/bin/env bash
# Block benchmark: one QEMU 7.2 guest (vhost-user-blk-pci, the guest kernel's virtio_blk, fio inside the
# guest) against two vhost-user-blk back-ends on the same raw image file, one after the other in one run:
#   serve: taskset -c 1 ./ifcvf serve --class blk --backend file:IMG --queues 1      (this project)
#   qsd:   taskset -c 1 qemu-storage-daemon --export type=vhost-user-blk,...          (QEMU's own, the reference)
# QEMU (every thread) runs on CPU 0, the back-end (every thread) on CPU 1.
#
# Usage: bench/blk.sh [RUNS] [SECONDS]              (root; scripts/install-peers.sh installs qemu, fio, the kernel)
#   RUNS (or env RUNS, default 5) guest boots per back-end, interleaved (serve, qsd, qsd, serve, ...);
#   SECONDS (or env SECS, default 5) measured per fio job, after RAMP=1 s of ramp-up.
# Environment: QD=16 (fio iodepth), SIZE=256m (disk region the jobs use), BACKENDS="serve qsd",
#   JOBS="write:1m read:1m randwrite:4k randread:4k" (the fio jobs, rw:bs, in this order), BACKEND_CPU=1, GUEST_CPU=0, ACCEL=tcg|kvm (default tcg: the same for every machine), SERVE_ARGS="" (extra
#   serve options, e.g. --poll).
# Output: one table (stdout): per job the median [min..max] of each back-end and serve/qsd; per-run samples on
# stderr. A run that yields no number fails loudly (logs kept) and the script exits 1. Details: bench/README.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-${RUNS:-5}}"
secs="${2:-${SECS:-5}}"
ramp="${RAMP:-1}"
qd="${QD:-16}"
size="${SIZE:-256m}"
backends="${BACKENDS:-serve qsd}"
be_cpu="${BACKEND_CPU:-1}"
guest_cpu="${GUEST_CPU:-0}"
jobs="${JOBS:-write:1m read:1m randwrite:4k randread:4k}"
work="$(mktemp -d /tmp/ifcvf-bench-blk.XXXXXX)"
sock="$work/blk.sock"
img="$work/disk.img"
be_pid="" failed=0

die() { echo "blk-bench: $*" >&2; exit 1; }
stop_pid() { # TERM, wait up to 5 s, then KILL
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
trap 'rc=$?; stop_pid "$be_pid"; if [[ $rc == 0 ]]; then rm -rf "$work"; else echo "blk-bench: logs kept in $work" >&2; fi' EXIT

for t in qemu-system-x86_64 qemu-storage-daemon fio taskset; do
  command -v "$t" >/dev/null || die "$t missing: run scripts/install-peers.sh"
done
kdir="$root/.peers/kernel"
compgen -G "$kdir/boot/vmlinuz-*" >/dev/null || die "no guest kernel in $kdir: run scripts/install-peers.sh"
"$root/ifcvf" --help >/dev/null # build the CLI once, before any timing

# The bench guest's initramfs: busybox, virtio-blk modules, fio and its libraries, bench/blk-guest/init.
guest="$root/.peers/bench-blk"
inputs="$(cat "$root/bench/blk-guest/init" "$root/scripts/lib/initramfs.sh" | sha256sum | cut -d' ' -f1) $(stat -c %s "$(command -v fio)" /bin/busybox | tr '\n' ' ') $(basename "$kdir"/boot/vmlinuz-*)"
if [[ ! -f "$guest/initrd.gz" || "$(cat "$guest/inputs.sha256" 2>/dev/null)" != "$inputs" ]]; then
  stage="$work/stage"
  # shellcheck source=scripts/lib/initramfs.sh
  source "$root/scripts/lib/initramfs.sh"
  vmlinuz="$(compgen -G "$kdir/boot/vmlinuz-*" | sort | tail -n1)"
  kver="${vmlinuz##*/vmlinuz-}"
  initramfs_busybox "$stage"
  for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    initramfs_module "$stage" "$kdir/lib/modules/$kver" "$m"
  done
  mkdir -p "$stage/usr/bin"
  cp "$(command -v fio)" "$stage/usr/bin/fio"
  initramfs_libs "$stage" "$(command -v fio)"
  install -m 0755 "$root/bench/blk-guest/init" "$stage/init"
  initramfs_pack "$stage" "$vmlinuz" "$guest"
  echo "$inputs" >"$guest/inputs.sha256"
  rm -rf "$stage"
  echo "blk-bench: built $guest/initrd.gz ($(stat -c %s "$guest/initrd.gz") bytes)" >&2
fi

ACCEL="${ACCEL:-tcg}"
accel=(-accel tcg) vectors=",vectors=0" # TCG: QEMU 7.2 crashes in msix_set_vector_notifiers with vhost-user
[[ $ACCEL == kvm ]] && accel=(-accel kvm -cpu host) vectors=""

# The image: 1 GiB raw, the jobs' region filled with data once (no holes: both back-ends read real blocks).
truncate -s 1G "$img"
dd if=/dev/urandom of="$img" bs=1M count=$(( $(numfmt --from=iec "${size^^}") >> 20 )) conv=notrunc status=none

start_backend() { # $1 = serve|qsd
  rm -f "$sock"
  case "$1" in
    serve)
      # shellcheck disable=SC2086
      taskset -c "$be_cpu" "$root/ifcvf" serve --socket "$sock" --class blk --backend "file:$img" --queues 1 \
        --cpu "$be_cpu" ${SERVE_ARGS:-} >"$work/be.log" 2>&1 & ;;
    qsd)
      taskset -c "$be_cpu" qemu-storage-daemon \
        --blockdev "driver=file,node-name=file0,filename=$img,aio=threads,cache.direct=off" \
        --blockdev driver=raw,node-name=disk0,file=file0 \
        --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on,num-queues=1" \
        >"$work/be.log" 2>&1 & ;;
  esac
  be_pid=$!
  for _ in $(seq 200); do [[ -S "$sock" ]] && return 0; kill -0 "$be_pid" 2>/dev/null || break; sleep 0.1; done
  echo "FAILED: $1 did not create $sock"; tail -n 20 "$work/be.log"; return 1
}

run_guest() { # $1 = back-end name; prints "job value" lines (KiB/s for 1m jobs, IOPS for 4k jobs)
  local log="$work/guest-$1.log"
  taskset -c "$guest_cpu" qemu-system-x86_64 -machine q35 "${accel[@]}" -m 1024 -smp 1 -nographic -no-reboot \
    -monitor none -serial stdio -kernel "$guest/vmlinuz" -initrd "$guest/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet bench_runtime=$secs bench_ramp=$ramp bench_size=$size bench_qd=$qd bench_jobs=$(echo $jobs | tr ' ' ,)" \
    -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem -nic none \
    -chardev "socket,id=c0,path=$sock" -device "vhost-user-blk-pci,chardev=c0,num-queues=1$vectors" \
    </dev/null >"$log" 2>&1 &
  local qpid=$!
  local limit=$(( 120 + 8 * (secs + ramp + 2) ))
  for _ in $(seq $((limit * 10))); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$qpid" 2>/dev/null; then kill -KILL "$qpid"; fi
  wait "$qpid" 2>/dev/null || true
  tr -d '\r' <"$log" | awk '/^BENCH job=/ { split($2, j, "="); split($4, k, "="); split($5, o, "="); split($6, e, "=");
      if (e[2] != 0) next; print j[2], (j[2] ~ /^rand/ ? o[2] : k[2]) }'
}

declare -A samples
echo "blk-bench: $runs run(s) x ${secs}s per job, fio libaio O_DIRECT iodepth $qd, region $size, accel $ACCEL," \
  "back-end on CPU $be_cpu, guest on CPU $guest_cpu" >&2
for ((r = 1; r <= runs; r++)); do
  order="$backends"
  (( r % 2 == 0 )) && order="$(echo "$backends" | tr ' ' '\n' | tac | tr '\n' ' ')"
  for b in $order; do
    start_backend "$b" || { failed=1; continue; }
    out="$(run_guest "$b")"
    stop_pid "$be_pid"; be_pid=""
    for j in $jobs; do
      v="$(awk -v j="${j%%:*}" '$1 == j { print $2 }' <<<"$out")"
      if [[ -z "$v" || "$v" == 0 ]]; then
        echo "FAILED: run $r $b ${j%%:*}: no result"; tail -n 15 "$work/guest-$b.log"; tail -n 10 "$work/be.log"; failed=1; continue
      fi
      samples["$b:$j"]+="$v "
      echo "run $r $b ${j%%:*} ${j#*:}: $v $([[ $j == rand* ]] && echo IOPS || echo KiB/s)" >&2
    done
  done
done

stat3() { # median min max of the numbers in $1 (even count: mean of the two middle ones)
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "FAIL"; exit }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m, a[1], a[NR] }'
}
fmt() { # $1 = job, $2 = "median min max": MB/s (10^6 bytes) for sequential jobs, IOPS for random ones
  [[ "$2" == FAIL ]] && { printf '%-24s' FAIL; return; }
  if [[ $1 == rand* ]]; then awk '{ printf "%7.0f [%.0f..%.0f]", $1, $2, $3 }' <<<"$2"
  else awk '{ printf "%7.1f [%.1f..%.1f]", $1 * 1.024e-3, $2 * 1.024e-3, $3 * 1.024e-3 }' <<<"$2"; fi
}
printf '%-16s %-6s' job unit
for b in $backends; do printf ' | %-24s' "$b median [min..max]"; done
printf ' | serve/qsd\n'
for j in $jobs; do
  rw="${j%%:*}"; bs="${j#*:}"
  name="$([[ $rw == rand* ]] && echo "$rw $bs" || echo "seq $rw $bs")"
  printf '%-16s %-6s' "$name" "$([[ $rw == rand* ]] && echo IOPS || echo MB/s)"
  declare -A med=()
  for b in $backends; do
    s="$(stat3 "${samples["$b:$j"]:-}")"
    med[$b]="${s%% *}"
    printf ' | %-24s' "$(fmt "$rw" "$s")"
  done
  if [[ "${med[serve]:-FAIL}" != FAIL && "${med[qsd]:-FAIL}" != FAIL ]]; then
    awk -v a="${med[serve]}" -v b="${med[qsd]}" 'BEGIN { printf " | %.2fx\n", a / b }'
  else
    printf ' | n/a\n'
  fi
  unset med
done
exit $failed
