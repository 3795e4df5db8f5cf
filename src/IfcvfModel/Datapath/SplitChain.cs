using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// Walks one split-ring descriptor chain (VIRTIO 1.2 §2.7.5, §2.7.5.3): follows NEXT, enters at most one
/// indirect table (which must be negotiated, alone in its descriptor and a whole number of descriptors),
/// and stops a chain longer than its table (a loop) or pointing beyond it. The walkers (TX gather, RX and
/// control collect) only decide what a buffer may be; every structural check is here, once. Generic over
/// a struct visitor, so the JIT specialises and inlines each use: no allocation, no virtual call, the
/// loop state stays in registers.
/// </summary>
internal static class SplitChain
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ChainError Walk<TVisitor>(Virtqueue q, IovaMap dma, Span<byte> desc, ushort head, ref TVisitor visitor)
        where TVisitor : IChainVisitor, allows ref struct
    {
        if (head >= q.Size)
        {
            return ChainError.BadHead;
        }
        Span<byte> table = desc;
        int tableCount = q.Size;
        int idx = head;
        int visited = 0;
        bool indirect = false;
        while (true)
        {
            var d = table.Slice(idx * DescSize, DescSize);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(d);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(d[DescLen..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d[DescFlags..]);
            ushort next = BinaryPrimitives.ReadUInt16LittleEndian(d[DescNext..]);
            if ((flags & VIRTQ_DESC_F_INDIRECT) != 0)
            {
                var err = EnterIndirect(q, dma, indirect, flags, addr, len, ref table, ref tableCount);
                if (err != ChainError.None)
                {
                    return err;
                }
                indirect = true;
                idx = 0;
                visited = 0;
                continue;
            }
            var verdict = visitor.Visit(addr, len, (flags & VIRTQ_DESC_F_WRITE) != 0);
            if (verdict != ChainError.None)
            {
                return verdict;
            }
            if ((flags & VIRTQ_DESC_F_NEXT) == 0)
            {
                return ChainError.None;
            }
            if (++visited >= tableCount)
            {
                return ChainError.Loop;
            }
            if (next >= tableCount)
            {
                return ChainError.BadNext;
            }
            idx = next;
        }
    }

    private static ChainError EnterIndirect(Virtqueue q, IovaMap dma, bool inIndirect, ushort flags, ulong addr, uint len,
        ref Span<byte> table, ref int tableCount)
    {
        if (!q.Indirect)
        {
            return ChainError.IndirectNotNegotiated;
        }
        if (inIndirect)
        {
            return ChainError.NestedIndirect;
        }
        if ((flags & VIRTQ_DESC_F_NEXT) != 0)
        {
            return ChainError.IndirectWithNext;
        }
        if (len == 0 || len % DescSize != 0 || len / DescSize > SplitRing.MaxSize)
        {
            return ChainError.BadIndirectLength;
        }
        if (!dma.TryTranslate(addr, len, false, out table))
        {
            return ChainError.BadAddress;
        }
        tableCount = (int)(len / DescSize);
        return ChainError.None;
    }
}
