using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.IfcvfModel.Datapath.Net;

/// <summary>
/// A TX chain's buffers (device-readable only). A chain of one buffer (header and frame together, as
/// DPDK's virtio-user and Linux with ANY_LAYOUT send most frames) is used where it lies in guest memory:
/// no copy. From the second buffer on, the buffers are copied one after another into the staging buffer.
/// Either way the frame is bounded by the staging buffer's size (header + largest frame), so a chain can
/// never hand more than that to a port.
/// </summary>
internal ref struct TxGather(IovaMap dma, byte[] stage) : IChainVisitor
{
    private Span<byte> _first;
    private int _buffers;

    /// <summary>Bytes in the chain (header + frame).</summary>
    public int Total;

    /// <summary>The gathered frame: the single buffer in place, or the staged copy.</summary>
    public readonly ReadOnlySpan<byte> Frame => _buffers <= 1 ? _first : stage.AsSpan(0, Total);

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
        if (_buffers == 0)
        {
            _first = src;
        }
        else
        {
            if (_buffers == 1)
            {
                _first.CopyTo(stage); // a second buffer: from now on the frame is gathered
            }
            src.CopyTo(stage.AsSpan(Total));
        }
        _buffers++;
        Total += (int)len;
        return ChainError.None;
    }
}
