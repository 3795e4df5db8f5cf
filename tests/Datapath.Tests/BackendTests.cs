using System.Buffers.Binary;
using System.Diagnostics;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Datapath.Tests;

/// <summary>The pair, pcap and TAP backends, and link status.</summary>
public class BackendTests
{
    private static readonly EngineOptions EventMode = new() { Mode = EngineMode.Event };

    [Fact]
    public void PairCarriesFramesBothWaysBetweenTwoVfs()
    {
        var (a, b) = NetBackend.Pair();
        using var left = new TestNic(a, EventMode);
        using var right = new TestNic(b, EventMode);
        left.Start(TestNic.BaseFeatures | LoopbackTests.Mrg, queues: 2);
        right.Start(TestNic.BaseFeatures, queues: 2);
        Assert.True(left.Vf.LinkUp);
        Assert.True(right.Vf.LinkUp);
        left.PostRx(0, 16);
        right.PostRx(0, 16);
        for (int i = 0; i < 10; i++)
        {
            var f = TestNic.Frame(64 + (i * 100), i);
            left.Send(1, f);
            Assert.Equal(f, right.ReceiveOne(0));
            var g = TestNic.Frame(1514 - i, 100 + i);
            right.Send(1, g);
            Assert.Equal(g, left.ReceiveOne(0));
        }
        Assert.Equal(10, left.Vf.GetQueueCounters(1).Packets);
        Assert.Equal(10, right.Vf.GetQueueCounters(0).Packets);
        Assert.Equal(0, left.Vf.GetQueueCounters(0).Drops);
        // Nothing loops back locally.
        Assert.Equal(10, left.Vf.GetQueueCounters(0).Packets);
    }

    [Fact]
    public void PairWithoutRxBuffersOnTheFarSideDropsAndCounts()
    {
        var (a, b) = NetBackend.Pair();
        using var left = new TestNic(a, EventMode);
        using var right = new TestNic(b, EventMode);
        left.Start(TestNic.BaseFeatures, queues: 2);
        right.Start(TestNic.BaseFeatures, queues: 2);
        left.Send(1, TestNic.Frame(64, 1));
        left.Send(1, TestNic.Frame(64, 2));
        Assert.True(right.WaitFor(() => right.Vf.GetQueueCounters(0).Drops == 2));
        Assert.False(right.NeedsReset);
    }

    [Fact]
    public void PairLinkGoesDownWhenThePeerGoesAway()
    {
        var (a, b) = NetBackend.Pair();
        var left = new TestNic(a, EventMode);
        using var right = new TestNic(b, EventMode);
        left.Start(TestNic.BaseFeatures, queues: 2);
        right.Start(TestNic.BaseFeatures, queues: 2);
        long cfg = right.ConfigIrqs;
        left.Dispose();
        Assert.False(right.Vf.LinkUp);
        Assert.Equal(cfg + 1, right.ConfigIrqs);
    }

