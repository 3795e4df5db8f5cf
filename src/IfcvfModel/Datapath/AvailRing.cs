using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>A chain taken from the avail side: its id (split: head index; packed: buffer id) and ring slots (packed).</summary>
internal readonly record struct Chain(ushort Id, int Slots);

/// <summary>Where the avail side stands, to give back chains taken but not used (an RX frame that did not fit).</summary>
internal readonly record struct AvailMark(ushort Index, bool Wrap);

/// <summary>
/// The device's side of the avail ring, split and packed alike: is a chain available, take it (walking it
/// through a visitor), give chains back. Personalities build on these and never look at the ring layout.
/// </summary>
internal static class AvailRing
{
    /// <summary>
    /// Whether a chain is available. Split: reloads the driver's avail idx only when the cached one is used
    /// up, and reports (in <paramref name="fault"/>) an idx more than the queue size ahead of the used idx
    /// (VIRTIO 1.2 §2.7.6: more chains outstanding than descriptors, or an idx that went backwards).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool HasChain(Virtqueue q, scoped ref RingView v, out string? fault)
    {
        fault = null;
        if (q.Packed)
        {
            return PackedRing.IsAvailable(SharedIndex.Load16(v.Desc, (q.LastAvail * PackedRing.DescSize) + PackedRing.DescFlags), q.AvailWrap);
        }
        if (q.LastAvail != q.AvailIdxCache)
        {
            return true;
        }
        ushort ai = SharedIndex.Load16(v.Avail, SplitRing.AvailIdx);
        ushort pending = (ushort)(ai - q.LastAvail);
        if (RunsAhead(q, ai))
        {
            // More chains outstanding than the ring has entries (each takes a descriptor), or idx went back.
            fault = AheadFault(q, ai);
            return false;
        }
        q.AvailIdxCache = ai;
        return pending != 0;
    }

    /// <summary>Split: an avail idx more entries ahead of the used idx than the ring has (or one that went back).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool RunsAhead(Virtqueue q, ushort availIdx) => (ushort)(availIdx - q.LastUsed) > q.Size;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static string AheadFault(Virtqueue q, ushort ai) =>
        $"avail idx {ai} is {(ushort)(ai - q.LastUsed)} entries ahead of used idx {q.LastUsed} (last_avail {q.LastAvail}, queue size {q.Size})";

    /// <summary>Walks the next available chain (call after <see cref="HasChain"/>) and, if it is sound, takes it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ChainError Take<TVisitor>(Virtqueue q, IovaMap dma, scoped ref RingView v, ref TVisitor visitor, out Chain chain)
        where TVisitor : IChainVisitor, allows ref struct
    {
        if (q.Packed)
        {
            var perr = PackedChain.Walk(q, dma, v.Desc, ref visitor, out ushort id, out int slots);
            chain = new Chain(id, slots);
            if (perr == ChainError.None)
            {
                AdvancePacked(ref q.LastAvail, ref q.AvailWrap, slots, q.Size);
            }
            return perr;
        }
        ushort head = BinaryPrimitives.ReadUInt16LittleEndian(v.Avail[(SplitRing.AvailRing + (2 * (q.LastAvail & q.Mask)))..]);
        chain = new Chain(head, 1);
        var err = SplitChain.Walk(q, dma, v.Desc, head, ref visitor);
        if (err == ChainError.None)
        {
            q.LastAvail++;
        }
        return err;
    }

    /// <summary>
    /// Look-ahead before a burst: for up to <paramref name="max"/> available chains, reads the first
    /// descriptor and starts loading its buffer into the cache (<see cref="CacheHint"/>), so the burst's
    /// misses on packet buffers overlap. Only a hint: it takes no chain, reads only inside the ring areas
    /// and hints only at translated memory; anything odd (bad head, unmapped buffer) is skipped here and
    /// judged when the chain is really taken. Nothing is hinted when fewer than two chains are available:
    /// a single chain's hint would come a few instructions before its own walk loads the same lines, so it
    /// overlaps nothing and only costs a descriptor read and a translation per round (what a one-packet
    /// round paid most for in bench/Micro). Split: the avail idx read here is kept as
    /// <see cref="Virtqueue.AvailIdxCache"/> (validated as <see cref="HasChain"/> validates it), so the burst
    /// does not read it again. Returns the chains hinted.
    /// </summary>
    public static int Prefetch(Virtqueue q, IovaMap dma, scoped ref RingView v, int max)
    {
        int n = 0;
        if (max < 2)
        {
            return 0;
        }
        if (q.Packed)
        {
            int pos = q.LastAvail;
            bool wrap = q.AvailWrap;
            for (; n < max; n++)
            {
                var d = v.Desc.Slice(pos * PackedRing.DescSize, PackedRing.DescSize);
                if (!PackedRing.IsAvailable(SharedIndex.Load16(d, PackedRing.DescFlags), wrap))
                {
                    break;
                }
                Hint(dma, d);
                if (++pos == q.Size)
                {
                    pos = 0;
                    wrap = !wrap;
                }
            }
            return n;
        }
        if ((ushort)(q.AvailIdxCache - q.LastAvail) >= 2)
        {
            return HintSplit(q, dma, ref v, Math.Min(max, (ushort)(q.AvailIdxCache - q.LastAvail)));
        }
        ushort ai = SharedIndex.Load16(v.Avail, SplitRing.AvailIdx);
        if (RunsAhead(q, ai))
        {
            return 0; // HasChain reports it
        }
        q.AvailIdxCache = ai;
        int pending = (ushort)(ai - q.LastAvail);
        return pending < 2 ? 0 : HintSplit(q, dma, ref v, Math.Min(max, pending));
    }

    private static int HintSplit(Virtqueue q, IovaMap dma, scoped ref RingView v, int count)
    {
        int n = 0;
        for (; n < count; n++)
        {
            ushort head = BinaryPrimitives.ReadUInt16LittleEndian(v.Avail[(SplitRing.AvailRing + (2 * ((q.LastAvail + n) & q.Mask)))..]);
            if (head < q.Size)
            {
                Hint(dma, v.Desc.Slice(head * SplitRing.DescSize, SplitRing.DescSize));
            }
        }
        return n;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Hint(IovaMap dma, Span<byte> desc)
    {
        ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(desc);
        uint len = Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(desc[SplitRing.DescLen..]), 128u);
        if (len != 0 && dma.TryTranslate(addr, len, false, out var buf))
        {
            CacheHint.Prefetch(buf);
        }
    }

    public static AvailMark Mark(Virtqueue q) => new(q.LastAvail, q.AvailWrap);

    /// <summary>Gives back every chain taken since <paramref name="mark"/>.</summary>
    public static void Rewind(Virtqueue q, AvailMark mark)
    {
        q.LastAvail = mark.Index;
        q.AvailWrap = mark.Wrap;
    }

    /// <summary>Moves a packed ring position on by <paramref name="slots"/>, flipping the wrap counter at the end of the ring.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AdvancePacked(ref ushort position, ref bool wrap, int slots, ushort size)
    {
        int next = position + slots;
        if (next >= size)
        {
            next -= size;
            wrap = !wrap;
        }
        position = (ushort)next;
    }
}
