using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.PackedRing;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// Walks one packed-ring descriptor chain (VIRTIO 1.2 §2.8.6, §2.8.7) at the device's avail position:
/// chains occupy consecutive ring slots, the buffer id is in the chain's last descriptor, an indirect
/// descriptor (negotiated, without NEXT, a whole number of descriptors) is walked whole and may not nest.
/// Generic over a struct visitor, like <see cref="SplitChain"/>.
/// </summary>
internal static class PackedChain
{
    /// <summary>
    /// Walks the chain at <see cref="Virtqueue.LastAvail"/>; <paramref name="slots"/> is the number of ring
    /// slots the chain takes, <paramref name="id"/> its buffer id.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ChainError Walk<TVisitor>(Virtqueue q, IovaMap dma, Span<byte> ring, ref TVisitor visitor, out ushort id, out int slots)
        where TVisitor : IChainVisitor, allows ref struct
    {
        slots = 0;
        id = 0;
        int pos = q.LastAvail;
        while (true)
        {
            var d = ring.Slice(pos * DescSize, DescSize);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(d);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(d[DescLen..]);
            id = BinaryPrimitives.ReadUInt16LittleEndian(d[DescId..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d[DescFlags..]);
            slots++;
            if ((flags & VIRTQ_DESC_F_INDIRECT) != 0)
            {
                return WalkIndirect(q, dma, flags, addr, len, ref visitor);
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
            if (slots >= q.Size)
            {
                return ChainError.Loop;
            }
            if (++pos == q.Size)
            {
                pos = 0;
            }
        }
    }

    private static ChainError WalkIndirect<TVisitor>(Virtqueue q, IovaMap dma, ushort flags, ulong addr, uint len, ref TVisitor visitor)
        where TVisitor : IChainVisitor, allows ref struct
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
}