    [Fact]
    public void PcapBackendRecordsEverySentFrame()
    {
        string path = Path.Combine(Path.GetTempPath(), $"ifcvf-dp-{Environment.ProcessId}-{Guid.NewGuid():N}.pcap");
        try
        {
            var frames = new[] { TestNic.Frame(60, 1), TestNic.Frame(1514, 2), TestNic.Frame(200, 3) };
            using (var nic = new TestNic(NetBackend.Pcap(path)))
            {
                nic.Start(TestNic.BaseFeatures, queues: 2);
                foreach (var f in frames)
                {
                    nic.Send(1, f);
                }
                Assert.True(nic.WaitFor(() => nic.Queues[1].DeviceUsedIdx == 3));
            }
            var bytes = File.ReadAllBytes(path);
            Assert.Equal(0xa1b2c3d4u, BinaryPrimitives.ReadUInt32LittleEndian(bytes));
            Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(20)));
            int off = 24;
            foreach (var f in frames)
            {
                uint incl = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(off + 8));
                uint orig = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(off + 12));
                Assert.Equal((uint)f.Length, incl);
                Assert.Equal((uint)f.Length, orig);
                Assert.Equal(f, bytes.AsSpan(off + 16, f.Length).ToArray());
                off += 16 + f.Length;
            }
            Assert.Equal(bytes.Length, off);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void BackendSpecsParse()
    {
        using var l = NetBackend.Parse("loopback");
        Assert.Equal("loopback", l.ToString());
        using var lf = NetBackend.Parse("loopback:filter");
        Assert.Equal("loopback:filter", lf.ToString());
        Assert.Throws<ArgumentException>(() => NetBackend.Parse("carrier-pigeon"));
        Assert.Throws<ArgumentException>(() => NetBackend.Parse("tap:"));
    }

    // ---- TAP in a network namespace the test creates --------------------------------------

    private static void Run(string file, string args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true, RedirectStandardOutput = true })!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {args}: {err}");
    }

    /// <summary>Runs a command to its end whatever its exit code; returns stdout and stderr.</summary>
    private static string Output(string file, string args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true, RedirectStandardOutput = true })!;
        string o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return o;
    }

    private static readonly byte[] OurMac = [0x02, 0x00, 0xa9, 0xfe, 0x4d, 0x02];
    private static readonly byte[] OurIp = [169, 254, 77, 2];
    private static readonly byte[] TheirIp = [169, 254, 77, 1];

    private static byte[] ArpRequest()
    {
        var f = new byte[42];
        f.AsSpan(0, 6).Fill(0xff);
        OurMac.CopyTo(f, 6);
        f[12] = 0x08; f[13] = 0x06;
        byte[] arp = [0, 1, 8, 0, 6, 4, 0, 1];
        arp.CopyTo(f, 14);
        OurMac.CopyTo(f, 22);
        OurIp.CopyTo(f, 28);
        TheirIp.CopyTo(f, 38);
        return f;
    }

    private static ushort Checksum(ReadOnlySpan<byte> b)
    {
        uint sum = 0;
        for (int i = 0; i + 1 < b.Length; i += 2)
        {
            sum += (uint)((b[i] << 8) | b[i + 1]);
        }
        if ((b.Length & 1) != 0)
        {
            sum += (uint)(b[^1] << 8);
        }
        while (sum >> 16 != 0)
        {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        return (ushort)~sum;
    }

    private static byte[] EchoRequest(byte[] theirMac, ushort seq)
    {
        var f = new byte[14 + 20 + 8 + 32];
        theirMac.CopyTo(f, 0);
        OurMac.CopyTo(f, 6);
        f[12] = 0x08; f[13] = 0x00;
        var ip = f.AsSpan(14, 20);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(20 + 8 + 32));
        ip[8] = 64;
        ip[9] = 1; // ICMP
        OurIp.CopyTo(ip[12..]);
        TheirIp.CopyTo(ip[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], Checksum(ip));
        var icmp = f.AsSpan(34);
        icmp[0] = 8; // echo request
        BinaryPrimitives.WriteUInt16BigEndian(icmp[4..], 0x4242);
        BinaryPrimitives.WriteUInt16BigEndian(icmp[6..], seq);
        for (int i = 8; i < icmp.Length; i++)
        {
            icmp[i] = (byte)i;
        }
        BinaryPrimitives.WriteUInt16BigEndian(icmp[2..], Checksum(icmp));
        return f;
    }

    private static byte[] WaitForFrame(TestNic nic, Func<byte[], bool> match)
    {
        byte[] found = [];
        Assert.True(nic.WaitFor(() =>
        {
            while (nic.TryReceive(0, out _, out var f, out _))
            {
                nic.PostRx(0, 1);
                if (match(f))
                {
                    found = f;
                    return true;
                }
            }
            return false;
        }, 10000), "expected frame not received from the TAP");
        return found;
    }

    [Theory]
    [InlineData(EngineMode.Event)]
    [InlineData(EngineMode.Poll)]
    public void TapInANamespaceAnswersArpAndPing(EngineMode mode)
    {
        string tap = $"dpt{Environment.ProcessId % 100000}{(int)mode}";
        string ns = $"dpns{Environment.ProcessId}{(int)mode}";
        Run("ip", $"netns add {ns}");
        try
        {
            using var nic = new TestNic(NetBackend.Tap(tap), new EngineOptions { Mode = mode });
            Run("ip", $"link set {tap} netns {ns}");
            Run("ip", $"-n {ns} addr add 169.254.77.1/24 dev {tap}");
            Run("ip", $"-n {ns} link set {tap} up");
            nic.Start(TestNic.BaseFeatures | LoopbackTests.Mrg, queues: 2);
            Assert.True(nic.Vf.LinkUp);
            nic.PostRx(0, 64);

            nic.Send(1, ArpRequest());
            var reply = WaitForFrame(nic, f => f.Length >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 && f.AsSpan(28, 4).SequenceEqual(TheirIp));
            Assert.Equal(OurMac, reply[..6]);
            byte[] theirMac = reply[22..28];

            for (ushort seq = 1; seq <= 3; seq++)
            {
                nic.Send(1, EchoRequest(theirMac, seq));
                var echo = WaitForFrame(nic, f => f.Length >= 42 && f[12] == 0x08 && f[13] == 0x00 && f[23] == 1 && f[34] == 0 &&
                    BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(40)) == seq);
                Assert.Equal(TheirIp, echo[26..30]);
                Assert.Equal(OurIp, echo[30..34]);
                Assert.Equal(0, Checksum(echo.AsSpan(34, 40)));
            }
            Assert.True(nic.Vf.GetQueueCounters(1).Packets >= 4);
            Assert.False(nic.NeedsReset);
        }
        finally
        {
            Run("ip", $"netns del {ns}");
        }
    }

    /// <summary>
    /// TUNSETCARRIER alone leaves the change to the kernel's link watcher, which applies a carrier-off (not
    /// urgent) up to a second after its previous run; meanwhile a bridge keeps sending the guest's frames to
    /// the port (a ping lost in a migration's switch-over). <see cref="TapDevice.SetCarrier"/> applies the
    /// change before it returns: right after the watcher ran for a carrier-on, the carrier-off shows at once.
    /// </summary>
    [Fact]
    public void TapCarrierOffTakesEffectBeforeSetCarrierReturns()
    {
        string name = $"dpc{Environment.ProcessId % 100000}";
        using var tap = TapDevice.Open(name, vnetHeader: true);
        Run("ip", $"link set {name} up");
        string Oper() => File.ReadAllText($"/sys/class/net/{name}/operstate").Trim();
        for (int round = 0; round < 3; round++)
        {
            Assert.Equal(0, tap.SetCarrier(true));
            Assert.NotEqual("down", Oper()); // "up", or "unknown" before any carrier change
            Assert.Equal(0, tap.SetCarrier(false));
            Assert.Equal("down", Oper());
        }
    }

    /// <summary>
    /// A stopped VF leaves the frames for it in its TAP's queue (as QEMU's tap netdev and vhost-net do) and
    /// receives them once its RX queue runs again: a migrated guest gets what arrived while it ran nowhere. The
    /// carrier the VF's wire shows follows <c>SoftIfcVf.SetWireCarrier</c> (the back-end's switch-over).
    /// </summary>
    [Fact]
    public void AStoppedVfLeavesTapFramesQueuedAndItsCarrierFollowsTheVf()
    {
        string tap = $"dph{Environment.ProcessId % 100000}";
        string ns = $"dphns{Environment.ProcessId}";
        Run("ip", $"netns add {ns}");
        try
        {
            using var nic = new TestNic(NetBackend.Tap(tap), new EngineOptions { Mode = EngineMode.Event });
            Run("ip", $"link set {tap} netns {ns}");
            Run("ip", $"-n {ns} addr add 169.254.77.1/24 dev {tap}");
            Run("ip", $"-n {ns} link set {tap} up");
            Run("ip", $"-n {ns} neigh add 169.254.77.2 lladdr 02:00:a9:fe:4d:02 dev {tap} nud permanent");
            nic.Start(TestNic.BaseFeatures | LoopbackTests.Mrg, queues: 2);
            nic.PostRx(0, 64);
            var saved = nic.Stop();

            // one echo request to the stopped VF (no reply can come: ping fails, the request waits in the TAP)
            Output("ip", $"netns exec {ns} ping -n -c 1 -W 1 169.254.77.2");
            nic.Restart(saved);
            var echo = WaitForFrame(nic, f => f.Length >= 42 && f[12] == 0x08 && f[13] == 0x00 && f[23] == 1 && f[34] == 8 && f.AsSpan(26, 4).SequenceEqual(TheirIp));
            Assert.Equal(OurMac, echo[..6]);

            Assert.True(nic.Vf.SetWireCarrier(false));
            Assert.Contains("NO-CARRIER", Output("ip", $"-n {ns} link show {tap}"), StringComparison.Ordinal);
            Assert.True(nic.Vf.SetWireCarrier(true));
            Assert.DoesNotContain("NO-CARRIER", Output("ip", $"-n {ns} link show {tap}"), StringComparison.Ordinal);
        }
        finally
        {
            Run("ip", $"netns del {ns}");
        }
        using var loop = new TestNic(NetBackend.Loopback());
        Assert.False(loop.Vf.SetWireCarrier(false)); // no carrier to set
    }
}
