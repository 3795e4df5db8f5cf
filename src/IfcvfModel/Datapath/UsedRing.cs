using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// The device's side of the used ring, split and packed alike: entries are written as chains complete
/// (<see cref="Put"/>), and once per burst <see cref="Publish"/> makes them visible, updates the device's
/// notification suppression and decides the interrupt (EVENT_IDX, NO_INTERRUPT, packed event suppression).
/// </summary>
internal static class UsedRing
{
    /// <summary>Writes the used entry of a chain (split: at the used index; packed: at the chain's first slot).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Put(Virtqueue q, scoped ref RingView v, Chain chain, uint len)
    {
        if (q.Packed)
        {
            PutPacked(q, v.Desc, chain, len);
            return;
        }
        var e = v.Used.Slice(SplitRing.UsedRing + (SplitRing.UsedElemSize * (q.LastUsed & q.Mask)), SplitRing.UsedElemSize);
        BinaryPrimitives.WriteUInt32LittleEndian(e, chain.Id);
        BinaryPrimitives.WriteUInt32LittleEndian(e[4..], len);
        q.LastUsed++;
    }

    private static void PutPacked(Virtqueue q, Span<byte> ring, Chain chain, uint len)
    {
        int at = q.LastUsed * PackedRing.DescSize;
        BinaryPrimitives.WriteUInt32LittleEndian(ring[(at + PackedRing.DescLen)..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(ring[(at + PackedRing.DescId)..], chain.Id);
        ushort flags = q.UsedWrap ? (ushort)(PackedRing.VIRTQ_DESC_F_AVAIL | PackedRing.VIRTQ_DESC_F_USED) : (ushort)0;
        if (len != 0)
        {
            flags |= PackedRing.VIRTQ_DESC_F_WRITE;
        }
        SharedIndex.Store16(ring, at + PackedRing.DescFlags, flags); // release: id and len are visible first
        AvailRing.AdvancePacked(ref q.LastUsed, ref q.UsedWrap, chain.Slots, q.Size);
    }

    /// <summary>Publishes what completed since <paramref name="old"/> and interrupts if the driver asked.</summary>
    public static void Publish(VirtqueueEngine engine, Virtqueue q, scoped ref RingView v, UsedMark old)
    {
        var dev = engine.Device;
        if (q.Packed)
        {
            PublishPacked(dev, q, ref v, old);
            return;
        }
        SharedIndex.Store16(v.Used, SplitRing.UsedIdx, q.LastUsed);
        if (q.EventIdx)
        {
            SharedIndex.Store16(v.Used, SplitRing.AvailEventOffset(q.Size), q.LastAvail);
        }
        else if (q.SuppressKicks && (BinaryPrimitives.ReadUInt16LittleEndian(v.Used) & SplitRing.VIRTQ_USED_F_NO_NOTIFY) == 0)
        {
            SharedIndex.Store16(v.Used, SplitRing.UsedFlags, SplitRing.VIRTQ_USED_F_NO_NOTIFY);
        }
        if (q.LastUsed == old.Index)
        {
            return;
        }
        Interlocked.MemoryBarrier(); // used idx store before reading the driver's suppression fields
        ushort flags = SharedIndex.Load16(v.Avail, SplitRing.AvailFlags); // with EVENT_IDX read for the §2.7.7.1 check only
        bool notify = q.EventIdx
            ? SplitRing.NeedEvent(SharedIndex.Load16(v.Avail, SplitRing.UsedEventOffset(q.Size)), q.LastUsed, old.Index)
            : (flags & SplitRing.VIRTQ_AVAIL_F_NO_INTERRUPT) == 0;
        if (notify)
        {
            q.Interrupts++;
            dev.RaiseQueueInterrupt(q.Index);
        }
        if (flags > (q.EventIdx ? 0 : SplitRing.VIRTQ_AVAIL_F_NO_INTERRUPT))
        {
            AvailFlagsViolation(engine, q, flags);
        }
    }

    /// <summary>
    /// VIRTIO 1.2 §2.7.7.1 broken (checked once per published burst, where the device reads the flags anyway):
    /// counted and logged once; in strict mode the queue stops and the device needs a reset. Tolerant: bit 0
    /// is honoured without EVENT_IDX, the flags are ignored with it.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void AvailFlagsViolation(VirtqueueEngine engine, Virtqueue q, ushort flags)
    {
        string detail = $"avail ring flags 0x{flags:x4} with VIRTIO_F_EVENT_IDX {(q.EventIdx ? "negotiated (MUST be 0)" : "not negotiated (MUST be 0 or 1)")}";
        if (engine.Device.ReportViolation(SpecRule.AvailFlags, $"vq {q.Index}: {detail}"))
        {
            engine.Fail(q, detail);
        }
    }

    private static void PublishPacked(IVirtqueueDevice dev, Virtqueue q, scoped ref RingView v, UsedMark old)
    {
        ushort want = q.SuppressKicks ? PackedRing.RING_EVENT_FLAGS_DISABLE : PackedRing.RING_EVENT_FLAGS_ENABLE;
        if (BinaryPrimitives.ReadUInt16LittleEndian(v.Used[PackedRing.EventFlags..]) != want)
        {
            SharedIndex.Store16(v.Used, PackedRing.EventFlags, want);
        }
        if (q.UsedMark == old)
        {
            return;
        }
        Interlocked.MemoryBarrier(); // used descriptors before reading the driver's suppression fields
        ushort flags = SharedIndex.Load16(v.Avail, PackedRing.EventFlags);
        bool notify = flags switch
        {
            PackedRing.RING_EVENT_FLAGS_DISABLE => false,
            PackedRing.RING_EVENT_FLAGS_DESC when q.EventIdx =>
                PackedRing.NeedEvent(SharedIndex.Load16(v.Avail, PackedRing.EventOffWrap), q.LastUsed, q.UsedWrap, old.Index, q.Size),
            _ => true,
        };
        if (notify)
        {
            q.Interrupts++;
            dev.RaiseQueueInterrupt(q.Index);
        }
    }
}
