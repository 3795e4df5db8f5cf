using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.Datapath.Tests;

/// <summary>
/// Malformed rings: each stops the queue, sets NEEDS_RESET with the config interrupt, is counted and
/// logged once; the device works again after a reset and another device is never disturbed.
/// </summary>
public class HostileRingTests
{
    private static readonly ulong Features = TestNic.BaseFeatures | LoopbackTests.Indirect;

    private static void AssertRingError(TestNic nic, int queue, string reasonFragment)
    {
        Assert.True(nic.WaitFor(() => nic.NeedsReset), "device did not set NEEDS_RESET");
        Assert.Contains(reasonFragment, nic.Vf.NeedsResetReason, StringComparison.Ordinal);
        Assert.Contains($"vq {queue}", nic.Vf.NeedsResetReason, StringComparison.Ordinal);
        for (int q = 0; q < nic.Vf.NumQueues; q++)
        {
            Assert.False(nic.Vf.IsQueueRunning(q)); // NEEDS_RESET stops the whole device
        }
        Assert.Equal(1, nic.ConfigIrqs);
        Assert.Equal(1, nic.Vf.GetQueueCounters(queue).Errors);
        // Nothing more happens, nothing more is logged.
        for (int i = 0; i < 5; i++)
        {
            nic.Engine.PollOnce();
        }
        Assert.Single(nic.Logs);
        Assert.Contains(reasonFragment, nic.Logs.Single(), StringComparison.Ordinal);
        Assert.Equal(1, nic.Vf.GetQueueCounters(queue).Errors);
        SpecAsserts.AssertCounted(nic, reasonFragment);
    }

    /// <summary>After the error, a device reset and a fresh start carry traffic again.</summary>
    private static void AssertRecovers(TestNic nic)
    {
        nic.Start(Features, queues: 2);
        Assert.False(nic.NeedsReset);
        nic.PostRx(0, 2);
        var f = TestNic.Frame(80, 42);
        nic.Send(1, f);
        Assert.Equal(f, nic.ReceiveOne(0));
    }

    private static void RunCase(Action<TestNic> hostile, int queue, string reason)
    {
        using var bystander = new TestNic(NetBackend.Loopback());
        bystander.Start(Features, queues: 2);
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(Features, queues: 2);
        hostile(nic);
        AssertRingError(nic, queue, reason);
        // The other device is untouched and works.
        Assert.False(bystander.NeedsReset);
        bystander.PostRx(0, 1);
        var f = TestNic.Frame(64, 1);
        bystander.Send(1, f);
        Assert.Equal(f, bystander.ReceiveOne(0));
        Assert.Empty(bystander.Logs);
        AssertRecovers(nic);
        // One NEEDS_RESET event counted (what the metrics endpoint reports): the reset cleared the bit, not
        // the count; the bystander has none.
        Assert.Equal(1, nic.Vf.NeedsResetEvents);
        Assert.Equal(0, bystander.Vf.NeedsResetEvents);
    }

    private static void TxDesc(TestNic nic, ulong addr, uint len, ushort flags, ushort next = 0)
    {
        var q = nic.Queues[1];
        ushort id = q.TakeFree();
        q.WriteDesc(id, addr, len, flags, next);
        q.PushAvail(id);
        nic.Kick(1);
    }

    [Fact]
    public void TxBufferOutsideTheDmaMap() =>
        RunCase(nic => TxDesc(nic, 0x1000, 64, 0), 1, "outside the DMA map");

    [Fact]
    public void TxBufferStraddlingTheEndOfTheMap() =>
        RunCase(nic => TxDesc(nic, TestNic.IovaBase + (64 << 20) - 10, 64, 0), 1, "outside the DMA map");

    [Fact]
    public void RxBufferOutsideTheDmaMap() => RunCase(nic =>
    {
        var rx = nic.Queues[0];
        rx.AddChain([(0xdead_0000, 2048, true)]);
        nic.Send(1, TestNic.Frame(64, 1));
    }, 0, "outside the DMA map");

