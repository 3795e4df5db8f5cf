using System.Buffers.Binary;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Virtio;

namespace IfcVdpa.Datapath.Tests;

/// <summary>Round trips through the loopback backend: TX of a pair comes back on its RX.</summary>
public class LoopbackTests
{
    internal static readonly ulong Mrg = VirtioFeature.Bit(VirtioFeature.NET_F_MRG_RXBUF);
    internal static readonly ulong EventIdx = VirtioFeature.Bit(VirtioFeature.F_RING_EVENT_IDX);
    internal static readonly ulong Indirect = VirtioFeature.Bit(VirtioFeature.F_RING_INDIRECT_DESC);

    [Theory]
    [InlineData(64)]
    [InlineData(1518)]
    public void TxFrameComesBackOnRxWithHeaderAndInterrupts(int size)
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2);
        nic.PostRx(0, 8);
        var frame = TestNic.Frame(size, 3);
        nic.Send(1, frame);

        byte[] hdr = [];
        byte[] got = [];
        int nbuf = 0;
        Assert.True(nic.WaitFor(() => nic.TryReceive(0, out hdr, out got, out nbuf)));
        Assert.Equal(frame, got);
        Assert.Equal(1, nbuf); // VERSION_1 without MRG_RXBUF: num_buffers is 1
        Assert.Equal(0, hdr[VirtioNetHeader.Flags]);
        Assert.Equal(1, nic.Queues[1].ReapTx());
        Assert.Equal(1, nic.Irqs(0));
        Assert.Equal(1, nic.Irqs(1));
        var rx = nic.Vf.GetQueueCounters(0);
        var tx = nic.Vf.GetQueueCounters(1);
        Assert.Equal((1L, (long)size), (rx.Packets, rx.Bytes));
        Assert.Equal((1L, (long)size), (tx.Packets, tx.Bytes));
        Assert.Equal(1, tx.Kicks);
        Assert.Equal(1, tx.Interrupts);
        Assert.False(nic.NeedsReset);
    }

    [Theory]
    [InlineData(EngineMode.Poll)]
    [InlineData(EngineMode.Event)]
    public void WorkerModesCarryManyFramesInOrder(EngineMode mode)
    {
        var logs = new List<string>();
        using var nic = new TestNic(NetBackend.Loopback(), new EngineOptions { Mode = mode, Log = logs.Add });
        nic.Start(TestNic.BaseFeatures | EventIdx, queues: 2);
        const int total = 3000;
        int sent = 0;
        int received = 0;
        nic.PostRx(0, 200);
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (received < total && DateTime.UtcNow < deadline)
        {
            nic.Queues[1].ReapTx();
            while (sent < total && sent - received < 100 && nic.Queues[1].FreeCount > 0)
            {
                nic.Send(1, TestNic.Frame(60 + (sent % 200), sent));
                sent++;
            }
            while (nic.TryReceive(0, out _, out var f, out _))
            {
                Assert.Equal(TestNic.Frame(60 + (received % 200), received), f);
                received++;
                nic.PostRx(0, 1);
            }
            Thread.Yield();
        }
        Assert.Equal(total, received);
        Assert.False(nic.NeedsReset);
        Assert.Empty(logs);
    }

    [Fact]
    public void MergeableRxSpreadsAFrameOverSeveralChains()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures | Mrg, queues: 2);
        nic.PostRx(0, 8, len: 256);
        var frame = TestNic.Frame(1000, 9);
        nic.Send(1, frame);
        Assert.True(nic.WaitFor(() => nic.Queues[0].DeviceUsedIdx == 4));
        // 12 + 1000 bytes over 256-byte buffers: 256, 256, 256, 244.
        var lens = new List<uint>();
        var bytes = new List<byte>();
        for (int i = 0; i < 4; i++)
        {
            Assert.True(nic.Queues[0].TryTakeUsed(out uint id, out uint len));
            lens.Add(len);
            bytes.AddRange(nic.Queues[0].ReadChain((ushort)id, len));
        }
        Assert.Equal([256u, 256u, 256u, 244u], lens);
        Assert.Equal(4, BinaryPrimitives.ReadUInt16LittleEndian(bytes.ToArray().AsSpan(VirtioNetHeader.NumBuffers)));
        Assert.Equal(frame, bytes.Skip(12).ToArray());
        Assert.Equal(1, nic.Irqs(0)); // one packet, one burst, one interrupt
    }

    [Fact]
    public void MergeableWithoutEnoughBuffersDropsWholeFrameAndConsumesNothing()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures | Mrg, queues: 2);
        nic.PostRx(0, 2, len: 256);
        nic.Send(1, TestNic.Frame(1000, 1));
        Assert.True(nic.WaitFor(() => nic.Vf.GetQueueCounters(0).Drops == 1));
        Assert.Equal(0, nic.Queues[0].DeviceUsedIdx);
        // The two buffers are still there for the next (small) frame.
        var small = TestNic.Frame(100, 2);
        nic.Send(1, small);
        Assert.Equal(small, nic.ReceiveOne(0));
    }

    [Fact]
    public void RxWithoutBuffersDropsAndCounts()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2);
        for (int i = 0; i < 5; i++)
        {
            nic.Send(1, TestNic.Frame(64, i));
        }
        Assert.True(nic.WaitFor(() => nic.Queues[1].DeviceUsedIdx == 5));
        var rx = nic.Vf.GetQueueCounters(0);
        Assert.Equal(5, rx.Drops);
        Assert.Equal(0, rx.Packets);
        Assert.Equal(5, nic.Vf.GetQueueCounters(1).Packets);
        Assert.False(nic.NeedsReset);
    }

    [Fact]
    public void SmallRxBufferWithoutMergeableDropsFrame()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2);
        nic.PostRx(0, 1, len: 100);
        nic.Send(1, TestNic.Frame(200, 1));
        Assert.True(nic.WaitFor(() => nic.Vf.GetQueueCounters(0).Drops == 1));
        Assert.Equal(0, nic.Queues[0].DeviceUsedIdx);
    }

    [Fact]
    public void IndexesWrapAroundFromNearTheTop()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, size: 16, queues: 2, startIndex: 65530);
        for (int i = 0; i < 40; i++)
        {
            nic.PostRx(0, 1);
            var f = TestNic.Frame(64 + i, i);
            nic.Send(1, f);
            Assert.Equal(f, nic.ReceiveOne(0));
            nic.Queues[1].ReapTx();
        }
        Assert.Equal(unchecked((ushort)(65530 + 40)), nic.Queues[0].DeviceUsedIdx);
        Assert.Equal(unchecked((ushort)(65530 + 40)), nic.Queues[1].DeviceUsedIdx);
        Assert.False(nic.NeedsReset);
    }

    [Fact]
    public void IndirectChainsWorkForTxAndRx()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures | Indirect, queues: 2);
        var rxq = nic.Queues[0];
        rxq.AddIndirect([(rxq.Alloc(20), 20, true), (rxq.Alloc(1000), 1000, true), (rxq.Alloc(1000), 1000, true)]);
        var frame = TestNic.Frame(1500, 5);
        var txq = nic.Queues[1];
        var pkt = new byte[12 + frame.Length];
        frame.CopyTo(pkt, 12);
        txq.AddIndirect([(txq.Buffer(pkt.AsSpan(0, 12)), 12, false), (txq.Buffer(pkt.AsSpan(12, 700)), 700, false), (txq.Buffer(pkt.AsSpan(712)), (uint)(pkt.Length - 712), false)]);
        nic.Kick(1);
        Assert.Equal(frame, nic.ReceiveOne(0));
    }

    [Fact]
    public void DestinationFilterDropsFramesForOthersWhenEnabled()
    {
        using var nic = new TestNic(NetBackend.Loopback(filterDestinationMac: true));
        nic.Start(TestNic.BaseFeatures, queues: 2);
        nic.PostRx(0, 4);
        nic.Send(1, TestNic.Frame(64, 1, dst: [0x02, 9, 9, 9, 9, 9]));
        var mine = TestNic.Frame(64, 2, dst: nic.Vf.Mac);
        nic.Send(1, mine);
        Assert.Equal(mine, nic.ReceiveOne(0));
        Assert.Equal(1, nic.Vf.GetQueueCounters(0).Drops);
    }

    [Fact]
    public void EventIdxSuppressesInterruptsUntilUsedEventIsCrossed()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures | EventIdx, queues: 2);
        var tx = nic.Queues[1];
        tx.SetUsedEvent(4); // interrupt me when used idx passes 4 (i.e. reaches 5)
        nic.PostRx(0, 16);
        for (int i = 0; i < 4; i++)
        {
            nic.Send(1, TestNic.Frame(64, i));
            Assert.True(nic.WaitFor(() => tx.DeviceUsedIdx == i + 1));
        }
        Assert.Equal(0, nic.Irqs(1));
        Assert.Equal(4, tx.AvailEvent); // device asks to be kicked past what it consumed
        nic.Send(1, TestNic.Frame(64, 4));
        Assert.True(nic.WaitFor(() => tx.DeviceUsedIdx == 5));
        Assert.Equal(1, nic.Irqs(1));
        nic.Send(1, TestNic.Frame(64, 5));
        Assert.True(nic.WaitFor(() => tx.DeviceUsedIdx == 6));
        Assert.Equal(1, nic.Irqs(1));
    }

    [Fact]
    public void NoInterruptFlagSuppressesInterruptsWithoutEventIdx()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2);
        nic.Queues[1].SetAvailFlags(SplitRing.VIRTQ_AVAIL_F_NO_INTERRUPT);
        nic.PostRx(0, 4);
        nic.Send(1, TestNic.Frame(64, 1));
        Assert.NotEmpty(nic.ReceiveOne(0));
        Assert.Equal(0, nic.Irqs(1));
        Assert.Equal(1, nic.Irqs(0));
    }

    [Fact]
    public void PollModeAsksTheDriverNotToKick()
    {
        using var nic = new TestNic(NetBackend.Loopback(), new EngineOptions { Mode = EngineMode.Poll });
        nic.Start(TestNic.BaseFeatures, queues: 2);
        nic.PostRx(0, 4);
        nic.Send(1, TestNic.Frame(64, 1));
        Assert.NotEmpty(nic.ReceiveOne(0));
        Assert.True(nic.WaitFor(() => nic.Queues[1].DeviceUsedFlags == SplitRing.VIRTQ_USED_F_NO_NOTIFY));
    }

    [Fact]
    public void BurstsPublishUsedIndexOncePerBurst()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2);
        nic.PostRx(0, 32);
        for (int i = 0; i < 32; i++)
        {
            nic.Send(1, TestNic.Frame(64, i), kick: i == 31);
        }
        Assert.Equal(32, nic.Engine.PollOnce());
        Assert.Equal(32, nic.Queues[1].DeviceUsedIdx);
        Assert.Equal(32, nic.Queues[0].DeviceUsedIdx);
        Assert.Equal(1, nic.Irqs(1));
        Assert.Equal(1, nic.Irqs(0));
    }
}
