using System.Globalization;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>How a virtio-user front-end is set up (devargs of net_virtio_user and testpmd options).</summary>
public sealed record FrontEndOptions
{
    public int Queues { get; init; } = 1;

    public bool Packed { get; init; }

    public bool MergeableRx { get; init; } = true;

    public bool InOrder { get; init; }

    /// <summary>testpmd forwarding mode: txonly, rxonly, io, macswap.</summary>
    public string Mode { get; init; } = "io";

    /// <summary>Packet size for txonly/tx_first (Ethernet frame without CRC).</summary>
    public int PacketSize { get; init; } = 64;

    public int QueueSize { get; init; } = 256;

    public string DevArgs(string socket) => string.Create(CultureInfo.InvariantCulture,
        $"net_virtio_user0,path={socket},queues={Queues},queue_size={QueueSize},packed_vq={(Packed ? 1 : 0)},mrg_rxbuf={(MergeableRx ? 1 : 0)},in_order={(InOrder ? 1 : 0)}");

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Mode} queues={Queues} {(Packed ? "packed" : "split")} mrg_rxbuf={(MergeableRx ? 1 : 0)} {PacketSize}B");
}

/// <summary>Port counters as testpmd prints them (`show port stats` and `show port xstats`).</summary>
public sealed record PortCounters(long RxPackets, long TxPackets, long RxBytes, long TxBytes, IReadOnlyDictionary<string, long> Extended)
{
    /// <summary>A per-queue extended counter such as rx_q1_good_packets (-1 when the PMD has none).</summary>
    public long Queue(string direction, int queue, string what = "good_packets") =>
        Extended.TryGetValue(string.Create(CultureInfo.InvariantCulture, $"{direction}_q{queue}_{what}"), out long v) ? v : -1;

    public override string ToString() => $"rx {RxPackets} pkts/{RxBytes} B, tx {TxPackets} pkts/{TxBytes} B";
}

/// <summary>
/// DPDK testpmd driven interactively through stdin (`-i`): as a virtio-user front-end or, for
/// reference, as DPDK's own vhost-user back-end (net_vhost PMD). Always started under
/// `timeout -s KILL` so that it cannot outlive a crashed test; killed by PID on dispose; its
/// --file-prefix runtime directory is removed.
/// </summary>
public sealed class TestPmd : IDisposable
{
    private static readonly Regex s_prompt = new(@"testpmd> ", RegexOptions.CultureInvariant);
    private readonly PeerProcess _process;
    private readonly string _prefix;

    public PeerProcess Process => _process;

    private TestPmd(string name, string cpuMap, string vdev, IEnumerable<string> appArgs, TimeSpan lifetime)
        : this(name, cpuMap, [vdev], appArgs, lifetime, netns: null)
    {
    }

    private TestPmd(string name, string cpuMap, string[] vdevs, IEnumerable<string> appArgs, TimeSpan lifetime, string? netns)
    {
        PeerEnvironment.Require(PeerEnvironment.TestPmd);
        _prefix = PeerEnvironment.Unique("ifcvf-t");
        // inside a namespace `ip netns exec` execs timeout, whose one child is (stdbuf exec-ing) testpmd
        string[] launcher = netns is null ? ["timeout"] : ["ip", "netns", "exec", netns, "timeout"];
        string[] args =
        [
            .. launcher[1..],
            "-s", "KILL", ((int)lifetime.TotalSeconds).ToString(CultureInfo.InvariantCulture),
            // testpmd's prompt is written unbuffered, its output through stdio: line-buffer stdout so they stay in order
            "stdbuf", "-oL", PeerEnvironment.TestPmd,
            "--lcores", cpuMap, "--no-huge", "-m", "1024", "--no-pci", "--file-prefix=" + _prefix,
            "--log-level=pmd.net.virtio.init:debug", .. vdevs.SelectMany(v => (string[])["--vdev", v]), "--", "-i", .. appArgs,
        ];
        _process = new PeerProcess(name, launcher[0], args, lifetime + TimeSpan.FromSeconds(5));
    }

    /// <summary>A virtio-user front-end on <paramref name="socket"/>; lcore 1 forwards on CPU 0, the main lcore sits on CPU 1.</summary>
    public static TestPmd StartFrontEnd(string socket, FrontEndOptions o, TimeSpan? lifetime = null, string cpuMap = "0@1,1@0")
    {
        string q = o.Queues.ToString(CultureInfo.InvariantCulture);
        var t = new TestPmd("testpmd-fe", cpuMap, o.DevArgs(socket),
            ["--forward-mode=" + o.Mode, "--nb-cores=1", "--rxq=" + q, "--txq=" + q,
             "--txpkts=" + o.PacketSize.ToString(CultureInfo.InvariantCulture),
             "--rxd=" + o.QueueSize.ToString(CultureInfo.InvariantCulture),
             "--txd=" + o.QueueSize.ToString(CultureInfo.InvariantCulture)],
            lifetime ?? TimeSpan.FromSeconds(60));
        return t;
    }

