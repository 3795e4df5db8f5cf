#!/usr/bin/env bash
# Builds the issue 17 harness: DPDK's UNMODIFIED IFC VF base code (drivers/vdpa/ifc/base/ifcvf.c and
# ifcvf.h from Debian's dpdk source package, fetched by fetch-source.sh into .peers/dpdk-src) compiled
# against the project's own ifcvf_osdep.h and harness.c (tests/Fidelity.Tests/DpdkIfc).
# Usage: build-harness.sh OUT_DIR   -> prints the executable's path on its last line.
# ifcvf.c includes "ifcvf_osdep.h" with quotes, which would find DPDK's own header next to it first; so the
# two DPDK files are copied (byte for byte, checked with cmp) into a build folder next to our header.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:?usage: build-harness.sh OUT_DIR}"
ours="$root/tests/Fidelity.Tests/DpdkIfc"
base="$("$here/fetch-source.sh" | tail -n1)"
command -v gcc >/dev/null || { echo "dpdk-ifc: gcc missing (scripts/install-peers.sh installs build-essential)" >&2; exit 1; }
src="$out/src"
rm -rf "$src"
mkdir -p "$src"
for f in ifcvf.c ifcvf.h; do
  cp "$base/$f" "$src/$f"
  cmp -s "$base/$f" "$src/$f" || { echo "dpdk-ifc: copy of $f differs from DPDK's" >&2; exit 1; }
done
cp "$ours/ifcvf_osdep.h" "$ours/harness.c" "$src/"
# -O2 as a DPDK build would (it uses -O3); our files are held to -Werror, DPDK's file is built as shipped.
gcc -std=gnu11 -O2 -g -Wall -Wextra -Werror -c -o "$src/harness.o" -I"$src" "$src/harness.c"
gcc -std=gnu11 -O2 -g -Wall -c -o "$src/ifcvf.o" -I"$src" "$src/ifcvf.c"
gcc -o "$out/ifcvf-harness" "$src/harness.o" "$src/ifcvf.o"
echo "dpdk-ifc: built $out/ifcvf-harness (DPDK base code from $base)" >&2
echo "$out/ifcvf-harness"
