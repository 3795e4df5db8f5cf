#!/usr/bin/env bash
# Runs every fuzz harness (fuzz/*Fuzz) for a bounded time: scripts/fuzz.sh [seconds-per-target] [target...]
# Coverage-guided with afl-fuzz (Debian afl++) + SharpFuzz: each harness is published to
# artifacts/fuzz/<target>/bin, the assemblies under test are instrumented with the `sharpfuzz` tool
# (NuGet SharpFuzz.CommandLine), and afl-fuzz runs `dotnet <harness>.dll` from the committed seed
# corpus fuzz/<target>/corpus. Before fuzzing, the corpus and every saved regression input
# (fuzz/<target>/regressions) are replayed. If afl-fuzz or the tool cannot be installed, an in-process
# mutation fuzzer (not coverage-guided) runs instead and says so. Exits 1 on any crash or hang, and when
# afl-fuzz stops early because the target process died (kept: artifacts/fuzz/<target>/findings/fatal/input).
# The publishes take /tmp/ifcvf-build.lock themselves: a caller that already holds it sets FUZZ_NO_LOCK=1
# (a nested flock on the same file would wait forever).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
secs="${1:-20}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(VhostUserFuzz VirtqueueFuzz CapWalkFuzz ControlFuzz VhostFrontendFuzz)
fi
out="$root/artifacts/fuzz"
mkdir -p "$out"
lock=/tmp/ifcvf-build.lock
# FUZZ_NO_LOCK=1: the caller already serialises builds (scripts/test.sh).
locked() { if [[ -n "${FUZZ_NO_LOCK:-}" ]]; then "$@"; else flock "$lock" "$@"; fi; }

# Assemblies instrumented per target (the code under test, not the harness or the BCL); ASSEMBLY:PREFIX,...
# instruments only those namespaces/classes (types the harness itself runs on other threads would make the
# coverage vary from run to run).
declare -A instrument=(
  [VhostUserFuzz]="IfcVdpa.VhostUser IfcVdpa.IfcvfModel IfcVdpa.Ifcvf"
  [VirtqueueFuzz]="IfcVdpa.IfcvfModel IfcVdpa.VhostUser"
  [CapWalkFuzz]="IfcVdpa.Ifcvf"
  [ControlFuzz]="IfcVdpa.Daemon"
  [VhostFrontendFuzz]="IfcVdpa.VhostUser:IfcVdpa.VhostUser.Frontend,IfcVdpa.VhostUser.VhostUserConnection,IfcVdpa.VhostUser.VhostUserReplyReader"
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
  for spec in ${instrument[$t]}; do
    prefixes=()
    [[ $spec == *:* ]] && IFS=, read -ra prefixes <<<"${spec#*:}"
    "$sharpfuzz" "$bin/${spec%%:*}.dll" "${prefixes[@]}" >/dev/null
  done
  findings="$out/$t/findings"
  rm -rf "$findings"
  stats="$findings/default/fuzzer_stats"
  # The harness writes each input here before running it (FuzzDriver): SharpFuzz runs all inputs in one
  # process, so a crash it cannot catch (an exception on another thread, a memory fault) ends afl-fuzz
  # early with no saved crash; this file is then the input that killed the process.
  current="$out/$t/current-input"
  rm -f "$current"
  rc=0
  FUZZ_CURRENT_INPUT="$current" timeout $((secs + 120)) afl-fuzz -i "fuzz/$t/corpus" -o "$findings" -V "$secs" -t 5000 -m none \
    -- dotnet "$dll" >"$out/$t/afl.log" 2>&1 || rc=$?
  if [[ $rc -ne 0 && ! -f "$stats" ]]; then
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
  # The published harness is instrumented now (it faults outside afl-fuzz): replay with a plain build.
  replay_cmd="dotnet run -c Release --project fuzz/$t -- --replay"
  get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
  execs=$(get execs_done); crashes=$(get saved_crashes); hangs=$(get saved_hangs); edges=$(get edges_found); paths=$(get corpus_count)
  # A "crash" with signal 2 (SIGINT) is afl-fuzz stopping at the end of the -V window while an input was
  # still running (seen with a slow harness, ~70 execs/s): no harness raises SIGINT. It is not a finding.
  stopped=$(find "$findings/default/crashes" -name 'id:*,sig:02,*' 2>/dev/null | wc -l)
  if [[ "${crashes:-0}" -gt 0 && $stopped -gt 0 ]]; then
    echo "fuzz: $t: $stopped input(s) interrupted by afl-fuzz's own stop (SIGINT) not counted as crashes"
    crashes=$((crashes - stopped))
  fi
  summary+=("$t: ${secs}s, $execs execs, $paths inputs, $edges edges, $crashes crashes, $hangs hangs")
  if [[ $rc -ne 0 ]]; then
    mkdir -p "$findings/fatal"
    [[ -f "$current" ]] && cp "$current" "$findings/fatal/input"
    if [[ $rc -eq 124 ]]; then
      echo "fuzz: $t: afl-fuzz did not finish within $((secs + 120)) s (see $out/$t/afl.log)"
    else
      echo "fuzz: $t: afl-fuzz stopped early (exit $rc, after $(get run_time) s): the target process died; the input it was running is $findings/fatal/input; replay with: $replay_cmd FILE"
    fi
    sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' "$out/$t/afl.log" | grep -E '^\[-\]' | tail -n 3 || true
    summary+=("$t: FATAL: afl-fuzz exit $rc (124: timed out; otherwise the target process died)")
    status=1
  fi
  if [[ "${crashes:-0}" != 0 || "${hangs:-0}" != 0 ]]; then
    echo "fuzz: $t: crashes/hangs saved in $findings/default/{crashes,hangs}; replay with: $replay_cmd FILE"
    status=1
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
exit $status