    /// <summary>DPDK's vhost PMD as a server-mode back-end on <paramref name="socket"/>, forwarding in io mode (a loopback).</summary>
    public static TestPmd StartVhostBackend(string socket, int queues, TimeSpan? lifetime = null, string cpuMap = "0@0,1@1")
    {
        string q = queues.ToString(CultureInfo.InvariantCulture);
        return new TestPmd("testpmd-vhost", cpuMap, $"net_vhost0,iface={socket},queues={q}",
            ["--forward-mode=io", "--nb-cores=1", "--rxq=" + q, "--txq=" + q, "--disable-link-check"], lifetime ?? TimeSpan.FromSeconds(120));
    }

    /// <summary>
    /// DPDK's vhost PMD bridged to a TAP by io forwarding (port 0 net_vhost0 on <paramref name="socket"/>,
    /// port 1 net_tap0 creating <paramref name="tap"/>), run inside network namespace <paramref name="netns"/>
    /// so that the TAP is born there: the reference back-end of the live-migration tests.
    /// </summary>
    public static TestPmd StartVhostTapBackend(string socket, string tap, int queues, string netns, TimeSpan lifetime, string cpuMap)
    {
        string q = queues.ToString(CultureInfo.InvariantCulture);
        return new TestPmd("testpmd-vhost-tap", cpuMap, [$"net_vhost0,iface={socket},queues={q}", $"net_tap0,iface={tap}"],
            ["--forward-mode=io", "--nb-cores=1", "--rxq=" + q, "--txq=" + q, "--disable-link-check"], lifetime, netns);
    }

    /// <summary>Waits for the first prompt (ports configured and started, virtio-user connected).</summary>
    public void WaitReady(TimeSpan? timeout = null)
    {
        try
        {
            _process.WaitForStdout(s_prompt, timeout ?? TimeSpan.FromSeconds(30));
        }
        catch (TimeoutException e)
        {
            throw new InvalidOperationException("testpmd did not come up: " + e.Message, e);
        }
    }

    /// <summary>Sends a command and waits for the next prompt; returns what it printed.</summary>
    public string Command(string command, TimeSpan? timeout = null)
    {
        // the prompt is looked for on stdout alone: PMD log lines on stderr can split it
        int mark = _process.StdoutMark;
        _process.Send(command);
        var m = _process.WaitForStdout(s_prompt, timeout ?? TimeSpan.FromSeconds(20), mark);
        return _process.Stdout[mark..m.Index];
    }

    /// <summary>The virtio features a virtio-user front-end negotiated (from its init log), and what the back-end offered.</summary>
    public (ulong Negotiated, ulong Offered) Features()
    {
        var after = _process.WaitFor(@"features after negotiate = ([0-9a-fA-F]+)", TimeSpan.FromSeconds(5));
        var offered = _process.WaitFor(@"host_features before negotiate = ([0-9a-fA-F]+)", TimeSpan.FromSeconds(5));
        return (ulong.Parse(after.Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                ulong.Parse(offered.Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture));
    }

    public void StartForwarding(bool txFirst) => Command(txFirst ? "start tx_first" : "start");

    /// <summary>`stop`: the forwarding cores stop polling; returns the accumulated forward statistics text.</summary>
    public string StopForwarding() => Command("stop");

    public void ClearStats() => Command("clear port stats all");

    /// <summary>Port 0's counters from `show port stats 0` and `show port xstats 0`.</summary>
    public PortCounters ReadCounters()
    {
        string basic = Command("show port stats 0");
        string ext = Command("show port xstats 0");
        return ParseCounters(basic, ext);
    }

    /// <summary>Parses testpmd's `show port stats` and `show port xstats` output.</summary>
    public static PortCounters ParseCounters(string basic, string extended)
    {
        static long Field(string text, string name)
        {
            var m = Regex.Match(text, Regex.Escape(name) + @":\s+(\d+)", RegexOptions.CultureInvariant);
            if (!m.Success)
            {
                throw new FormatException($"no {name} in testpmd output:\n{text}");
            }
            return long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        }
        var ext = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (Match m in Regex.Matches(extended, @"^\s*([a-z0-9_]+):\s+(\d+)\s*$", RegexOptions.Multiline | RegexOptions.CultureInvariant))
        {
            ext[m.Groups[1].Value] = long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
        }
        return new PortCounters(Field(basic, "RX-packets"), Field(basic, "TX-packets"), Field(basic, "RX-bytes"), Field(basic, "TX-bytes"), ext);
    }

    /// <summary>`quit`, then kill if it has not exited in a few seconds (it may hang while a peer is attached).</summary>
    public void Quit()
    {
        if (!_process.HasExited)
        {
            _process.Send("quit");
            _process.WaitForExit(TimeSpan.FromSeconds(8));
        }
    }

    public string Describe() => _process.Describe();

    public void Dispose()
    {
        _process.Dispose();
        try
        {
            Directory.Delete(Path.Combine("/var/run/dpdk", _prefix), recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
