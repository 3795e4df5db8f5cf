#!/usr/bin/env bash
# Loopback benchmark, the DPDK community's method (docs/peers.md, bench/README.md): one DPDK
# virtio-user front-end (testpmd) against two vhost-user back-ends, one after the other in one run:
#   serve: taskset -c 1 ./ifcvf serve --backend loopback --poll --cpu 1   (this project)
#   dpdk:  testpmd --lcores '0@0,1@1' with DPDK's vhost PMD in io mode   (the reference)
# The front-end is always testpmd --lcores '0@1,1@0' (main lcore on CPU 1, forwarding lcore on
# CPU 0), so each back-end's datapath owns CPU 1 and the front-end's forwarding owns CPU 0.
#
# Usage: bench/vhost-loopback.sh [RUNS] [SECONDS]          (root; scripts/install-peers.sh)
#   RUNS (or env RUNS, default 5) runs per case and back-end, interleaved (serve, dpdk, serve, ...);
#   SECONDS (or env SECS, default 5) measured per run, after WARMUP=1 s of warm-up.
# The matrix (environment variables, space-separated):
#   RINGS="split packed"   virtio-user packed_vq=0|1
#   MODES="txonly io1 io32" txonly: rate = front-end Tx-pps; io1: io loop started with
#                          `start tx_first` (one burst in flight); io32: `start tx_first 32`
#                          (32 bursts in flight); io rates = front-end Rx-pps
#   SIZES="64 1518"        frame size (--txpkts), Ethernet frame without CRC
#   MRG="1 0"              virtio-user mrg_rxbuf=1|0
#   QP2=1                  also the 2-queue-pair case (split io32 64 B mrg_rxbuf=1); 0: not
#   CASES="ring:mode:size:mrg:qp ..."   exactly these cases instead (e.g. "split:io32:64:1:2")
#   KEEP=DIR               copy every run's front-end and back-end logs into DIR
#   BACKENDS="serve dpdk"  SERVE_CPU=1 (serve's worker and taskset CPU; DPDK's lcores follow the
#                          fixed layout above, so change it only on a machine with other CPUs)
# Output: one table (stdout); per-run samples and progress on stderr. Any run that measures 0 or
# cannot be parsed fails the case loudly (its log is kept) and the script exits 1.
# Columns, pinning, the noise caveat and why the old script printed 0 pps: bench/README.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-${RUNS:-5}}"
secs="${2:-${SECS:-5}}"
warmup="${WARMUP:-1}"
rings="${RINGS:-split packed}"
modes="${MODES:-txonly io1 io32}"
sizes="${SIZES:-64 1518}"
mrgs="${MRG:-1 0}"
backends="${BACKENDS:-serve dpdk}"
serve_cpu="${SERVE_CPU:-1}"
work="$(mktemp -d /tmp/ifcvf-bench.XXXXXX)"
sock="$work/vhost.sock"
be_pid="" fe_pid="" failed=0

