using System.Buffers.Binary;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.Virtio;

namespace IfcVdpa.Datapath.Tests;

/// <summary>The control virtqueue (MAC, RX mode, MQ, announce) and traffic over several queue pairs.</summary>
public class ControlAndMultiqueueTests
{
    private static readonly ulong CtrlFeatures = TestNic.BaseFeatures |
        VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_RX) |
        VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_MAC_ADDR) | VirtioFeature.Bit(VirtioFeature.NET_F_GUEST_ANNOUNCE);

    private static readonly ulong Mq = VirtioFeature.Bit(VirtioFeature.NET_F_MQ);

    /// <summary>Sends one control command (class, command, data | ack) and returns the ack byte.</summary>
    internal static byte Command(TestNic nic, byte cls, byte cmd, byte[] data)
    {
        int cq = nic.Vf.NumQueues - 1;
        var q = nic.Queues[cq];
        byte[] hdr = [cls, cmd];
        ulong ack = q.Alloc(1);
        nic.Mem(ack, 1)[0] = 0xee;
        var segs = new List<(ulong, uint, bool)> { (q.Buffer(hdr), 2, false) };
        if (data.Length > 0)
        {
            segs.Add((q.Buffer(data), (uint)data.Length, false));
        }
        segs.Add((ack, 1, true));
        q.AddChain(segs);
        nic.Kick(cq);
        uint id = 0;
        uint len = 0;
        Assert.True(nic.WaitFor(() => q.TryTakeUsed(out id, out len)), $"control command not completed: {nic.Vf.NeedsResetReason} {string.Join("; ", nic.Logs)} running={nic.Vf.IsQueueRunning(cq)}");
        Assert.Equal(1u, len);
        q.FreeChain((ushort)id);
        return nic.Mem(ack, 1)[0];
    }

    [Fact]
    public void MacAddrSetChangesTheDeviceMacAndAcks()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(CtrlFeatures);
        byte gen = nic.Vf.ConfigGeneration;
        byte[] mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        Assert.Equal(VirtioNetCtrl.OK, Command(nic, VirtioNetCtrl.CLASS_MAC, VirtioNetCtrl.CMD_MAC_ADDR_SET, mac));
        Assert.Equal(mac, nic.Vf.Mac);
        Assert.NotEqual(gen, nic.Vf.ConfigGeneration);
        // A wrong length is refused without changing anything.
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, VirtioNetCtrl.CLASS_MAC, VirtioNetCtrl.CMD_MAC_ADDR_SET, [1, 2, 3]));
        Assert.Equal(mac, nic.Vf.Mac);
        Assert.True(nic.Irqs(2) >= 2); // each completed command interrupted the control queue
    }

    [Fact]
    public void RxModeCommandsAreAckedAndMalformedOnesRefused()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(CtrlFeatures);
        Assert.Equal(VirtioNetCtrl.OK, Command(nic, VirtioNetCtrl.CLASS_RX, VirtioNetCtrl.CMD_RX_PROMISC, [1]));
        Assert.Equal(VirtioNetCtrl.OK, Command(nic, VirtioNetCtrl.CLASS_RX, VirtioNetCtrl.CMD_RX_ALLMULTI, [0]));
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, VirtioNetCtrl.CLASS_RX, VirtioNetCtrl.CMD_RX_PROMISC, [1, 2]));
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, VirtioNetCtrl.CLASS_RX, 77, [1]));
        byte[] tables = new byte[4 + 6 + 4];
        BinaryPrimitives.WriteUInt32LittleEndian(tables, 1);
        Assert.Equal(VirtioNetCtrl.OK, Command(nic, VirtioNetCtrl.CLASS_MAC, VirtioNetCtrl.CMD_MAC_TABLE_SET, tables));
        BinaryPrimitives.WriteUInt32LittleEndian(tables, 5); // claims more entries than it carries
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, VirtioNetCtrl.CLASS_MAC, VirtioNetCtrl.CMD_MAC_TABLE_SET, tables));
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, 99, 0, []));
        Assert.False(nic.NeedsReset);
    }

    [Fact]
    public void CommandsOfUnnegotiatedFeaturesAreRefused()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ));
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, VirtioNetCtrl.CLASS_RX, VirtioNetCtrl.CMD_RX_PROMISC, [1]));
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, VirtioNetCtrl.CLASS_MAC, VirtioNetCtrl.CMD_MAC_ADDR_SET, [2, 0, 0, 0, 0, 9]));
        Assert.NotEqual([2, 0, 0, 0, 0, 9], nic.Vf.Mac);
    }

    [Fact]
    public void AnnounceAckClearsTheAnnounceStatus()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(CtrlFeatures);
        nic.Vf.SetAnnounce(true);
        Assert.Equal(VirtioNetConfig.S_ANNOUNCE, BinaryPrimitives.ReadUInt16LittleEndian(nic.Vf.ReadNetConfigSnapshot().AsSpan(VirtioNetConfig.Status)) & VirtioNetConfig.S_ANNOUNCE);
        Assert.Equal(VirtioNetCtrl.OK, Command(nic, VirtioNetCtrl.CLASS_ANNOUNCE, VirtioNetCtrl.CMD_ANNOUNCE_ACK, []));
        Assert.Equal(0, BinaryPrimitives.ReadUInt16LittleEndian(nic.Vf.ReadNetConfigSnapshot().AsSpan(VirtioNetConfig.Status)) & VirtioNetConfig.S_ANNOUNCE);
    }

    [Fact]
    public void ControlCommandsWorkFromTheEventWorker()
    {
        using var nic = new TestNic(NetBackend.Loopback(), new IfcvfModel.Datapath.EngineOptions { Mode = IfcvfModel.Datapath.EngineMode.Event });
        nic.Start(CtrlFeatures);
        byte[] mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        Assert.Equal(VirtioNetCtrl.OK, Command(nic, VirtioNetCtrl.CLASS_MAC, VirtioNetCtrl.CMD_MAC_ADDR_SET, mac));
        Assert.Equal(mac, nic.Vf.Mac);
    }

    [Fact]
    public void MultiqueuePairsEachLoopBackOnTheirOwnRx()
    {
        using var nic = new TestNic(NetBackend.Loopback(), vf: new SoftIfcVfOptions { QueuePairs = 4 });
        nic.Start(CtrlFeatures | Mq, mqPairs: 4);
        Assert.Equal(VirtioNetCtrl.OK, Command(nic, VirtioNetCtrl.CLASS_MQ, VirtioNetCtrl.CMD_MQ_VQ_PAIRS_SET, [4, 0]));
        Assert.Equal(4, nic.Engine.ActivePairs);
        for (int p = 0; p < 4; p++)
        {
            nic.PostRx(2 * p, 4);
        }
        for (int round = 0; round < 3; round++)
        {
            for (int p = 0; p < 4; p++)
            {
                nic.Send((2 * p) + 1, TestNic.Frame(100 + p, (round * 10) + p));
            }
            for (int p = 0; p < 4; p++)
            {
                Assert.Equal(TestNic.Frame(100 + p, (round * 10) + p), nic.ReceiveOne(2 * p));
            }
        }
        for (int p = 0; p < 4; p++)
        {
            Assert.Equal(3, nic.Vf.GetQueueCounters((2 * p) + 1).Packets);
            Assert.Equal(3, nic.Vf.GetQueueCounters(2 * p).Packets);
        }
    }

    [Fact]
    public void MqPairsOutOfRangeAreRefused()
    {
        using var nic = new TestNic(NetBackend.Loopback(), vf: new SoftIfcVfOptions { QueuePairs = 2 });
        nic.Start(CtrlFeatures | Mq, mqPairs: 2);
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, VirtioNetCtrl.CLASS_MQ, VirtioNetCtrl.CMD_MQ_VQ_PAIRS_SET, [3, 0]));
        Assert.Equal(VirtioNetCtrl.ERR, Command(nic, VirtioNetCtrl.CLASS_MQ, VirtioNetCtrl.CMD_MQ_VQ_PAIRS_SET, [0, 0]));
        Assert.Equal(VirtioNetCtrl.OK, Command(nic, VirtioNetCtrl.CLASS_MQ, VirtioNetCtrl.CMD_MQ_VQ_PAIRS_SET, [2, 0]));
        Assert.Equal(2, nic.Engine.ActivePairs);
    }
}
