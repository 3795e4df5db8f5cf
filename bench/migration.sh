#!/usr/bin/env bash
# Live-migration benchmark: the same migration (tests/Peers.Tests MigrationRig: a 256 MB Linux guest
# moved between two QEMU 7.2 instances over a Unix socket, pinged every 200 ms from a namespace while
# 8 MiB are sent to it over TCP) with two vhost-user back-ends per run, side by side:
#   dpdk:  DPDK's vhost PMD + net_tap in testpmd (the reference), as source and destination
#   serve: `ifcvf serve --backend tap:NAME` as source and destination (the IFC VF's LM-block dirty log)
#   serve-relay: `ifcvf serve --no-dirty-log` (a VF without the log: the back-end's software relay)
#   daemon: the daemon's `vhost add` on a software VF with a TAP backend
# For each it prints QEMU's total time and downtime (query-migrate), the wall time the test waited,
# and the pings lost (medians with [min..max] over the runs); when QEMU cannot migrate, its error instead.
# Usage: bench/migration.sh [RUNS=3]      (root; scripts/install-peers.sh installed the peers)
# Environment: BACKENDS="dpdk serve" restricts the columns; QUEUES=1|2; PINGPONG=1 runs the three-round-trip
# case (2 queue pairs) instead of one migration. DOWNTIME_LIMIT=MS sets the same QEMU downtime-limit for every
# back-end (default: QEMU's own, 300 ms); the table shows it, and per back-end QEMU's RAM passes
# (dirty-sync-count), the RAM it still had to send at its last poll while active (KiB; can fall in the stop, then 0), and the guest's
# real outage: the source's STOP event to the destination's RESUME (QEMU's downtime ends before the latter).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-3}"
backends="${BACKENDS:-dpdk serve serve-relay}"
queues="${QUEUES:-1}"
work="$(mktemp -d /tmp/ifcvf-migbench.XXXXXX)"
trap 'rm -rf "$work"' EXIT

"$root/scripts/install-peers.sh" >/dev/null
dotnet build "$root/tests/Peers.Tests" -c Release --nologo -v quiet >/dev/null
# serve: let the launcher build the CLI now rather than inside the first run
[[ " $backends " == *" serve"* || " $backends " == *" daemon "* ]] && "$root/ifcvf" --help >/dev/null 2>&1 || true

filter="FullyQualifiedName~MigrationTests.MigratesUnderPingAndTransfer"
# the one-migration theory has a row per back-end; IFCVF_MIGRATION_BACKEND turns the dpdk row (1 queue pair) into $b
case_of() { echo "&DisplayName~dpdk"; }
if [[ "${PINGPONG:-0}" == 1 ]]; then # three round trips, 2 queue pairs (the CI theory row, run on $b)
  filter="FullyQualifiedName~MigrationTests.PingPongThreeRoundTripsTwoQueuePairs"
  case_of() { echo ""; }
fi
for b in $backends; do
  for ((r = 1; r <= runs; r++)); do
    echo "migration bench: $b run $r/$runs" >&2
    IFCVF_MIGRATION_BACKEND="$b" IFCVF_MIGRATION_REPORT="$work/$b.jsonl" IFCVF_MIGRATION_DOWNTIME_LIMIT="${DOWNTIME_LIMIT:-}" \
      dotnet test "$root/tests/Peers.Tests" -c Release --no-build --nologo \
      --filter "$filter$(case_of "$b")" >"$work/$b.$r.log" 2>&1 || true
    if ! grep -q "\"backend\":\"$b\"" "$work/$b.jsonl" 2>/dev/null || [[ $(wc -l <"$work/$b.jsonl") -lt $r ]]; then
      # the test failed before migrating: keep its first failure line as the figure
      msg="$(grep -m1 -E 'Error Message|Assert|Exception' -A2 "$work/$b.$r.log" | tr '\n' ' ' | cut -c1-200)"
      printf '{"backend":"%s","status":"error","error":"%s"}\n' "$b" "${msg//\"/\'}" >>"$work/$b.jsonl"
    fi
  done
done

field() { sed -n "s/.*\"$2\":\(\"\([^\"]*\)\"\|\([-0-9]*\)\).*/\2\3/p" <<<"$1"; }
# median [min..max]
median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "-"; else printf "%s [%s..%s]\n", (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2, a[1], a[NR]}'; }

printf '\nlive migration, %s queue pair(s), %s run(s) per back-end, QEMU downtime-limit %s (medians; per-run figures below)\n' "$queues" "$runs" "${DOWNTIME_LIMIT:-default}"
printf '%-11s %20s %18s %20s %14s %12s %12s %18s %18s  %s\n' backend "total ms" "downtime ms" "wall ms" "pings lost" "lost total" "RAM passes" "KiB left (poll)" "STOP..RESUME ms" status
for b in $backends; do
  f="$work/$b.jsonl"
  ok="$(grep '"status":"completed"' "$f" || true)"
  if [[ -n "$ok" ]]; then
    tot="$(while read -r l; do field "$l" total_ms; done <<<"$ok" | median)"
    down="$(while read -r l; do field "$l" downtime_ms; done <<<"$ok" | median)"
    wall="$(while read -r l; do field "$l" wall_ms; done <<<"$ok" | median)"
    lost="$(while read -r l; do field "$l" pings_lost; done <<<"$ok" | median)"
    losttot="$(while read -r l; do field "$l" pings_lost; done <<<"$ok" | awk '{s+=$1} END {print s+0}')"
    passes="$(while read -r l; do field "$l" ram_passes; done <<<"$ok" | median | cut -d' ' -f1)"
    left="$(while read -r l; do field "$l" last_remaining_kib; done <<<"$ok" | median)"
    outage="$(while read -r l; do field "$l" stop_to_resume_ms; done <<<"$ok" | median)"
    printf '%-11s %20s %18s %20s %14s %12s %12s %18s %18s  %s\n' "$b" "$tot" "$down" "$wall" "$lost" "$losttot" "$passes" "$left" "$outage" "$(grep -c . <<<"$ok")/$runs completed"
  else
    err="$(field "$(head -n1 "$f")" error)"
    printf '%-11s %20s %18s %20s %14s %12s %12s %18s %18s  %s\n' "$b" - - - - - - - - "failed: ${err:-no report}"
  fi
done
printf '\nper run:\n'
cat "$work"/*.jsonl
