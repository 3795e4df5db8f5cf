using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;

namespace IfcVdpa.Datapath.Tests;

/// <summary>
/// Ring state in the live-migration block matches what the engine consumed and completed, so a
/// stop / save / restore / start cycle loses and repeats nothing.
/// </summary>
public class RingStateTests
{
    [Fact]
    public void StopMidStreamSavesExactIndicesAndRestoreContinues()
    {
        using var nic = new TestNic(NetBackend.Loopback(), new EngineOptions { Mode = EngineMode.Manual, Burst = 4 });
        nic.Start(TestNic.BaseFeatures, queues: 2);
        nic.PostRx(0, 10);
        for (int i = 0; i < 10; i++)
        {
            nic.Send(1, TestNic.Frame(64, i), kick: false);
        }
        Assert.Equal(4, nic.Engine.PollOnce()); // one burst of 4
        var saved = nic.Stop();
        Assert.Equal(((ushort)4, (ushort)4), saved[1]);
        Assert.Equal(((ushort)4, (ushort)4), saved[0]);
        Assert.Equal(4, nic.Queues[1].DeviceUsedIdx);
        nic.Restart(saved);
        Assert.True(nic.WaitFor(() => nic.Queues[0].DeviceUsedIdx == 10));
        for (int i = 0; i < 10; i++)
        {
            Assert.True(nic.TryReceive(0, out _, out var f, out _));
            Assert.Equal(TestNic.Frame(64, i), f);
        }
        Assert.False(nic.TryReceive(0, out _, out _, out _));
        Assert.Equal(10, nic.Queues[1].DeviceUsedIdx);
    }

    [Fact]
    public void PeekShowsLiveIndices()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2, startIndex: 500);
        nic.PostRx(0, 3);
        nic.Send(1, TestNic.Frame(64, 0));
        nic.Send(1, TestNic.Frame(64, 1));
        nic.Engine.PollOnce();
        Assert.Equal(IfcvfModel.RingIndices.Split(502, 502), nic.Engine.PeekQueue(1));
        Assert.Equal(IfcvfModel.RingIndices.Split(502, 502), nic.Engine.PeekQueue(0));
        Assert.Equal(((ushort)502, (ushort)502), nic.Stop()[1]); // and the LM block gets the same on stop
    }

    /// <summary>
    /// Queues stop one by one (RX first, as TestNic.Stop does), so loopback frames sent while RX is already stopped
    /// are dropped on the "wire" and counted; the rings themselves lose and repeat nothing: every TX chain
    /// completes exactly once, frames arrive in order without duplicates, and received + dropped = sent.
    /// Split and packed rings (the packed state carries position and wrap counter through the LM block).
    /// </summary>
    [Theory]
    [InlineData(EngineMode.Poll, false)]
    [InlineData(EngineMode.Event, false)]
    [InlineData(EngineMode.Poll, true)]
    [InlineData(EngineMode.Event, true)]
    public void RepeatedStopRestoreUnderTrafficLosesAndRepeatsNothing(EngineMode mode, bool packed)
    {
        ulong packedBit = IfcvfModel.SoftIfcVfOptions.DefaultFeatures | Virtio.VirtioFeature.Bit(Virtio.VirtioFeature.F_RING_PACKED);
        using var nic = new TestNic(NetBackend.Loopback(), new EngineOptions { Mode = mode },
            packed ? new IfcvfModel.SoftIfcVfOptions { DeviceFeatures = packedBit } : null);
        // split: indices about to wrap at 65536; packed: a fresh ring (position 0, wrap 1) that wraps every 64
        nic.Start(TestNic.BaseFeatures | (packed ? Virtio.VirtioFeature.Bit(Virtio.VirtioFeature.F_RING_PACKED) : 0), size: 64, queues: 2,
            startIndex: packed ? (ushort)0x8000 : (ushort)65000);
        const int total = 2000;
        int sent = 0;
        int received = 0;
        int next = 0;
        int txDone = 0;
        int cycles = 0;
        var rng = new Random(7);
        nic.PostRx(0, 64);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        long Dropped() => nic.Vf.GetQueueCounters(0).Drops + nic.Vf.GetQueueCounters(1).Drops;
        while ((txDone < total || received + Dropped() < total) && DateTime.UtcNow < deadline)
        {
            txDone += nic.Queues[1].ReapTx();
            int n = rng.Next(1, 20);
            while (n-- > 0 && sent < total && nic.Queues[1].FreeCount > 0 && sent - txDone < 60)
            {
                nic.Send(1, TestNic.Frame(64, sent));
                sent++;
            }
            if (rng.Next(4) == 0)
            {
                // Migrate: stop (saves ring state in the LM block), restart from what was saved.
                var saved = nic.Stop();
                nic.Restart(saved);
                cycles++;
                nic.Kick(1);
            }
            while (nic.TryReceive(0, out _, out var f, out _))
            {
                int seed = (f[14] - (14 * 7)) & 0xff; // Frame(64, seed): byte 14 = 14 * 7 + seed
                int seq = next + (byte)(seed - (byte)next);
                Assert.Equal(TestNic.Frame(64, seq), f);
                Assert.True(seq >= next, "frame repeated or out of order");
                next = seq + 1;
                received++;
                nic.PostRx(0, 1);
            }
            Thread.Yield();
        }
        Assert.Equal(total, txDone);
        Assert.Equal(total, received + Dropped());
        Assert.True(received > total / 2);
        Assert.True(cycles > 20);
        Assert.False(nic.NeedsReset);
    }
}

/// <summary>Dirty-page logging during live migration: pages the device wrote are marked.</summary>
public class DirtyLogTests
{
    [Fact]
    public void RxBufferPagesAreMarkedWhileLoggingIsOn()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2);
        // Bitmap for IOVA 0 .. 4 GiB: 1 bit per 4 KiB page = 128 KiB.
        ulong log = nic.Alloc(128 << 10, 4096);
        nic.Hw.EnableDirtyLog(log, 128 << 10);
        var rx = nic.Queues[0];
        ulong rxBuf = rx.Alloc(2048);
        rx.AddChain([(rxBuf, 2048, true)]);
        nic.Kick(0);
        ulong txBuf = nic.Queues[1].Buffer(new byte[12 + 64]);
        nic.Queues[1].AddChain([(txBuf, 12 + 64, false)]);
        nic.Kick(1);
        Assert.NotEmpty(nic.ReceiveOne(0));
        bool Dirty(ulong iova) => (nic.Mem(log + ((iova >> 12) >> 3), 1)[0] & (1 << (int)((iova >> 12) & 7))) != 0;
        Assert.True(Dirty(rxBuf));
        Assert.Equal(txBuf >> 12 == rxBuf >> 12, Dirty(txBuf)); // the device only read the TX buffer
        int set = 0;
        foreach (byte b in nic.Mem(log, 128 << 10))
        {
            set += System.Numerics.BitOperations.PopCount(b);
        }
        Assert.Equal((int)(((rxBuf + 12 + 64 - 1) >> 12) - (rxBuf >> 12) + 1), set);

        // Logging off: nothing more is marked.
        nic.Hw.DisableDirtyLog();
        nic.Mem(log, 128 << 10).Clear();
        nic.PostRx(0, 1);
        nic.Send(1, TestNic.Frame(64, 2));
        Assert.NotEmpty(nic.ReceiveOne(0));
        Assert.DoesNotContain(nic.Mem(log, 128 << 10).ToArray(), b => b != 0);
    }
}
