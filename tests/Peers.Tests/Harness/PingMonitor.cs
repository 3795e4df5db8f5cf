using System.Globalization;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>What a <see cref="PingMonitor"/> saw: echo requests answered and lost (by sequence number).</summary>
public sealed record PingTally(int Sent, int Answered, IReadOnlyList<int> LostSequences)
{
    public int Lost => LostSequences.Count;

    public override string ToString() =>
        $"{Answered}/{Sent} answered, {Lost} lost" + (Lost > 0 ? $" (icmp_seq {string.Join(',', LostSequences)})" : "");
}

/// <summary>
/// iputils `ping -i 0.2` from the rig's namespace to the guest for as long as it runs. Losses are counted
/// by sequence number: every request up to the highest answered one that got no reply is lost, so a
/// request still in flight when the monitor stops is not miscounted, and counting starts at the first
/// answer (the caller waits for later replies
/// first, see <see cref="WaitForRepliesAfter"/>).
/// </summary>
public sealed partial class PingMonitor : IDisposable
{
    public const double IntervalSeconds = 0.2;

    private readonly PeerProcess _process;

    public PingMonitor(NetNamespace ns, string target, TimeSpan lifetime)
    {
        // -n: no reverse lookups; -W 1: wait for late replies up to a second (a reply in that time counts)
        // -D: each line with its time (for comparing with a capture and QEMU's events)
        _process = ns.Start("ping", lifetime, "ping", "-D", "-n", "-i", IntervalSeconds.ToString("0.0", CultureInfo.InvariantCulture), "-W", "1", target);
    }

    [GeneratedRegex(@"icmp_seq=(\d+) ttl=", RegexOptions.CultureInvariant)]
    private static partial Regex Reply();

    /// <summary>Sequence numbers answered so far.</summary>
    public SortedSet<int> Answered() =>
        [.. Reply().Matches(_process.Transcript).Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture))];

    /// <summary>The highest sequence number answered so far (0 before the first reply).</summary>
    public int LastAnswered
    {
        get
        {
            var a = Answered();
            return a.Count == 0 ? 0 : a.Max;
        }
    }

    /// <summary>Waits until <paramref name="count"/> more requests than <paramref name="seq"/> were answered.</summary>
    public bool WaitForRepliesAfter(int seq, int count, TimeSpan timeout) =>
        PeerEnvironment.Eventually(() => LastAnswered >= seq + count, timeout);

    /// <summary>The tally up to the highest answered request (see the class comment).</summary>
    public PingTally Tally()
    {
        var a = Answered();
        if (a.Count == 0)
        {
            return new PingTally(0, 0, []);
        }
        // counted from the first answer: requests before it only waited for ARP and the guest's start
        var lost = Enumerable.Range(a.Min, a.Max - a.Min + 1).Where(s => !a.Contains(s)).ToList();
        return new PingTally(a.Max - a.Min + 1, a.Count, lost);
    }

    public string Describe(int tail = 3000) => _process.Describe(tail);

    public void Dispose()
    {
        _process.Signal("INT", TimeSpan.FromSeconds(3));
        _process.Dispose();
    }
}
