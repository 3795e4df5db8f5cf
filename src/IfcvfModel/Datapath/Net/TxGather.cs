using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.IfcvfModel.Datapath.Net;

/// <summary>A TX chain's buffers: device-readable only, copied one after another into the staging buffer.</summary>
internal struct TxGather(IovaMap dma, byte[] stage) : IChainVisitor
{
    public int Total;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ChainError Visit(ulong addr, uint len, bool writable)
    {
        if (writable)
        {
            return ChainError.WritableInDriverBuffer;
        }
        if (len == 0)
        {
            return ChainError.None;
        }
        if (len > (uint)(stage.Length - Total))
        {
            return ChainError.TooLarge;
        }
        if (!dma.TryTranslate(addr, len, false, out var src))
        {
            return ChainError.BadAddress;
        }
        src.CopyTo(stage.AsSpan(Total));
        Total += (int)len;
        return ChainError.None;
    }
}
