using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>
/// A back-end's packet counters per queue pair, seen from the back-end: <see cref="FromFrontEnd"/>
/// counts what it took from the front-end's TX queue of pair q (virtqueue 2q+1),
/// <see cref="ToFrontEnd"/> what it delivered into the front-end's RX queue of pair q (virtqueue 2q),
/// <see cref="Drops"/> what it dropped (all queues).
/// </summary>
public sealed record BackendCounters(long[] FromFrontEnd, long[] ToFrontEnd, long Drops)
{
    public long TotalFromFrontEnd => FromFrontEnd.Sum();

    public long TotalToFrontEnd => ToFrontEnd.Sum();

    public override string ToString() =>
        $"from front-end [{string.Join(", ", FromFrontEnd)}], to front-end [{string.Join(", ", ToFrontEnd)}], drops {Drops}";
}

/// <summary>The vhost-user back-end under test, serving one socket in server mode.</summary>
public interface IVhostBackend : IDisposable
{
    string SocketPath { get; }

    int Pid { get; }

    /// <summary>Called once a front-end is up (DPDK's vhost PMD only forwards after `start`).</summary>
    void FrontEndReady();

    /// <summary>
    /// Counters once they have stopped moving (the front-end has stopped its forwarding) and at least
    /// <paramref name="minFromFrontEnd"/> packets were taken from the front-end.
    /// </summary>
    BackendCounters SettledCounters(long minFromFrontEnd, TimeSpan timeout);

    string Describe();
}

public static class VhostBackends
{
    /// <summary>Starts the back-end selected by IFCVF_PEERS_BACKEND (default: this project's `ifcvf serve`).</summary>
    public static IVhostBackend StartLoopback(string socket, int queues) =>
        PeerEnvironment.BackendKind switch
        {
            "dpdk" => new DpdkVhostBackend(socket, queues),
            "serve" => ServeBackend.Start(socket, "loopback", queues),
            var k => throw new InvalidOperationException($"IFCVF_PEERS_BACKEND={k}: expected serve or dpdk"),
        };
}

/// <summary>`./ifcvf serve --socket PATH --backend B --queues N -j --stats-period 1`, counters parsed from its JSON lines.</summary>
public sealed class ServeBackend : IVhostBackend
{
    private readonly PeerProcess _process;
    private readonly int _queues;

    public string SocketPath { get; }

    public int Pid => _process.Pid;

    public PeerProcess Process => _process;

    private ServeBackend(string socket, string backend, int queues, IEnumerable<string> extra, TimeSpan lifetime)
    {
        SocketPath = socket;
        _queues = queues;
        string[] args =
        [
            "-j", "serve", "--socket", socket, "--backend", backend,
            "--queues", queues.ToString(CultureInfo.InvariantCulture), "--stats-period", "0.25", .. extra,
        ];
        _process = new PeerProcess("ifcvf-serve", PeerEnvironment.Ifcvf, args, lifetime);
    }

