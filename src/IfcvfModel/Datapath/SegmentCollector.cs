using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// A chain's buffers for a device that answers into them (virtio-net RX and control, a block request):
/// device-writable ones become segments (mapped and writable, appended to the caller's arrays from
/// <c>segs</c> on); readable ones are allowed only before the first writable one and only when
/// <c>readable</c> is given (a command or request header), and are copied into it.
/// </summary>
internal ref struct SegmentCollector(IovaMap dma, ulong[] segAddr, uint[] segLen, int segs, Span<byte> readable) : IChainVisitor
{
    private readonly Span<byte> _readable = readable;
    private bool _sawWritable;
    public int Segs = segs;
    public long Capacity;
    public int ReadLen;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ChainError Visit(ulong addr, uint len, bool writable)
    {
        if (len > int.MaxValue)
        {
            return ChainError.LengthOverflow; // no single buffer of 2 GiB or more (spans are int-sized)
        }
        if (writable)
        {
            _sawWritable = true;
            if (len == 0)
            {
                return ChainError.None;
            }
            if (Segs >= segAddr.Length)
            {
                return ChainError.TooManySegments;
            }
            if (!dma.TryTranslate(addr, len, true, out _))
            {
                return ChainError.BadAddress;
            }
            segAddr[Segs] = addr;
            segLen[Segs] = len;
            Segs++;
            Capacity += len;
            return Capacity > uint.MaxValue ? ChainError.LengthOverflow : ChainError.None;
        }
        if (_readable.IsEmpty)
        {
            return ChainError.ReadOnlyInDeviceBuffer;
        }
        if (_sawWritable)
        {
            return ChainError.ReadAfterWrite;
        }
        if (len == 0)
        {
            return ChainError.None;
        }
        if (!dma.TryTranslate(addr, len, false, out var src))
        {
            return ChainError.BadAddress;
        }
        if ((ulong)ReadLen + len > uint.MaxValue)
        {
            return ChainError.LengthOverflow;
        }
        int room = Math.Max(0, _readable.Length - ReadLen);
        int take = (int)Math.Min(len, (uint)room);
        src[..take].CopyTo(_readable[ReadLen..]);
        ReadLen = (int)Math.Min((long)ReadLen + len, int.MaxValue);
        return ChainError.None;
    }
}
