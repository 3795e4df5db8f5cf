using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Virtio;

namespace IfcVdpa.Datapath.Tests;

/// <summary>Packed virtqueues (VIRTIO_F_RING_PACKED) as a device option.</summary>
public class PackedRingTests
{
    private static readonly ulong PackedBit = VirtioFeature.Bit(VirtioFeature.F_RING_PACKED);
    private static readonly ulong Features = TestNic.BaseFeatures | PackedBit | LoopbackTests.Indirect;
    private const ushort Fresh = 0x8000; // position 0, wrap counter 1

    private static SoftIfcVfOptions PackedVf(int pairs = 1) => new()
    {
        QueuePairs = pairs,
        DeviceFeatures = SoftIfcVfOptions.DefaultFeatures | PackedBit,
    };

    private static TestNic Nic(EngineOptions? e = null) => new(NetBackend.Loopback(), e, PackedVf());

    [Theory]
    [InlineData(64)]
    [InlineData(1518)]
    public void LoopbackRoundTripOverPackedRings(int size)
    {
        using var nic = Nic();
        nic.Start(Features, queues: 2, startIndex: Fresh);
        nic.PostRx(0, 8);
        var f = TestNic.Frame(size, 1);
        nic.Send(1, f);
        Assert.Equal(f, nic.ReceiveOne(0));
        Assert.Equal(1, nic.Queues[1].ReapTx());
        Assert.Equal(1, nic.Irqs(0));
        Assert.Equal(1, nic.Irqs(1));
        Assert.False(nic.NeedsReset);
    }

    [Fact]
    public void ManyFramesWrapTheRingWithMixedChainShapes()
    {
        using var nic = Nic();
        nic.Start(Features | LoopbackTests.Mrg, size: 16, queues: 2, startIndex: Fresh);
        var rng = new Random(5);
        var tx = nic.Queues[1];
        var rx = nic.Queues[0];
        for (int i = 0; i < 300; i++)
        {
            // RX: one or two chains of 1-3 descriptors (MRG may spread the frame).
            var f = TestNic.Frame(rng.Next(14, 1500), i);
            int need = f.Length + 12;
            int parts = rng.Next(1, 4);
            var segs = Enumerable.Range(0, parts).Select(_ => (rx.Alloc(2048), (uint)((need / parts) + 16), true)).ToList();
            if (rng.Next(4) == 0)
            {
                rx.AddIndirect(segs);
            }
            else
            {
                rx.AddChain(segs);
            }
            var pkt = new byte[12 + f.Length];
            f.CopyTo(pkt, 12);
            int cut = rng.Next(0, pkt.Length);
            tx.AddChain([(tx.Buffer(pkt.AsSpan(0, cut)), (uint)cut, false), (tx.Buffer(pkt.AsSpan(cut)), (uint)(pkt.Length - cut), false)]);
            nic.Kick(1);
            Assert.Equal(f, nic.ReceiveOne(0));
            Assert.Equal(1, tx.ReapTx());
        }
        Assert.Equal(300, nic.Vf.GetQueueCounters(0).Packets);
        Assert.False(nic.NeedsReset);
    }

    [Fact]
    public void MergeableSpreadsOverPackedChains()
    {
        using var nic = Nic();
        nic.Start(Features | LoopbackTests.Mrg, queues: 2, startIndex: Fresh);
        nic.PostRx(0, 8, len: 256);
        var f = TestNic.Frame(1000, 2);
        nic.Send(1, f);
        Assert.True(nic.WaitFor(() => nic.TryReceive(0, out _, out var got, out int n) && n == 4 && got.SequenceEqual(f)));
    }

    [Theory]
    [InlineData(EngineMode.Poll)]
    [InlineData(EngineMode.Event)]
    public void WorkersCarryPackedTraffic(EngineMode mode)
    {
        using var nic = Nic(new EngineOptions { Mode = mode });
        nic.Start(Features, size: 64, queues: 2, startIndex: Fresh);
        nic.PostRx(0, 32);
        int received = 0;
        for (int i = 0; i < 500; i++)
        {
            nic.Send(1, TestNic.Frame(100, i));
            Assert.Equal(TestNic.Frame(100, i), nic.ReceiveOne(0));
            received++;
            nic.PostRx(0, 1);
            nic.Queues[1].ReapTx();
        }
        Assert.Equal(500, received);
        if (mode == EngineMode.Poll)
        {
            Assert.Equal(PackedRing.RING_EVENT_FLAGS_DISABLE, nic.Queues[1].PackedDeviceEventFlags);
        }
    }

    [Fact]
    public void DriverEventDisableSuppressesInterrupts()
    {
        using var nic = Nic();
        nic.Start(Features, queues: 2, startIndex: Fresh);
        nic.Queues[1].SetPackedDriverEvent(PackedRing.RING_EVENT_FLAGS_DISABLE);
        nic.PostRx(0, 2);
        nic.Send(1, TestNic.Frame(64, 1));
        Assert.NotEmpty(nic.ReceiveOne(0));
        Assert.Equal(0, nic.Irqs(1));
        Assert.Equal(1, nic.Irqs(0));
    }