    [Fact]
    public void RxBufferInReadOnlyMapping() => RunCase(nic =>
    {
        using var ro = MappedMemory.Allocate(4096);
        nic.Vf.DmaMap(0x7000_0000, ro.All, writable: false);
        nic.Queues[0].AddChain([(0x7000_0000, 2048, true)]);
        nic.Send(1, TestNic.Frame(64, 1));
        nic.WaitFor(() => nic.NeedsReset);
        nic.Vf.DmaUnmap(0x7000_0000, 4096);
    }, 0, "not writable");

    [Fact]
    public void RxBufferOfTwoGigabytesIsALengthOverflow() => RunCase(nic =>
    {
        nic.Queues[0].AddChain([(TestNic.IovaBase, 0x8000_0000, true)]);
        nic.Send(1, TestNic.Frame(64, 1));
    }, 0, "overflows");

    [Fact]
    public void RxChainWhoseTotalLengthOverflows32Bits()
    {
        // Three ~2 GiB writable buffers over one large (never touched) NORESERVE mapping: 6 GiB > u32.
        using var big = MappedMemory.Allocate(0x8000_0000UL);
        RunCase(nic =>
        {
            nic.Vf.DmaMap(0x1_0000_0000, big.Slice(0, 0x8000_0000), writable: true);
            var rx = nic.Queues[0];
            rx.AddChain([(0x1_0000_0000, 0x7fff_ffff, true), (0x1_0000_0000, 0x7fff_ffff, true), (0x1_0000_0000, 0x7fff_ffff, true)]);
            nic.Send(1, TestNic.Frame(64, 1));
            nic.WaitFor(() => nic.NeedsReset);
            nic.Vf.DmaUnmap(0x1_0000_0000, 0x8000_0000);
        }, 0, "overflows 32 bits");
    }

    [Fact]
    public void TxChainLargerThanAnyFrame() => RunCase(nic =>
    {
        // Two 40 KiB readable buffers: 80 KiB is more than a 64 KiB frame + header.
        var q = nic.Queues[1];
        ulong buf = nic.Alloc(40 << 10);
        q.AddChain([(buf, 40 << 10, false), (buf, 40 << 10, false)]);
        nic.Kick(1);
    }, 1, "larger than the largest frame");

    [Fact]
    public void DescriptorLoop() => RunCase(nic =>
    {
        var q = nic.Queues[1];
        ushort a = q.TakeFree();
        ushort b = q.TakeFree();
        ulong buf = q.Buffer(new byte[64]);
        q.WriteDesc(a, buf, 32, VIRTQ_DESC_F_NEXT, b);
        q.WriteDesc(b, buf, 32, VIRTQ_DESC_F_NEXT, a);
        q.PushAvail(a);
        nic.Kick(1);
    }, 1, "loop");

    [Fact]
    public void LoopInsideAnIndirectTable() => RunCase(nic =>
    {
        var q = nic.Queues[1];
        ulong table = nic.Alloc(32, 16);
        ulong buf = q.Buffer(new byte[64]);
        TestQueue.WriteDesc(nic.Mem(table, 32), 0, buf, 32, VIRTQ_DESC_F_NEXT, 1);
        TestQueue.WriteDesc(nic.Mem(table, 32), 1, buf, 32, VIRTQ_DESC_F_NEXT, 0);
        TxDesc(nic, table, 32, VIRTQ_DESC_F_INDIRECT);
    }, 1, "loop");

    [Fact]
    public void NextIndexBeyondTheQueue() => RunCase(nic =>
    {
        ulong buf = nic.Queues[1].Buffer(new byte[64]);
        TxDesc(nic, buf, 64, VIRTQ_DESC_F_NEXT, next: 300);
    }, 1, "next index");

    [Fact]
    public void HeadIndexBeyondTheQueue() => RunCase(nic =>
    {
        nic.Queues[1].PushAvail(999);
        nic.Kick(1);
    }, 1, "head index");

    [Fact]
    public void NestedIndirectTables() => RunCase(nic =>
    {
        var q = nic.Queues[1];
        ulong inner = nic.Alloc(16, 16);
        TestQueue.WriteDesc(nic.Mem(inner, 16), 0, q.Buffer(new byte[64]), 64, 0, 0);
        ulong outer = nic.Alloc(16, 16);
        TestQueue.WriteDesc(nic.Mem(outer, 16), 0, inner, 16, VIRTQ_DESC_F_INDIRECT, 0);
        TxDesc(nic, outer, 16, VIRTQ_DESC_F_INDIRECT);
    }, 1, "inside an indirect table");

