#!/usr/bin/env bash
# bench/micro-ab.sh ROUNDS SECS TREE_A TREE_B CASE...
#
# The per-packet profile of bench/Micro (`Micro.dll profile FRAME BURST LOOPBACK SECS`) for two source
# trees, alternating A and B round by round so that a drifting machine load hits both alike. Both sides
# run pinned to the same CPU (CPU=1 by default). A case is FRAME:BURST:LOOPBACK, e.g. 64:1:true. All
# rounds of a case run under LOCK (default /work/build.lock when it exists) so that no build or test
# shares the machine with them. Prints every sample, then per case the median [min..max] of
# each tree and the ratio of the medians B/A.
#
# Both trees must have bench/Micro built in Release:
#   dotnet build bench/Micro -c Release
# Example (the tree before the redesign against this one):
#   bench/micro-ab.sh 4 6 /work/wt-old . 64:1:true 64:1:false 64:32:true 64:32:false
set -euo pipefail
if [ $# -lt 5 ]; then
  sed -n '2,14p' "$0"
  exit 2
fi
rounds=$1 secs=$2 a=$(cd "$3" && pwd) b=$(cd "$4" && pwd)
shift 4
cpu=${CPU:-1}
lock=${LOCK:-/work/build.lock}
out=$(mktemp /tmp/micro-ab.XXXXXX)

run() { # tree frame burst loopback
  local dll="$1/bench/Micro/bin/Release/net10.0/Micro.dll"
  [ -f "$dll" ] || { echo "no $dll (build bench/Micro in $1 first)" >&2; exit 1; }
  shift
  taskset -c "$cpu" dotnet "$dll" profile "$@" "$secs" | awk '{print $1}'
}

case_rounds() { # case: every round of it, A then B, one line per sample
  local c=$1 f bu l r
  IFS=: read -r f bu l <<<"$c"
  for r in $(seq "$rounds"); do
    echo "$c A $(run "$a" "$f" "$bu" "$l")"
    echo "$c B $(run "$b" "$f" "$bu" "$l")"
  done
}

for c in "$@"; do
  if [ -e "$lock" ]; then
    flock "$lock" bash -c "$(declare -f run case_rounds); rounds=$rounds cpu=$cpu secs=$secs a=$a b=$b; case_rounds $c"
  else
    case_rounds "$c"
  fi | tee -a "$out"
done

python3 - "$out" "$a" "$b" <<'PY'
import sys, statistics as st, collections
d = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    c, t, v = line.split()
    if c not in order:
        order.append(c)
    d[(c, t)].append(float(v))
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}")
print(f"{'case':22s} {'A median [min..max]':>26s} {'B median [min..max]':>26s}  B/A")
for c in order:
    A, B = d[(c, 'A')], d[(c, 'B')]
    fa = f"{st.median(A):.1f} [{min(A):.1f}..{max(A):.1f}]"
    fb = f"{st.median(B):.1f} [{min(B):.1f}..{max(B):.1f}]"
    print(f"{c:22s} {fa:>26s} {fb:>26s}  {st.median(B) / st.median(A):.2f}")
PY
rm -f "$out"
