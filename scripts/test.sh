#!/usr/bin/env bash
# The one command that runs every test on a fresh Debian 12 machine: installs what the tests need
# (apt packages, real peers), builds, runs all test projects. Exits non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Host tools the namespace tests use (ping, ip); the peers script installs DPDK/QEMU.
if ! command -v ping >/dev/null || ! command -v ip >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq iputils-ping iproute2 >/dev/null
fi
if [[ -x scripts/install-peers.sh ]]; then
  scripts/install-peers.sh
fi
dotnet build IfcVdpa.slnx -c Release --nologo -v quiet
status=0
log=$(mktemp)
FUZZ_NO_LOCK=1 scripts/fuzz.sh 10 || status=$? # fuzz smoke (issue 8): corpora replayed, then 10 s of afl-fuzz per harness
dotnet test IfcVdpa.slnx -c Release --no-build --nologo -v quiet --filter "Category!=Manual" --logger "console;verbosity=normal" 2>&1 | tee "$log" || status=$?
# One plain summary line for CI readers.
count() { { grep -Eo "^ +$1: +[0-9]+" "$log" || true; } | awk '{s+=$2} END {print s+0}'; }
passed=$(count Passed)
failed=$(count Failed)
skipped=$(count Skipped)
rm -f "$log"
echo "tests: $passed passed, $failed failed, $skipped skipped"
if [[ $status -ne 0 || $failed -ne 0 || $passed -eq 0 ]]; then
  exit 1
fi
