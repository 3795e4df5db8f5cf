using System.Collections.Concurrent;
using IfcVdpa.Peers.Tests.Harness;
using IfcVdpa.VhostUser.Frontend;
using IfcVdpa.VirtioNet;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// This project's vhost-user FRONT-END (VhostUserFrontend, an IVdpaDevice) with the in-process
/// VirtioNetDriver on top, against DPDK's own vhost-user back-end: testpmd's vhost PMD in io forwarding,
/// which sends every frame it takes from the driver's TX queue back into its RX queue.
/// </summary>
public class FrontendPeerTests(ITestOutputHelper output)
{
    private const int Frames = 300;

    private static byte[] Frame(int i)
    {
        int len = 60 + (i * 37 % 1455);
        var f = new byte[len];
        f[0] = 0x02; // locally administered unicast destination and source
        f[5] = 0x01;
        f[6] = 0x02;
        f[11] = 0x02;
        f[12] = 0x88; // local experimental EtherType
        f[13] = 0xB5;
        f[14] = (byte)i;
        f[15] = (byte)(i >> 8);
        for (int k = 16; k < len; k++)
        {
            f[k] = (byte)((i * 7) + k);
        }
        return f;
    }

    private void RunOnce(TestPmd pmd, string socket, int frames, ConcurrentQueue<string> logs)
    {
        using var fe = VhostUserFrontend.Connect(socket, new VhostUserFrontendOptions { Name = "fe-dpdk", Log = logs.Enqueue });
        using var received = new BlockingCollection<byte[]>();
        output.WriteLine($"back-end features 0x{fe.BackendFeatures:x}, protocol features 0x{fe.ProtocolFeatures:x}, config {(fe.ConfigFromBackend ? "from the back-end" : "synthesized")}");
        using (var drv = new VirtioNetDriver(fe, new VirtioNetDriverOptions { UseInterrupts = true }))
        {
            drv.SetFrameHandler(f => received.Add(f.ToArray()));
            output.WriteLine($"driver features 0x{drv.Features:x}, MTU {drv.Mtu}");
            pmd.ClearStats();
            pmd.StartForwarding(txFirst: false);
            for (int i = 0; i < frames; i++)
            {
                var f = Frame(i);
                Assert.True(drv.Send(f), $"frame {i} not sent");
                Assert.True(received.TryTake(out var got, 5000), $"frame {i} did not come back from the vhost PMD");
                Assert.Equal(f, got);
            }
            var c = drv.Counters;
            Assert.Equal((long)frames, c.TxFrames);
            Assert.Equal((long)frames, c.RxFrames);
            Assert.Equal(0, c.RxErrors);
            Assert.True(fe.Interrupts(0) > 0, "no RX interrupt came through the call eventfd");
            Assert.True(fe.EventFdKicks(1) > 0, "no TX kick");
            pmd.StopForwarding();
            var counters = pmd.ReadCounters();
            output.WriteLine($"vhost PMD: {counters}");
            Assert.Equal(frames, counters.RxPackets);
            Assert.Equal(frames, counters.TxPackets);
        }
        Assert.Equal(0, fe.DmaRegionCount);
        Assert.Null(fe.BrokenReason);
    }

    [Fact]
    public void VirtioNetDriverOverTheFrontEndLoopsFramesThroughDpdkVhostPmd()
    {
        string dir = PeerEnvironment.NewRunDir();
        string socket = Path.Combine(dir, "vhost.sock");
        var logs = new ConcurrentQueue<string>();
        try
        {
            using var pmd = TestPmd.StartVhostBackend(socket, queues: 1);
            try
            {
                pmd.WaitReady();
                Assert.True(PeerEnvironment.Eventually(() => File.Exists(socket), TimeSpan.FromSeconds(10)), "the vhost PMD created no socket");
                // two front-ends one after the other: the vhost PMD must clean up after the first one leaves
                for (int round = 0; round < 2; round++)
                {
                    RunOnce(pmd, socket, round == 0 ? Frames : 50, logs);
                }
            }
            catch
            {
                output.WriteLine(string.Join('\n', logs));
                output.WriteLine(pmd.Describe());
                throw;
            }
            output.WriteLine(string.Join('\n', logs));
            pmd.Quit();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
