using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// DPDK testpmd with virtio-user (a real DPDK virtio-net driver) against the back-end under test with
/// a loopback behind the device: every forwarding mode, one and two queue pairs, split and packed
/// rings, mergeable RX buffers on and off. The front-end's counters and the device's must agree.
/// </summary>
public class TestPmdLoopbackTests(ITestOutputHelper output)
{
    private const int MrgRxBuf = 15;
    private const int RingPacked = 34;

    public static TheoryData<string, int, bool, bool> Matrix()
    {
        var d = new TheoryData<string, int, bool, bool>();
        foreach (string mode in (string[])["txonly", "rxonly", "io"])
        {
            foreach (int queues in (int[])[1, 2])
            {
                foreach (bool packed in (bool[])[false, true])
                {
                    foreach (bool mrg in (bool[])[true, false])
                    {
                        d.Add(mode, queues, packed, mrg);
                    }
                }
            }
        }
        return d;
    }

    [Theory]
    [MemberData(nameof(Matrix))]
    public void CountersAgree(string mode, int queues, bool packed, bool mergeable)
    {
        var o = new FrontEndOptions { Mode = mode, Queues = queues, Packed = packed, MergeableRx = mergeable };
        string dir = PeerEnvironment.NewRunDir();
        string socket = Path.Combine(dir, "vhost.sock");
        try
        {
            using var backend = VhostBackends.StartLoopback(socket, queues);
            using var fe = TestPmd.StartFrontEnd(socket, o);
            try
            {
                fe.WaitReady();
                var (negotiated, offered) = fe.Features();
                output.WriteLine($"{o}: offered 0x{offered:x}, negotiated 0x{negotiated:x}");
                // virtio-user falls back silently when a feature is not offered: the case must run what it says
                Assert.True(((negotiated >> RingPacked) & 1) == (o.Packed ? 1UL : 0UL),
                    $"{o}: VIRTIO_F_RING_PACKED negotiated={(negotiated >> RingPacked) & 1} (back-end offered 0x{offered:x})");
                Assert.True(((negotiated >> MrgRxBuf) & 1) == (o.MergeableRx ? 1UL : 0UL),
                    $"{o}: VIRTIO_NET_F_MRG_RXBUF negotiated={(negotiated >> MrgRxBuf) & 1} (back-end offered 0x{offered:x})");
                backend.FrontEndReady();
                fe.StartForwarding(txFirst: mode != "txonly");
                Thread.Sleep(mode == "rxonly" ? 1000 : 1500); // not a barrier: how long the traffic runs (counters are compared after)
                fe.StopForwarding();
                var f = fe.ReadCounters();
                var b = backend.SettledCounters(f.TxPackets, TimeSpan.FromSeconds(15));
                output.WriteLine($"{o}: front-end {f}; back-end {b}");
                Check(o, f, b);
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                throw new InvalidOperationException($"{o}: {e.Message}\n{fe.Describe()}\n{backend.Describe()}", e);
            }
            catch (Xunit.Sdk.XunitException)
            {
                output.WriteLine(fe.Describe());
                output.WriteLine(backend.Describe());
                throw;
            }
            fe.Quit();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static void Check(FrontEndOptions o, PortCounters f, BackendCounters b)
    {
        int q = o.Queues;
        Assert.True(f.TxPackets > 0, $"{o}: the front-end sent nothing");
        // what the device took from the front-end's TX queues is exactly what the front-end sent
        Assert.Equal(f.TxPackets, b.TotalFromFrontEnd);
        for (int i = 0; i < q; i++)
        {
            long feTx = f.Queue("tx", i);
            Assert.True(feTx > 0, $"{o}: front-end TX queue {i} sent nothing (xstats: {feTx})");
            Assert.Equal(feTx, b.FromFrontEnd[i]);
        }
        // a loopback delivers or drops every packet it took
        Assert.Equal(b.TotalFromFrontEnd, b.TotalToFrontEnd + b.Drops);
        // the front-end cannot have received more than the device delivered
        Assert.True(f.RxPackets <= b.TotalToFrontEnd, $"{o}: front-end received {f.RxPackets} > device delivered {b.TotalToFrontEnd}");
        switch (o.Mode)
        {
            case "rxonly":
                // tx_first: one burst of 32 per queue goes out, comes back and is received
                Assert.Equal(32L * q, f.TxPackets);
                Assert.Equal(f.TxPackets, f.RxPackets);
                for (int i = 0; i < q; i++)
                {
                    Assert.Equal(f.Queue("rx", i), b.ToFrontEnd[i]);
                    Assert.Equal(32L, b.ToFrontEnd[i]);
                }
                Assert.Equal(0L, b.Drops);
                break;
            case "io":
                // the loop kept running: far more than the first burst went round
                Assert.True(f.RxPackets > 32L * q, $"{o}: the io loop did not run (received {f.RxPackets})");
                // at stop, at most a ring's worth per queue was delivered but not yet polled
                Assert.True(b.TotalToFrontEnd - f.RxPackets <= (long)o.QueueSize * q,
                    $"{o}: device delivered {b.TotalToFrontEnd}, front-end received {f.RxPackets}");
                for (int i = 0; i < q; i++)
                {
                    Assert.True(f.Queue("rx", i) > 0, $"{o}: front-end RX queue {i} received nothing");
                }
                break;
            case "txonly":
                Assert.True(f.TxPackets > 10_000, $"{o}: only {f.TxPackets} packets in 1.5 s");
                Assert.Equal(0L, f.RxPackets);
                break;
        }
    }
}
