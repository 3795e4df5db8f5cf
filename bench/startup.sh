#!/usr/bin/env bash
# Daemon start time: from exec of `ifcvf daemon` to a control socket that answers, for the release
# binary (NativeAOT, scripts/publish.sh) and, as the reference, the JIT build run by `dotnet ifcvf.dll`.
#
# Usage: bench/startup.sh [RUNS]            (RUNS or env RUNS, default 20; CPU=1 pins the daemon)
# Each run starts a fresh daemon on a fresh control socket with $NOTIFY_SOCKET pointing at a datagram
# socket the harness bound, and measures (CLOCK_MONOTONIC, from just before the fork):
#   ready  the daemon's sd_notify READY=1 (sent right after listen(2) on the control socket);
#   ping   the first answered `ping` request on the control socket (connect retried every 0.5 ms from the
#          start, so this is what a client such as libvirt's hook or systemd's next unit sees).
# Then SIGTERM and wait. Binaries run interleaved (aot, jit, aot, ...); the daemon is pinned to CPU
# $CPU with taskset, the harness to the other CPU. Output: median/min/max per binary and the ratio
# AOT/JIT of the medians; the goal for the release binary is a ready median under 100 ms.
# Needs python3 (for the harness) and the .NET SDK (to publish and to build the JIT reference).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-${RUNS:-20}}"
cpu="${CPU:-1}"
other=$(( cpu == 0 ? 1 : 0 ))
command -v python3 >/dev/null || { echo "startup: python3 is needed (apt-get install python3)" >&2; exit 1; }

aot="$("$root/scripts/publish.sh" | tail -n1)"
echo "startup: building the JIT reference (src/Cli, Release)" >&2
dotnet build "$root/src/Cli/Cli.csproj" -c Release --nologo -v quiet >/dev/null
jit_dll="$root/src/Cli/bin/Release/net10.0/ifcvf.dll"
[[ -x "$aot" && -f "$jit_dll" ]] || { echo "startup: missing $aot or $jit_dll" >&2; exit 1; }
echo "startup: aot $("$aot" --version 2>/dev/null | head -n1 || echo '?')" >&2

work="$(mktemp -d /tmp/ifcvf-startup.XXXXXX)"
trap 'rm -rf "$work"' EXIT

taskset -c "$other" python3 - "$runs" "$cpu" "$work" "$aot" "$jit_dll" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, time

runs, cpu, work, aot, jit_dll = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
binaries = {"aot": [aot], "jit": ["dotnet", jit_dll]}
env = dict(os.environ, DOTNET_CLI_TELEMETRY_OPTOUT="1", DOTNET_NOLOGO="1")
env.pop("IFCVF_CONTROL", None)
results = {k: {"ready": [], "ping": []} for k in binaries}

def one(name, i):
    ctl = os.path.join(work, f"ctl-{name}-{i}.sock")
    ntf = os.path.join(work, f"notify-{name}-{i}.sock")
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.bind(ntf)
    n.setblocking(False)
    e = dict(env, NOTIFY_SOCKET=ntf)
    t0 = time.monotonic()
    p = subprocess.Popen(["taskset", "-c", cpu, *binaries[name], "--control", ctl, "daemon"], env=e,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = ping = None
    deadline = t0 + 30
    while (ready is None or ping is None) and time.monotonic() < deadline:
        if ready is None:
            try:
                msg = n.recv(4096).decode()
                if "READY=1" in msg.split("\n"):
                    ready = time.monotonic() - t0
            except BlockingIOError:
                pass
        if ping is None:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                c.connect(ctl)
                c.sendall(b'{"cmd":"ping","args":{}}\n')
                reply = b""
                while True:
                    b = c.recv(4096)
                    if not b:
                        break
                    reply += b
                if json.loads(reply).get("ok"):
                    ping = time.monotonic() - t0
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            finally:
                c.close()
        if ready is None or ping is None:
            time.sleep(0.0005)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    n.close()
    if ready is None or ping is None:
        sys.exit(f"startup: {name} run {i}: no READY=1 or no ping answer within 30 s (exit {p.returncode})")
    results[name]["ready"].append(ready * 1000)
    results[name]["ping"].append(ping * 1000)
    print(f"startup: {name} run {i + 1}/{runs}: ready {ready * 1000:.1f} ms, ping {ping * 1000:.1f} ms", file=sys.stderr)

for i in range(runs):
    for name in binaries:
        one(name, i)

print(f"daemon start time, {runs} runs each, daemon on CPU {cpu} (ms from fork)")
print(f"{'binary':8} {'what':6} {'median':>8} {'min':>8} {'max':>8}")
for name in binaries:
    for what in ("ready", "ping"):
        v = results[name][what]
        print(f"{name:8} {what:6} {statistics.median(v):8.1f} {min(v):8.1f} {max(v):8.1f}")
for what in ("ready", "ping"):
    r = statistics.median(results["aot"][what]) / statistics.median(results["jit"][what])
    print(f"ratio aot/jit ({what} median): {r:.3f}")
goal = statistics.median(results["aot"]["ready"])
print(f"goal (aot ready median < 100 ms): {'met' if goal < 100 else 'NOT met'} ({goal:.1f} ms)")
PY