    /// <summary>Starts serve and waits for its socket.</summary>
    public static ServeBackend Start(string socket, string backend, int queues, IEnumerable<string>? extra = null, TimeSpan? lifetime = null)
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf);
        var b = new ServeBackend(socket, backend, queues, extra ?? [], lifetime ?? TimeSpan.FromMinutes(5));
        // the launcher may build the CLI first (in CI, while other test projects run)
        if (!PeerEnvironment.Eventually(() => File.Exists(socket) || b._process.HasExited, TimeSpan.FromSeconds(240)) || b._process.HasExited)
        {
            string d = b.Describe();
            b.Dispose();
            throw new InvalidOperationException($"ifcvf serve did not create {socket}\n{d}");
        }
        return b;
    }

    public void FrontEndReady()
    {
    }

    /// <summary>Every counter snapshot serve has printed so far, oldest first.</summary>
    public IReadOnlyList<BackendCounters> Snapshots() => ParseSnapshots(_process.Transcript, _queues);

    public BackendCounters SettledCounters(long minFromFrontEnd, TimeSpan timeout)
    {
        BackendCounters? settled = null;
        bool ok = PeerEnvironment.Eventually(() =>
        {
            var s = Snapshots();
            if (s.Count < 2)
            {
                return false;
            }
            var (a, b) = (s[^2], s[^1]);
            if (b.TotalFromFrontEnd >= minFromFrontEnd && a.FromFrontEnd.SequenceEqual(b.FromFrontEnd) &&
                a.ToFrontEnd.SequenceEqual(b.ToFrontEnd) && a.Drops == b.Drops)
            {
                settled = b;
                return true;
            }
            return false;
        }, timeout);
        if (!ok || settled is null)
        {
            throw new TimeoutException($"serve's counters did not settle at >= {minFromFrontEnd} packets from the front-end within {timeout.TotalSeconds} s\n{Describe()}");
        }
        return settled;
    }

    /// <summary>
    /// Reads serve's periodic statistics: every stdout line that is a JSON object and holds per-queue
    /// objects with "packets" and a queue index ("queue_index", "qidx", "queue" or "index"; even = RX,
    /// odd = TX, unless "queue_type" says "rx"/"tx" with a pair index) makes one snapshot.
    /// </summary>
    public static List<BackendCounters> ParseSnapshots(string transcript, int pairs)
    {
        var result = new List<BackendCounters>();
        foreach (string raw in transcript.Split('\n'))
        {
            string line = raw.Trim();
            if (!line.StartsWith('{') || !line.EndsWith('}'))
            {
                continue;
            }
            JsonDocument doc;
            try
            {
                doc = JsonDocument.Parse(line);
            }
            catch (JsonException)
            {
                continue;
            }
            using (doc)
            {
                var from = new long[pairs];
                var to = new long[pairs];
                long drops = 0;
                int seen = 0;
                Collect(doc.RootElement, from, to, ref drops, ref seen);
                if (seen > 0)
                {
                    result.Add(new BackendCounters(from, to, drops));
                }
            }
        }
        return result;
    }

    private static void Collect(JsonElement e, long[] from, long[] to, ref long drops, ref int seen)
    {
        if (e.ValueKind == JsonValueKind.Array)
        {
            foreach (var x in e.EnumerateArray())
            {
                Collect(x, from, to, ref drops, ref seen);
            }
            return;
        }
        if (e.ValueKind != JsonValueKind.Object)
        {
            return;
        }
        if (e.TryGetProperty("packets", out var p) && p.ValueKind == JsonValueKind.Number && QueueIndex(e) is int qi)
        {
            bool? isTx = null;
            int pair = qi / 2;
            if ((e.TryGetProperty("queue_type", out var qt) || e.TryGetProperty("type", out qt)) && qt.ValueKind == JsonValueKind.String)
            {
                string t = qt.GetString() ?? "";
                if (t.StartsWith("rx", StringComparison.OrdinalIgnoreCase))
                {
                    isTx = false;
                }
                else if (t.StartsWith("tx", StringComparison.OrdinalIgnoreCase))
                {
                    isTx = true;
                }
                else
                {
                    return; // control queue
                }
            }
            isTx ??= qi % 2 == 1;
            if (pair < from.Length)
            {
                (isTx.Value ? from : to)[pair] += p.GetInt64();
                if (e.TryGetProperty("drops", out var d) && d.ValueKind == JsonValueKind.Number)
                {
                    drops += d.GetInt64();
                }
                seen++;
            }
            return;
        }
        foreach (var prop in e.EnumerateObject())
        {
            if (prop.NameEquals("total"))
            {
                continue;
            }
            Collect(prop.Value, from, to, ref drops, ref seen);
        }
    }

    private static int? QueueIndex(JsonElement e)
    {
        foreach (string name in (string[])["queue_index", "qidx", "queue", "index", "vq"])
        {
            if (e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number)
            {
                return v.GetInt32();
            }
        }
        return null;
    }

    /// <summary>serve's log lines and its last statistics line (the periodic JSON would drown the log).</summary>
    public string Describe()
    {
        var lines = _process.Transcript.Split('\n');
        var log = lines.Where(l => !l.TrimStart().StartsWith('{')).TakeLast(80);
        string last = lines.LastOrDefault(l => l.TrimStart().StartsWith('{')) ?? "(no statistics printed)";
        return $"--- ifcvf-serve (pid {Pid}): {_process.CommandLine}\n{string.Join('\n', log)}\nlast statistics: {last}\n--- end of ifcvf-serve";
    }

    /// <summary>Ctrl-C (SIGINT): serve must exit cleanly and remove its socket.</summary>
    public bool Interrupt(TimeSpan wait) => _process.Signal("INT", wait);

    public void Dispose()
    {
        _process.Signal("INT", TimeSpan.FromSeconds(5));
        _process.Dispose();
        try
        {
            File.Delete(SocketPath);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>DPDK's vhost PMD in testpmd io mode: the reference back-end (a loopback per queue).</summary>
public sealed class DpdkVhostBackend : IVhostBackend
{
    private readonly TestPmd _pmd;
    private readonly int _queues;
    private bool _started;

    public string SocketPath { get; }

    public int Pid => _pmd.Process.Pid;

    public DpdkVhostBackend(string socket, int queues)
    {
        SocketPath = socket;
        _queues = queues;
        _pmd = TestPmd.StartVhostBackend(socket, queues);
        _pmd.WaitReady();
        if (!PeerEnvironment.Eventually(() => File.Exists(socket), TimeSpan.FromSeconds(10)))
        {
            throw new InvalidOperationException($"the vhost PMD did not create {socket}\n{_pmd.Describe()}");
        }
    }

    public void FrontEndReady()
    {
        _pmd.ClearStats();
        _pmd.StartForwarding(txFirst: false);
        _started = true;
    }

    /// <summary>Front-end sessions the vhost library has seen end ("vhost peer closed" in testpmd's log).</summary>
    public int ClosedSessions => Regex.Count(_pmd.Process.Transcript, @"vhost peer closed", RegexOptions.CultureInvariant);

    public BackendCounters SettledCounters(long minFromFrontEnd, TimeSpan timeout)
    {
        // Everything the front-end sent (it has stopped) has reached the vhost port: a bounded poll, not a pause.
        PortCounters seen = default!;
        if (!PeerEnvironment.Eventually(() => (seen = _pmd.ReadCounters()).RxPackets >= minFromFrontEnd, timeout))
        {
            throw new TimeoutException($"the vhost PMD took {seen.RxPackets} of >= {minFromFrontEnd} packets from the front-end within {timeout.TotalSeconds} s\n{Describe()}");
        }
        long drops = 0;
        if (_started)
        {
            // io forwarding counts what the vhost PMD could not enqueue into the front-end's RX as TX-dropped
            string stop = _pmd.StopForwarding();
            var m = Regex.Match(stop, @"Accumulated forward statistics[\s\S]*?TX-dropped:\s+(\d+)", RegexOptions.CultureInvariant);
            drops = m.Success ? long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
            _started = false;
        }
        var c = _pmd.ReadCounters();
        var from = new long[_queues];
        var to = new long[_queues];
        for (int q = 0; q < _queues; q++)
        {
            // the vhost port receives what the front-end sent and transmits into the front-end's RX
            from[q] = Math.Max(0, c.Queue("rx", q));
            to[q] = Math.Max(0, c.Queue("tx", q));
        }
        if (from.Sum() != c.RxPackets)
        {
            from = [c.RxPackets, .. new long[_queues - 1]];
            to = [c.TxPackets, .. new long[_queues - 1]];
        }
        return new BackendCounters(from, to, drops);
    }

    public string Describe() => _pmd.Describe();

    public void Dispose()
    {
        _pmd.Quit();
        _pmd.Dispose();
    }
}