    [Fact]
    public void DriverEventDescInterruptsOnlyAtTheGivenSlot()
    {
        using var nic = Nic();
        nic.Start(Features | LoopbackTests.EventIdx, queues: 2, startIndex: Fresh);
        var tx = nic.Queues[1];
        tx.SetPackedDriverEvent(PackedRing.RING_EVENT_FLAGS_DESC, 0x8000 | 3); // when slot 3 (wrap 1) is used
        nic.PostRx(0, 8);
        for (int i = 0; i < 6; i++)
        {
            nic.Send(1, TestNic.Frame(64, i));
            Assert.NotEmpty(nic.ReceiveOne(0));
            Assert.Equal(i >= 3 ? 1 : 0, nic.Irqs(1));
        }
    }

    [Fact]
    public void StopAndRestoreCarriesPositionAndWrapCounter()
    {
        using var nic = Nic();
        nic.Start(Features, size: 8, queues: 2, startIndex: Fresh);
        nic.PostRx(0, 4);
        for (int i = 0; i < 4; i++)
        {
            nic.Send(1, TestNic.Frame(64, i));
            Assert.Equal(TestNic.Frame(64, i), nic.ReceiveOne(0));
            nic.Queues[1].ReapTx();
            nic.PostRx(0, 1);
        }
        nic.PostRx(0, 3);
        for (int i = 4; i < 10; i++)
        {
            nic.Send(1, TestNic.Frame(64, i));
            Assert.Equal(TestNic.Frame(64, i), nic.ReceiveOne(0));
            nic.Queues[1].ReapTx();
        }
        // TX used 10 slots of 8: position 2, wrap counter flipped to 0.
        var saved = nic.Stop();
        Assert.Equal(((ushort)2, (ushort)2), saved[1]);
        nic.Restart(saved);
        nic.PostRx(0, 2);
        nic.Send(1, TestNic.Frame(64, 10));
        Assert.Equal(TestNic.Frame(64, 10), nic.ReceiveOne(0));
        Assert.False(nic.NeedsReset);
    }

    [Fact]
    public void ControlQueueWorksPacked()
    {
        using var nic = new TestNic(NetBackend.Loopback(), null, PackedVf());
        nic.Start(Features | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_MAC_ADDR), startIndex: Fresh);
        byte[] mac = [0x02, 1, 2, 3, 4, 5];
        Assert.Equal(VirtioNetCtrl.OK, ControlAndMultiqueueTests.Command(nic, VirtioNetCtrl.CLASS_MAC, VirtioNetCtrl.CMD_MAC_ADDR_SET, mac));
        Assert.Equal(mac, nic.Vf.Mac);
    }

    [Fact]
    public void ChainLongerThanTheRingIsALoop()
    {
        using var nic = Nic();
        nic.Start(Features, size: 8, queues: 2, startIndex: Fresh);
        var tx = nic.Queues[1];
        ulong buf = tx.Buffer(new byte[64]);
        // Every slot says NEXT: the chain never ends within the ring.
        for (int i = 7; i >= 0; i--)
        {
            TestQueue.WritePacked(tx.Desc, i, buf, 16, 0, (ushort)(PackedRing.VIRTQ_DESC_F_NEXT | PackedRing.VIRTQ_DESC_F_AVAIL));
        }
        nic.Kick(1);
        Assert.True(nic.WaitFor(() => nic.NeedsReset));
        Assert.Contains("loop", nic.Vf.NeedsResetReason, StringComparison.Ordinal);
        Assert.Single(nic.Logs);
    }

    [Fact]
    public void PackedWritableTxBufferIsARingError()
    {
        using var nic = Nic();
        nic.Start(Features, queues: 2, startIndex: Fresh);
        var tx = nic.Queues[1];
        tx.AddChain([(tx.Buffer(new byte[64]), 64, true)]);
        nic.Kick(1);
        Assert.True(nic.WaitFor(() => nic.NeedsReset));
        Assert.Contains("device-writable descriptor in a TX chain", nic.Vf.NeedsResetReason, StringComparison.Ordinal);
    }

    [Fact]
    public void PackedSteadyStateAllocatesNothing()
    {
        using var nic = Nic();
        nic.Start(Features | LoopbackTests.Mrg, queues: 2, startIndex: Fresh);
        var f = TestNic.Frame(700, 3);
        long allocated = 0;
        for (int round = 0; round < 100; round++)
        {
            nic.PostRx(0, 4, len: 512);
            for (int i = 0; i < 2; i++)
            {
                nic.Send(1, f, kick: false);
            }
            long before = GC.GetAllocatedBytesForCurrentThread();
            int work = nic.Engine.PollOnce();
            long delta = GC.GetAllocatedBytesForCurrentThread() - before; // (xunit's Assert allocates: measure first)
            if (round >= 10)
            {
                allocated += delta;
            }
            Assert.Equal(2, work);
            nic.Queues[1].ReapTx();
            for (int i = 0; i < 2; i++)
            {
                Assert.True(nic.TryReceive(0, out _, out var got, out _));
                Assert.Equal(f, got);
            }
        }
        Assert.Equal(0, allocated);
    }
}
