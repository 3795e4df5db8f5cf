using System.Buffers.Binary;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath.Net;

/// <summary>
/// The virtio-net control queue (VIRTIO 1.2 §5.1.6.5): RX mode, MAC address and table, MQ pairs, announce
/// ack. A command is the readable part of a chain; the first writable byte gets the ack.
/// </summary>
internal sealed class NetControlQueue(NetPersonality net)
{
    private readonly byte[] _in = new byte[4096];
    private readonly ulong[] _segAddr = new ulong[NetPersonality.MaxSegments];
    private readonly uint[] _segLen = new uint[NetPersonality.MaxSegments];

    public int Process(Virtqueue? queue)
    {
        var engine = net.Engine;
        if (!QueueBurst.TryOpen(engine, queue, out var b))
        {
            return 0;
        }
        var q = b.Q;
        var dma = engine.Dma;
        int done = 0;
        try
        {
            for (; done < engine.Burst; done++)
            {
                if (!AvailRing.HasChain(q, ref b.View, out string? fault))
                {
                    if (fault is not null)
                    {
                        engine.Fail(q, fault, SpecRule.AvailAhead);
                    }
                    break;
                }
                var mark = AvailRing.Mark(q);
                var collect = new SegmentCollector(dma, _segAddr, _segLen, 0, _in);
                var err = AvailRing.Take(q, dma, ref b.View, ref collect, out var chain);
                if (err == ChainError.None && collect.Segs == 0)
                {
                    AvailRing.Rewind(q, mark);
                    engine.Fail(q, "control command without a device-writable status byte");
                    break;
                }
                if (err != ChainError.None)
                {
                    engine.Fail(q, err);
                    break;
                }
                int inLen = collect.ReadLen;
                int ack = inLen >= 2 && inLen <= _in.Length ? Execute(q, _in.AsSpan(0, inLen)) : VirtioNetCtrl.ERR;
                if (ack < 0)
                {
                    AvailRing.Rewind(q, mark); // the queue is being stopped: leave this command unconsumed
                    break;
                }
                if (!dma.TryTranslate(_segAddr[0], 1, true, out var status))
                {
                    AvailRing.Rewind(q, mark);
                    engine.Fail(q, "control status buffer unmapped while in use");
                    break;
                }
                status[0] = (byte)ack;
                UsedRing.Put(q, ref b.View, chain, 1);
                q.Packets++;
                q.Bytes += inLen;
                if (ack != VirtioNetCtrl.OK)
                {
                    q.Errors++;
                }
            }
        }
        finally
        {
            b.Close(engine);
        }
        return done;
    }

    /// <summary>Runs one control command. Returns the ack, or -1 if the queue is being stopped meanwhile.</summary>
    private int Execute(Virtqueue q, ReadOnlySpan<byte> cmd)
    {
        byte cls = cmd[0];
        byte code = cmd[1];
        var data = cmd[2..];
        ulong features = net.Features;
        bool Has(int f) => VirtioFeature.Has(features, f);
        switch (cls)
        {
            case VirtioNetCtrl.CLASS_RX when Has(VirtioFeature.NET_F_CTRL_RX):
                return code <= VirtioNetCtrl.CMD_RX_NOBCAST && data.Length == 1 ? VirtioNetCtrl.OK : VirtioNetCtrl.ERR;
            case VirtioNetCtrl.CLASS_MAC when code == VirtioNetCtrl.CMD_MAC_ADDR_SET && Has(VirtioFeature.NET_F_CTRL_MAC_ADDR):
                if (data.Length != 6)
                {
                    return VirtioNetCtrl.ERR;
                }
                if (!WithRegisters(q, static (dev, d) => dev.SetMac(d), data))
                {
                    return -1;
                }
                data.CopyTo(net.Mac);
                return VirtioNetCtrl.OK;
            case VirtioNetCtrl.CLASS_MAC when code == VirtioNetCtrl.CMD_MAC_TABLE_SET && Has(VirtioFeature.NET_F_CTRL_RX):
                return ValidMacTables(data) ? VirtioNetCtrl.OK : VirtioNetCtrl.ERR;
            case VirtioNetCtrl.CLASS_MQ when code == VirtioNetCtrl.CMD_MQ_VQ_PAIRS_SET && Has(VirtioFeature.NET_F_MQ):
                if (data.Length != 2)
                {
                    return VirtioNetCtrl.ERR;
                }
                ushort pairs = BinaryPrimitives.ReadUInt16LittleEndian(data);
                if (pairs < VirtioNetCtrl.MQ_VQ_PAIRS_MIN || pairs > net.Pairs)
                {
                    return VirtioNetCtrl.ERR;
                }
                net.ActivePairs = pairs;
                return VirtioNetCtrl.OK;
            case VirtioNetCtrl.CLASS_ANNOUNCE when code == VirtioNetCtrl.CMD_ANNOUNCE_ACK && Has(VirtioFeature.NET_F_GUEST_ANNOUNCE):
                return WithRegisters(q, static (dev, _) => dev.SetAnnounce(false), data) ? VirtioNetCtrl.OK : -1;
            default:
                return VirtioNetCtrl.ERR;
        }
    }

    private delegate void ConfigChange(INetDevice dev, ReadOnlySpan<byte> data);

    /// <summary>Applies a device-config change under the register lock; false if the queue is being stopped meanwhile.</summary>
    private bool WithRegisters(Virtqueue q, ConfigChange change, ReadOnlySpan<byte> data)
    {
        if (!net.Engine.EnterRegisters(q))
        {
            return false;
        }
        try
        {
            change(net.Device, data);
        }
        finally
        {
            net.Device.ExitRegisters();
        }
        return true;
    }

    private static bool ValidMacTables(ReadOnlySpan<byte> data)
    {
        for (int t = 0; t < 2; t++)
        {
            if (data.Length < 4)
            {
                return false;
            }
            uint entries = BinaryPrimitives.ReadUInt32LittleEndian(data);
            if (entries > (uint)(data.Length - 4) / 6)
            {
                return false;
            }
            data = data[(4 + (int)(entries * 6))..];
        }
        return data.IsEmpty;
    }
}
