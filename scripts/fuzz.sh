#!/usr/bin/env bash
# Runs every fuzz harness (fuzz/*Fuzz) for a bounded time: scripts/fuzz.sh [seconds-per-target] [target...]
# Coverage-guided with afl-fuzz (Debian afl++) + SharpFuzz: each harness is published to
# artifacts/fuzz/<target>/bin, the assemblies under test are instrumented with the `sharpfuzz` tool
# (NuGet SharpFuzz.CommandLine), and afl-fuzz runs `dotnet <harness>.dll` from the committed seed
# corpus fuzz/<target>/corpus. Before fuzzing, the corpus and every saved regression input
# (fuzz/<target>/regressions) are replayed. If afl-fuzz or the tool cannot be installed, an in-process
# mutation fuzzer (not coverage-guided) runs instead and says so. Exits 1 on any crash or hang.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
secs="${1:-20}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(VhostUserFuzz VirtqueueFuzz CapWalkFuzz ControlFuzz)
fi
out="$root/artifacts/fuzz"
mkdir -p "$out"
lock=/tmp/ifcvf-build.lock
# FUZZ_NO_LOCK=1: the caller already serialises builds (scripts/test.sh).
locked() { if [[ -n "${FUZZ_NO_LOCK:-}" ]]; then "$@"; else flock "$lock" "$@"; fi; }

# Assemblies instrumented per target (the code under test, not the harness or the BCL).
declare -A instrument=(
  [VhostUserFuzz]="IfcVdpa.VhostUser IfcVdpa.IfcvfModel IfcVdpa.Ifcvf"
  [VirtqueueFuzz]="IfcVdpa.IfcvfModel IfcVdpa.VhostUser"
  [CapWalkFuzz]="IfcVdpa.Ifcvf"
  [ControlFuzz]="IfcVdpa.Daemon"
)

mode=afl
if ! command -v afl-fuzz >/dev/null; then
  echo "fuzz: installing afl++"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq afl++ >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq afl++ >/dev/null 2>&1; }; } || true
fi
sharpfuzz="$out/tools/sharpfuzz"
if [[ ! -x "$sharpfuzz" ]]; then
  dotnet tool install SharpFuzz.CommandLine --version 2.3.0 --tool-path "$out/tools" >/dev/null 2>&1 || true
fi
if ! command -v afl-fuzz >/dev/null || [[ ! -x "$sharpfuzz" ]]; then
  mode=mutate
  echo "fuzz: afl-fuzz or sharpfuzz unavailable: falling back to the in-process mutation fuzzer (NOT coverage-guided)"
fi

export AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

status=0
summary=()
for t in "${targets[@]}"; do
  bin="$out/$t/bin"
  rm -rf "$bin"
  locked dotnet publish "fuzz/$t/$t.csproj" -c Release -o "$bin" --nologo -v quiet >/dev/null
  dll="$bin/IfcVdpa.$t.dll"
  # Regression inputs and seeds first (plain .NET, before instrumentation).
  replay=("fuzz/$t/corpus")
  [[ -d "fuzz/$t/regressions" ]] && replay+=("fuzz/$t/regressions")
  if ! dotnet "$dll" --replay "${replay[@]}" | tail -n 20; then
    echo "fuzz: $t: a corpus or regression input fails"
    status=1
    continue
  fi
  if [[ $mode == mutate ]]; then
    if dotnet "$dll" --mutate "$secs" "fuzz/$t/corpus" "$out/$t/mutate-crashes" | tail -n 5; then
      summary+=("$t: mutate ${secs}s ok")
    else
      summary+=("$t: mutate CRASH")
      status=1
    fi
    continue
  fi
  for a in ${instrument[$t]}; do
    "$sharpfuzz" "$bin/$a.dll" >/dev/null
  done
  findings="$out/$t/findings"
  rm -rf "$findings"
  stats="$findings/default/fuzzer_stats"
  if ! timeout $((secs + 120)) afl-fuzz -i "fuzz/$t/corpus" -o "$findings" -V "$secs" -t 5000 -m none -- dotnet "$dll" \
    >"$out/$t/afl.log" 2>&1 && [[ ! -f "$stats" ]]; then
    # afl-fuzz could not run here (e.g. a sandbox without its requirements): say so, fuzz in-process instead.
    echo "fuzz: $t: afl-fuzz did not run (see $out/$t/afl.log); falling back to the in-process mutation fuzzer (NOT coverage-guided)"
    tail -n 5 "$out/$t/afl.log"
    if dotnet "$dll" --mutate "$secs" "fuzz/$t/corpus" "$out/$t/mutate-crashes" | tail -n 5; then
      summary+=("$t: mutate ${secs}s ok (afl-fuzz unavailable)")
    else
      summary+=("$t: mutate CRASH")
      status=1
    fi
    continue
  fi
  get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
  execs=$(get execs_done); crashes=$(get saved_crashes); hangs=$(get saved_hangs); edges=$(get edges_found); paths=$(get corpus_count)
  summary+=("$t: ${secs}s, $execs execs, $paths inputs, $edges edges, $crashes crashes, $hangs hangs")
  if [[ "${crashes:-0}" != 0 || "${hangs:-0}" != 0 ]]; then
    echo "fuzz: $t: crashes/hangs saved in $findings/default/{crashes,hangs}; replay with: dotnet $dll --replay FILE"
    status=1
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
exit $status
