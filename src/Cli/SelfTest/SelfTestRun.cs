using System.Diagnostics;
using System.Globalization;
using System.Net;
using IfcVdpa.Virtio;

namespace IfcVdpa.Cli.SelfTest;

/// <summary>Who the self-test talks to and for how long: `ip A peer-ip B [peer-if IF] [serve SECONDS] [ready-file PATH]`.</summary>
internal sealed record TrafficPlan(byte[] Ip, byte[] PeerIp, string? PeerIf, int Serve, string? ReadyFile)
{
    public static TrafficPlan Parse(Keywords kv) => new(
        SelfTestRun.ParseIp(kv.Get("ip") ?? "169.254.77.2"),
        SelfTestRun.ParseIp(kv.Get("peer-ip") ?? "169.254.77.1"),
        kv.Get("peer-if"),
        kv.Int("serve", 0),
        kv.Get("ready-file"));
}

/// <summary>A self-test step failed: printed as `PREFIX-FAIL step: reason`.</summary>
internal sealed class StepFailedException(string message) : Exception(message);

/// <summary>
/// Step bookkeeping shared by the self-tests: every step prints `PREFIX-STEP name details` for the host
/// test to assert on, and the traffic phase (ARP, three pings, serving the peer's pings, the peer
/// interface's counters) is the same whichever way the device is driven.
/// </summary>
internal sealed class SelfTestRun(TextWriter o, string prefix)
{
    public string Step { get; set; } = "start";

    public void Say(string step, string details)
    {
        Step = step;
        o.WriteLine($"{prefix}-STEP {step} {details}");
        o.Flush();
    }

    /// <summary>A log line of the component under test (thread-safe: TextWriter.Synchronized is not assumed).</summary>
    public void Log(string line)
    {
        lock (o)
        {
            o.WriteLine($"{prefix}-LOG {line}");
            o.Flush();
        }
    }

    /// <summary>Runs the proof: `PREFIX-STEP done ok` and 0, or `PREFIX-FAIL step: reason` and 1 for an expected failure.</summary>
    public int Execute(Action proof, Func<Exception, bool> expected)
    {
        try
        {
            proof();
            Say("done", "ok");
            return 0;
        }
        catch (Exception e) when (e is StepFailedException || expected(e))
        {
            Fail(e);
            return 1;
        }
    }

    public void Fail(Exception e)
    {
        o.WriteLine($"{prefix}-FAIL {Step}: {e.Message}");
        o.Flush();
    }

    public static void WaitFor(Func<bool> done, TimeSpan timeout, string failure)
    {
        var sw = Stopwatch.StartNew();
        while (!done())
        {
            if (sw.Elapsed > timeout)
            {
                throw new StepFailedException(failure);
            }
            Thread.Sleep(2);
        }
    }

    /// <summary>ARP for the peer, three pings, then answer the peer for the plan's serve seconds.</summary>
    public (long PeerRx, long PeerTx) Traffic(PingAgent agent, TrafficPlan plan)
    {
        var (ip, peerIf, serve, readyFile) = (plan.Ip, plan.PeerIf, plan.Serve, plan.ReadyFile);
        var before = PeerCounters(peerIf);
        Step = "arp";
        agent.RequestPeerMac();
        WaitFor(() => agent.PeerMac is not null, TimeSpan.FromSeconds(10), "no ARP reply from the peer");
        Say("arp", $"peer-mac={MacAddress.Format(agent.PeerMac!)}");

        Step = "ping";
        for (int i = 0; i < 3; i++)
        {
            agent.SendEcho();
            int want = i + 1;
            WaitFor(() => agent.EchoReplies >= want, TimeSpan.FromSeconds(5), $"echo reply {want} missing");
        }
        Say("ping", $"replies={agent.EchoReplies}/3");

        if (serve > 0)
        {
            Step = "serve";
            if (readyFile is not null)
            {
                File.WriteAllText(readyFile, "ready\n");
            }
            Say("serve", $"seconds={serve} ip={new IPAddress(ip)}");
            Thread.Sleep(TimeSpan.FromSeconds(serve));
            Say("served", $"arp-replies={agent.ArpAnswered} echo-replies={agent.IcmpAnswered}");
            if (agent.IcmpAnswered == 0)
            {
                throw new StepFailedException("the peer's ping never reached the device");
            }
        }

        var after = PeerCounters(peerIf);
        long rx = after.Rx - before.Rx, tx = after.Tx - before.Tx;
        if (peerIf is not null && (rx <= 0 || tx <= 0))
        {
            throw new StepFailedException($"the peer interface's counters did not move both ways (rx +{rx}, tx +{tx})");
        }
        return (rx, tx);
    }

    private static (long Rx, long Tx) PeerCounters(string? dev)
    {
        if (dev is null)
        {
            return (0, 0);
        }
        string d = Path.Combine("/sys/class/net", Path.GetFileName(dev), "statistics");
        return (long.Parse(File.ReadAllText(Path.Combine(d, "rx_packets")).Trim(), CultureInfo.InvariantCulture),
                long.Parse(File.ReadAllText(Path.Combine(d, "tx_packets")).Trim(), CultureInfo.InvariantCulture));
    }


    public static byte[] ParseIp(string s) =>
        IPAddress.TryParse(s, out var a) && a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork
            ? a.GetAddressBytes() : throw new CliException($"\"{s}\" is not an IPv4 address");
}