    [Theory]
    [InlineData(20u)]
    [InlineData(0u)]
    public void IndirectTableOfBadLength(uint len) => RunCase(nic =>
    {
        ulong table = nic.Alloc(32, 16);
        TxDesc(nic, table, len, VIRTQ_DESC_F_INDIRECT);
    }, 1, "indirect table length");

    [Fact]
    public void IndirectTableOutsideTheMap() =>
        RunCase(nic => TxDesc(nic, 0x10, 32, VIRTQ_DESC_F_INDIRECT), 1, "outside the DMA map");

    [Fact]
    public void IndirectTogetherWithNext() => RunCase(nic =>
    {
        ulong table = nic.Alloc(16, 16);
        TxDesc(nic, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
    }, 1, "both INDIRECT and NEXT");

    [Fact]
    public void IndirectWithoutTheFeature()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2);
        ulong table = nic.Alloc(16, 16);
        TestQueue.WriteDesc(nic.Mem(table, 16), 0, nic.Queues[1].Buffer(new byte[64]), 64, 0, 0);
        TxDesc(nic, table, 16, VIRTQ_DESC_F_INDIRECT);
        AssertRingError(nic, 1, "without VIRTIO_F_RING_INDIRECT_DESC");
    }

    [Fact]
    public void DeviceWritableTxBuffer() => RunCase(nic =>
    {
        TxDesc(nic, nic.Queues[1].Buffer(new byte[64]), 64, VIRTQ_DESC_F_WRITE);
    }, 1, "device-writable descriptor in a TX chain");

    [Fact]
    public void DeviceReadableRxBuffer() => RunCase(nic =>
    {
        nic.Queues[0].AddChain([(nic.Queues[0].Alloc(2048), 2048, false)]);
        nic.Send(1, TestNic.Frame(64, 1));
    }, 0, "device-readable descriptor in an RX chain");

    [Fact]
    public void AvailIndexJumpingPastTheQueueSize() => RunCase(nic =>
    {
        nic.Queues[1].SetAvailIdxRaw(257);
        nic.Kick(1);
    }, 1, "ahead of used idx");

    [Fact]
    public void RxAvailIndexJumpingPastTheQueueSize() => RunCase(nic =>
    {
        nic.Queues[0].SetAvailIdxRaw(300);
        nic.Send(1, TestNic.Frame(64, 1));
    }, 0, "ahead of used idx");

    [Fact]
    public void RingAreasOutsideTheDmaMap()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.BringUp(Features, [new TestNic.QueueSetup(1, 256, 0x9000_0000, 0x9001_0000, 0x9002_0000, default)]);
        nic.Engine.PollOnce();
        AssertRingError(nic, 1, "ring areas outside the DMA map");
    }

    [Fact]
    public void ControlCommandWithoutStatusByte()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(Features | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ));
        var cq = nic.Queues[2];
        cq.AddChain([(cq.Buffer([VirtioNetCtrl.CLASS_RX, 0, 1]), 3, false)]);
        nic.Kick(2);
        AssertRingError(nic, 2, "without a device-writable status byte");
    }

    [Fact]
    public void ControlCommandReadableAfterWritable()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(Features | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ));
        var cq = nic.Queues[2];
        cq.AddChain([(cq.Alloc(1), 1, true), (cq.Buffer([VirtioNetCtrl.CLASS_RX, 0, 1]), 3, false)]);
        nic.Kick(2);
        AssertRingError(nic, 2, "readable descriptor after a device-writable one");
    }

    [Fact]
    public void RingErrorInPollModeDoesNotDeadlockTheControlPath()
    {
        var logs = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using var nic = new TestNic(NetBackend.Loopback(), new IfcvfModel.Datapath.EngineOptions { Mode = IfcvfModel.Datapath.EngineMode.Poll, Log = logs.Enqueue });
        nic.Start(Features, queues: 2);
        TxDesc(nic, 0x1000, 64, 0);
        Assert.True(nic.WaitFor(() => nic.NeedsReset));
        Assert.Single(logs);
        AssertRecovers(nic);
    }
}