stop_pid() { # $1 = pid: TERM, wait up to 3 s, then KILL (testpmd may ignore TERM with a peer attached)
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() { stop_pid "$fe_pid"; stop_pid "$be_pid"; fe_pid="" be_pid=""; }
trap 'rc=$?; cleanup; rm -rf /var/run/dpdk/bench-be$$ /var/run/dpdk/bench-fe$$; if [[ $rc == 0 ]]; then rm -rf "$work"; fi' EXIT

die() { echo "vhost-loopback: $*" >&2; exit 1; }
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd missing: run scripts/install-peers.sh"
"$root/ifcvf" --help >/dev/null   # build the CLI once, before any timing

start_backend() { # $1 = serve|dpdk  $2 = queue pairs
  rm -f "$sock"
  if [[ $1 == serve ]]; then
    # the whole process on CPU 1 (as DPDK's forwarding lcore) and the datapath worker pinned there
    taskset -c "$serve_cpu" "$root/ifcvf" serve --socket "$sock" --backend loopback --poll --cpu "$serve_cpu" \
      --queues "$2" >"$work/be.log" 2>&1 &
  else
    # --stats-period keeps testpmd from reading stdin; the socket listens once the port started
    timeout -s KILL 600 stdbuf -oL dpdk-testpmd --lcores '0@0,1@1' --no-huge -m 1024 --no-pci --file-prefix=bench-be$$ \
      --vdev "net_vhost0,iface=$sock,queues=$2" -- --forward-mode=io --nb-cores=1 --rxq="$2" --txq="$2" \
      --stats-period 3600 --disable-link-check >"$work/be.log" 2>&1 </dev/null &
  fi
  be_pid=$!
  for _ in $(seq 300); do
    if [[ -S "$sock" ]] && { [[ $1 == serve ]] || grep -q "start packet forwarding" "$work/be.log"; }; then return 0; fi
    kill -0 "$be_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$work/be.log" >&2; die "back-end $1 did not listen on $sock"
}

wait_log() { # $1 = pattern, $2 = seconds
  for _ in $(seq $(($2 * 10))); do grep -q -- "$1" "$work/fe.log" && return 0; kill -0 "$fe_pid" 2>/dev/null || return 1; sleep 0.1; done
  return 1
}

# The worker thread of serve's software VF ("vq-sim:00.0") must sit on SERVE_CPU: its allowed CPUs
# and the CPU it last ran on (/proc/PID/task/TID/stat field 39).
check_serve_pinning() {
  local t comm allowed cpu
  for t in /proc/"$be_pid"/task/*; do
    comm="$(cat "$t/comm" 2>/dev/null || true)"
    [[ $comm == vq-* ]] || continue
    allowed="$(awk '/^Cpus_allowed_list/ {print $2}' "$t/status")"
    cpu="$(awk '{print $39}' "$t/stat")"
    [[ $allowed == "$serve_cpu" && $cpu == "$serve_cpu" ]] && return 0
    echo "serve's worker $comm runs on CPU $cpu, allowed $allowed (expected $serve_cpu)" >&2; return 1
  done
  echo "serve's datapath worker thread (vq-*) not found" >&2; return 1
}

# One front-end run, interactive testpmd fed through a fifo; prints the measured rate (pps) or fails.
run_frontend() { # $1 = be  $2 = ring  $3 = mode  $4 = size  $5 = mrg  $6 = queue pairs
  local packed=0 fwd=io start field=Rx-pps
  [[ $2 == packed ]] && packed=1
  case "$3" in
    txonly) fwd=txonly start="start" field=Tx-pps ;;
    io1) start="start tx_first" ;;
    io32) start="start tx_first 32" ;;
    *) die "unknown mode $3 (txonly, io1, io32)" ;;
  esac
  rm -f "$work/fe.in" "$work/fe.log"; mkfifo "$work/fe.in"
  timeout -s KILL $((secs + warmup + 90)) stdbuf -oL dpdk-testpmd --lcores '0@1,1@0' --no-huge -m 1024 --no-pci \
    --file-prefix=bench-fe$$ --log-level=pmd.net.virtio.init:debug \
    --vdev "net_virtio_user0,path=$sock,queues=$6,packed_vq=$packed,mrg_rxbuf=$5" \
    -- -i --forward-mode="$fwd" --txpkts="$4" --nb-cores=1 --rxq="$6" --txq="$6" <"$work/fe.in" >"$work/fe.log" 2>&1 &
  fe_pid=$!
  exec 3>"$work/fe.in"
  # the front-end must have negotiated what the case asks for (virtio-user falls back silently)
  local ok=1 feat
  if wait_log "features after negotiate" 60; then
    feat=$((16#$(grep -o 'features after negotiate = [0-9a-fA-F]*' "$work/fe.log" | tail -1 | awk '{print $NF}')))
    (( (feat >> 34 & 1) == packed && (feat >> 15 & 1) == $5 )) || { echo "negotiated features 0x$(printf %x "$feat") do not match packed_vq=$packed mrg_rxbuf=$5" >&2; ok=0; }
  else
    echo "front-end did not negotiate features" >&2; ok=0
  fi
  if (( ok )); then
    echo "$start" >&3
    wait_log "packet forwarding - ports=" 30 || { echo "forwarding did not start" >&2; ok=0; }
  fi
  if (( ok )); then
    sleep "$warmup"
    [[ $1 == serve ]] && { check_serve_pinning || ok=0; }
    echo "show port stats 0" >&3   # the rate printed next is averaged since this one
    sleep "$secs"
    echo "show port stats 0" >&3
  fi
  echo "stop" >&3; echo "quit" >&3
  exec 3>&-
  for _ in $(seq 100); do kill -0 "$fe_pid" 2>/dev/null || break; sleep 0.1; done
  stop_pid "$fe_pid"; fe_pid=""
  local rate
  rate="$(grep -o "$field: *[0-9]*" "$work/fe.log" | awk '{print $2}' | sed -n 2p || true)"
  if (( !ok )) || [[ -z $rate || $rate == 0 ]]; then
    local keep="$work/fail-$1-$2-$3-$4-mrg$5-q$6.$RANDOM"
    cp "$work/fe.log" "$keep.fe.log"; cp "$work/be.log" "$keep.be.log" 2>/dev/null || true
    echo "FAILED: $1 $2 $3 ${4}B mrg_rxbuf=$5 queues=$6: front-end $field '${rate:-none}'; logs: $keep.{fe,be}.log" >&2
    tail -n 15 "$work/fe.log" >&2
    echo FAIL; return
  fi
  echo "$rate"
}

stats() { # samples on stdin (pps) -> "median min max" in Mpps, or FAIL
  tr ' ' '\n' | grep -v '^$' | sort -n | awk '
    /FAIL/ {f=1} {a[NR]=$1}
    END { if (f || NR == 0) { print "FAIL FAIL FAIL"; exit }
          m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
          printf "%.3f %.3f %.3f\n", m/1e6, a[1]/1e6, a[NR]/1e6 }'
}

cases=()
if [[ -n "${CASES:-}" ]]; then
  read -ra cases <<<"$CASES"
else
  for ring in $rings; do for mode in $modes; do for size in $sizes; do for mrg in $mrgs; do
    cases+=("$ring:$mode:$size:$mrg:1")
  done; done; done; done
  [[ ${QP2:-1} == 1 ]] && cases+=("split:io32:64:1:2")
fi

declare -A result
echo "vhost-user loopback: ${#cases[@]} case(s) x ${runs} run(s) x ${secs}s per back-end ($backends); work dir $work" >&2
for c in "${cases[@]}"; do
  IFS=: read -r ring mode size mrg qp <<<"$c"
  declare -A samples=()
  for r in $(seq "$runs"); do
    for be in $backends; do
      start_backend "$be" "$qp"
      s="$(run_frontend "$be" "$ring" "$mode" "$size" "$mrg" "$qp")"
      cleanup
      if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP"; cp "$work/fe.log" "$KEEP/$c.$r.$be.fe.log"; cp "$work/be.log" "$KEEP/$c.$r.$be.be.log"; fi
      [[ $s =~ ^[0-9]+$ ]] || { s=FAIL; failed=1; }
      samples[$be]+=" $s"
      echo "  $c run $r $be: $s pps" >&2
    done
  done
  for be in $backends; do result[$c,$be]="$(echo "${samples[$be]}" | stats)"; done
  unset samples
done

printf '%-6s %-6s %5s %3s %2s' ring mode size mrg qp
for be in $backends; do printf ' | %-5s %7s %7s %7s' "$be" median min max; done
[[ $backends == "serve dpdk" ]] && printf ' | %s' "serve/dpdk"
echo
for c in "${cases[@]}"; do
  IFS=: read -r ring mode size mrg qp <<<"$c"
  printf '%-6s %-6s %5s %3s %2s' "$ring" "$mode" "$size" "$mrg" "$qp"
  for be in $backends; do read -r m lo hi <<<"${result[$c,$be]}"; printf ' | %-5s %7s %7s %7s' "" "$m" "$lo" "$hi"; done
  if [[ $backends == "serve dpdk" ]]; then
    read -r s _ <<<"${result[$c,serve]}"; read -r d _ <<<"${result[$c,dpdk]}"
    printf ' | %s' "$(awk -v s="$s" -v d="$d" 'BEGIN { if (s == "FAIL" || d == "FAIL" || d <= 0) print "n/a"; else printf "%.2f", s / d }')"
  fi
  echo
done
echo "(Mpps: median, min and max of $runs run(s) of ${secs}s; txonly = front-end Tx rate, io1/io32 = front-end Rx rate)"
if [[ $failed == 1 ]]; then echo "vhost-loopback: some runs FAILED (0 or no rate); logs kept in $work" >&2; exit 1; fi
