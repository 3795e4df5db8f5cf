using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.PackedRing;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// Packed virtqueues (VIRTIO_F_RING_PACKED, VIRTIO 1.2 §2.8). Chains occupy consecutive ring slots; the
/// buffer id is in the chain's last descriptor; one used descriptor is written per chain at the chain's
/// first slot (id, written length, then the flags with release semantics); indirect tables are walked
/// whole. Interrupts follow the driver's event-suppression structure (ENABLE / DISABLE / DESC with
/// EVENT_IDX); the device's structure asks for no kicks in poll mode.
/// </summary>
public sealed partial class VirtioNetEngine
{
    private static bool PackedHeadAvailable(Span<byte> desc, Virtqueue q) =>
        IsAvailable(SharedIndex.Load16(desc, (q.LastAvail * DescSize) + DescFlags), q.AvailWrap);

    private static void AdvanceAvail(Virtqueue q, int count)
    {
        int next = q.LastAvail + count;
        if (next >= q.Size)
        {
            next -= q.Size;
            q.AvailWrap = !q.AvailWrap;
        }
        q.LastAvail = (ushort)next;
    }

    /// <summary>Writes the used descriptor for a chain of <paramref name="count"/> ring slots.</summary>
    private static void PutUsedPacked(Span<byte> desc, Virtqueue q, ushort id, uint len, int count)
    {
        int at = q.LastUsed * DescSize;
        BinaryPrimitives.WriteUInt32LittleEndian(desc[(at + DescLen)..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(desc[(at + DescId)..], id);
        ushort flags = q.UsedWrap ? (ushort)(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) : (ushort)0;
        if (len != 0)
        {
            flags |= VIRTQ_DESC_F_WRITE;
        }
        SharedIndex.Store16(desc, at + DescFlags, flags); // release: id and len are visible first
        int next = q.LastUsed + count;
        if (next >= q.Size)
        {
            next -= q.Size;
            q.UsedWrap = !q.UsedWrap;
        }
        q.LastUsed = (ushort)next;
    }

    private static void PublishPacked(SoftIfcVf dev, Virtqueue q, scoped ref RingView v, ushort oldMark)
    {
        ushort want = q.SuppressKicks ? RING_EVENT_FLAGS_DISABLE : RING_EVENT_FLAGS_ENABLE;
        if (BinaryPrimitives.ReadUInt16LittleEndian(v.Used[EventFlags..]) != want)
        {
            SharedIndex.Store16(v.Used, EventFlags, want);
        }
        if (q.UsedMark == oldMark)
        {
            return;
        }
        Interlocked.MemoryBarrier(); // used descriptors before reading the driver's suppression fields
        ushort flags = SharedIndex.Load16(v.Avail, EventFlags);
        bool notify = flags switch
        {
            RING_EVENT_FLAGS_DISABLE => false,
            RING_EVENT_FLAGS_DESC when q.EventIdx =>
                NeedEvent(SharedIndex.Load16(v.Avail, EventOffWrap), q.LastUsed, q.UsedWrap, oldMark & 0x7FFF, q.Size),
            _ => true,
        };
        if (notify)
        {
            q.Interrupts++;
            dev.RaiseQueueInterrupt(q.Index);
        }
    }

    private int TxBurstPacked(SoftIfcVf dev, Virtqueue q, scoped ref RingView tv)
    {
        if (!PackedHeadAvailable(tv.Desc, q))
        {
            return 0;
        }
        ushort oldUsed = q.UsedMark;
        Virtqueue? rx = null;
        var rv = default(RingView);
        ushort rxOldUsed = 0;
        if (_backend.Kind == Backends.NetBackendKind.Loopback)
        {
            var cand = _queues[q.Index - 1];
            if (cand is not null && cand.TryAcquire())
            {
                rx = cand;
                rxOldUsed = rx.UsedMark;
                if (!rx.Failed && !RingView.TryCreate(_dma!, rx, out rv))
                {
                    Fail(dev, rx, "ring areas outside the DMA map");
                }
            }
        }
        bool wakePeer = false;
        int i = 0;
        try
        {
            for (; i < _burst && PackedHeadAvailable(tv.Desc, q); i++)
            {
                var gather = new TxGather(_dma!, _stage);
                var err = WalkPacked(q, tv.Desc, ref gather, out ushort id, out int count);
                int len = gather.Total;
                if (err != ChainError.None)
                {
                    Fail(dev, q, ChainErrors.Describe(err));
                    break;
                }
                AdvanceAvail(q, count);
                PutUsedPacked(tv.Desc, q, id, 0, count);
                TransmitGathered(dev, q, rx, ref rv, len, ref wakePeer);
            }
            if (q.UsedMark != oldUsed)
            {
                PublishPacked(dev, q, ref tv, oldUsed);
            }
            if (rx is not null && rx.UsedMark != rxOldUsed)
            {
                Publish(dev, rx, ref rv, rxOldUsed);
            }
        }
        finally
        {
            rx?.Release();
        }
        if (wakePeer)
        {
            _backend.Peer!.Owner?.Wake();
        }
        return i;
    }

    private bool DeliverRxPacked(SoftIfcVf dev, Virtqueue rx, scoped ref RingView rv, Span<byte> frame)
    {
        int total = frame.Length;
        ushort startAvail = rx.LastAvail;
        bool startWrap = rx.AvailWrap;
        int segs = 0;
        int chains = 0;
        long cap = 0;
        while (cap < total)
        {
            if (!PackedHeadAvailable(rv.Desc, rx))
            {
                rx.LastAvail = startAvail;
                rx.AvailWrap = startWrap;
                rx.Drops++;
                return false;
            }
            var collect = new WritableCollector(_dma!, _segAddr, _segLen, segs, default);
            var err = WalkPacked(rx, rv.Desc, ref collect, out ushort id, out int count);
            segs = collect.Segs;
            long c = collect.Capacity;
            if (err != ChainError.None)
            {
                rx.LastAvail = startAvail;
                rx.AvailWrap = startWrap;
                Fail(dev, rx, ChainErrors.Describe(err));
                return false;
            }
            _chainHead[chains] = id;
            _chainSegEnd[chains] = segs;
            _chainCount[chains] = count;
            chains++;
            cap += c;
            AdvanceAvail(rx, count);
            if (!rx.Mergeable || chains == MaxSegments)
            {
                break;
            }
        }
        if (cap < total)
        {
            rx.LastAvail = startAvail;
            rx.AvailWrap = startWrap;
            rx.Drops++;
            return false;
        }
        // Used descriptors go where the chains were, in order: rewind the used side is not needed since
        // the used position trails the avail position and PutUsedPacked advances it chain by chain.
        return ScatterRx(dev, rx, ref rv, frame, chains);
    }

    private int CtrlBurstPacked(SoftIfcVf dev, Virtqueue q, scoped ref RingView v)
    {
        int done = 0;
        for (; done < _burst && PackedHeadAvailable(v.Desc, q); done++)
        {
            var collect = new WritableCollector(_dma!, _segAddr, _segLen, 0, _ctrlIn);
            var err = WalkPacked(q, v.Desc, ref collect, out ushort id, out int count);
            int segs = collect.Segs;
            int inLen = collect.ReadLen;
            if (err == ChainError.None && segs == 0)
            {
                Fail(dev, q, "control command without a device-writable status byte");
                break;
            }
            if (err != ChainError.None)
            {
                Fail(dev, q, ChainErrors.Describe(err));
                break;
            }
            int ack = inLen >= 2 && inLen <= _ctrlIn.Length ? ExecuteCtrl(dev, q, _ctrlIn.AsSpan(0, inLen)) : VirtioNetCtrl.ERR;
            if (ack < 0)
            {
                break;
            }
            if (!_dma!.TryTranslate(_segAddr[0], 1, true, out var status))
            {
                Fail(dev, q, "control status buffer unmapped while in use");
                break;
            }
            status[0] = (byte)ack;
            AdvanceAvail(q, count);
            PutUsedPacked(v.Desc, q, id, 1, count);
            q.Packets++;
            q.Bytes += inLen;
            if (ack != VirtioNetCtrl.OK)
            {
                q.Errors++;
            }
        }
        return done;
    }

    /// <summary>
    /// Walks the chain at the device's avail position, handing each buffer to <paramref name="visitor"/> (the
    /// same TX gather and RX/control collect as for split rings). <paramref name="count"/> is the number of
    /// ring slots the chain takes, <paramref name="id"/> its buffer id.
    /// </summary>
    private ChainError WalkPacked<TVisitor>(Virtqueue q, Span<byte> ring, ref TVisitor visitor, out ushort id, out int count)
        where TVisitor : IChainVisitor, allows ref struct
    {
        var dma = _dma!;
        count = 0;
        id = 0;
        int pos = q.LastAvail;
        while (true)
        {
            var d = ring.Slice(pos * DescSize, DescSize);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(d);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(d[DescLen..]);
            id = BinaryPrimitives.ReadUInt16LittleEndian(d[DescId..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d[DescFlags..]);
            count++;
            if ((flags & VIRTQ_DESC_F_INDIRECT) != 0)
            {
                if (!q.Indirect)
                {
                    return ChainError.IndirectNotNegotiated;
                }
                if ((flags & VIRTQ_DESC_F_NEXT) != 0)
                {
                    return ChainError.IndirectWithNext;
                }
                if (len == 0 || len % DescSize != 0 || len / DescSize > SplitRing.MaxSize)
                {
                    return ChainError.BadIndirectLength;
                }
                if (!dma.TryTranslate(addr, len, false, out var table))
                {
                    return ChainError.BadAddress;
                }
                for (int k = 0; k < table.Length; k += DescSize)
                {
                    var t = table.Slice(k, DescSize);
                    ushort tf = BinaryPrimitives.ReadUInt16LittleEndian(t[DescFlags..]);
                    if ((tf & VIRTQ_DESC_F_INDIRECT) != 0)
                    {
                        return ChainError.NestedIndirect;
                    }
                    var verdict = visitor.Visit(BinaryPrimitives.ReadUInt64LittleEndian(t), BinaryPrimitives.ReadUInt32LittleEndian(t[DescLen..]),
                        (tf & VIRTQ_DESC_F_WRITE) != 0);
                    if (verdict != ChainError.None)
                    {
                        return verdict;
                    }
                }
                return ChainError.None;
            }
            var err = visitor.Visit(addr, len, (flags & VIRTQ_DESC_F_WRITE) != 0);
            if (err != ChainError.None)
            {
                return err;
            }
            if ((flags & VIRTQ_DESC_F_NEXT) == 0)
            {
                return ChainError.None;
            }
            if (count >= q.Size)
            {
                return ChainError.Loop;
            }
            if (++pos == q.Size)
            {
                pos = 0;
            }
        }
    }
}
