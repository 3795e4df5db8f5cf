#!/usr/bin/env bash
# Loopback benchmark (the DPDK community's method, see docs/peers.md): the same DPDK virtio-user
# front-end (testpmd, one forwarding core) against two vhost-user back-ends in one run:
#   serve: ./ifcvf serve --backend loopback --poll   (this project, pinned to the other CPU)
#   dpdk:  DPDK's vhost PMD in testpmd io mode       (its forwarding lcore on the same CPU)
# Cases: 64 B and 1518 B; txonly (the device consumes the front-end's TX ring; rate = front-end
# Tx-pps) and an io loop started with --tx-first (rate = front-end Rx-pps). Each case runs RUNS
# times per back-end; the median of the per-second rates (first second dropped) of each run, then
# the median of the runs, is printed with the ratio serve/dpdk.
# Usage: bench/vhost-loopback.sh [RUNS=3] [SECONDS=8]     (needs root and scripts/install-peers.sh)
# Environment: SIZES="64 1518", MODES="txonly io" restrict the cases; SERVE_CPUS=1 is serve's
# taskset CPU list (empty: not pinned).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-3}"
sizes="${SIZES:-64 1518}"
modes="${MODES:-txonly io}"
serve_cpus="${SERVE_CPUS-1}"
secs="${2:-8}"
work="$(mktemp -d /tmp/ifcvf-bench.XXXXXX)"
sock="$work/vhost.sock"
be_pid=""

cleanup() {
  if [[ -n "$be_pid" ]] && kill -0 "$be_pid" 2>/dev/null; then
    kill -TERM "$be_pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$be_pid" 2>/dev/null || break; sleep 0.3; done
    kill -KILL "$be_pid" 2>/dev/null || true
  fi
  be_pid=""
}
trap 'cleanup; rm -rf "$work" /var/run/dpdk/bench-be$$ /var/run/dpdk/bench-fe$$' EXIT

command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing: run scripts/install-peers.sh" >&2; exit 1; }
"$root/ifcvf" --help >/dev/null   # build the CLI once, before any timing

start_backend() { # $1 = serve|dpdk
  rm -f "$sock"
  if [[ $1 == serve ]]; then
    local pin=()
    [[ -n "$serve_cpus" ]] && pin=(taskset -c "$serve_cpus")
    "${pin[@]}" "$root/ifcvf" serve --socket "$sock" --backend loopback --poll >"$work/be.log" 2>&1 &
  else
    # --stats-period keeps testpmd from reading stdin ("Press enter to exit"); the socket listens
    # only once the port is started, so wait for the forwarding to start
    timeout -s KILL 120 stdbuf -oL dpdk-testpmd --lcores '0@0,1@1' --no-huge -m 1024 --no-pci --file-prefix=bench-be$$ \
      --vdev "net_vhost0,iface=$sock,queues=1" -- --forward-mode=io --nb-cores=1 --stats-period 3600 --disable-link-check \
      >"$work/be.log" 2>&1 </dev/null &
  fi
  be_pid=$!
  for _ in $(seq 100); do
    if [[ -S "$sock" ]] && { [[ $1 == serve ]] || grep -q "start packet forwarding" "$work/be.log"; }; then return 0; fi
    sleep 0.1
  done
  echo "back-end $1 did not create $sock:" >&2; cat "$work/be.log" >&2; return 1
}

# one front-end run; prints the median per-second rate of the counter that matters for the mode
run_frontend() { # $1 = txonly|io  $2 = size
  local extra=() field=Tx-pps
  if [[ $1 == io ]]; then extra=(--tx-first); field=Rx-pps; fi
  timeout -k 3 -s INT "$secs" stdbuf -oL dpdk-testpmd --lcores '0@1,1@0' --no-huge -m 1024 --no-pci --file-prefix=bench-fe$$ \
    --vdev "net_virtio_user0,path=$sock,queues=1" -- --forward-mode="$1" --txpkts="$2" --nb-cores=1 \
    --stats-period 1 "${extra[@]}" >"$work/fe.log" 2>&1 </dev/null || true
  local rates
  rates="$(grep -o "$field: *[0-9]*" "$work/fe.log" | awk '{print $2}' | tail -n +2 || true)"
  if [[ -z "$rates" ]]; then
    echo "front-end printed no $field; its log:" >&2; tail -n 30 "$work/fe.log" >&2
    echo 0; return
  fi
  echo "$rates" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else print a[int((NR+1)/2)]}'; }

declare -A result
echo "vhost-user loopback, virtio-user front-end (1 queue pair, split ring, mrg_rxbuf on), $runs run(s) of ${secs}s per case"
for size in $sizes; do
  for mode in $modes; do
    for be in serve dpdk; do
      samples=""
      for _ in $(seq "$runs"); do
        start_backend "$be"
        samples+=" $(run_frontend "$mode" "$size")"
        cleanup
      done
      result[$size,$mode,$be]="$(echo "$samples" | median)"
      echo "  $be $mode ${size}B runs:$samples" >&2
    done
  done
done
printf '%-6s %-7s %14s %14s %7s\n' size mode serve-pps dpdk-pps ratio
for size in $sizes; do
  for mode in $modes; do
    s="${result[$size,$mode,serve]}"; d="${result[$size,$mode,dpdk]}"
    ratio="$(awk -v s="$s" -v d="$d" 'BEGIN { if (d > 0) printf "%.2f", s / d; else print "n/a" }')"
    printf '%-6s %-7s %14s %14s %7s\n' "${size}B" "$mode" "$s" "$d" "$ratio"
  done
done
