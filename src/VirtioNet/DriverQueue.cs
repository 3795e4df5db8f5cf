using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.VirtioNet;

/// <summary>
/// The driver side of one split virtqueue whose rings and buffers live in driver-owned memory that is
/// DMA-mapped into the device. Descriptor i always points at buffer i (one-descriptor chains), which keeps
/// the bookkeeping allocation-free: RX reposts the same descriptor, TX keeps a free stack.
/// Single-threaded: exactly one thread uses a queue at a time (the caller guarantees it).
/// </summary>
internal sealed class DriverQueue
{
    private readonly MappedMemory _mem;
    private readonly ulong _descOff;
    private readonly ulong _availOff;
    private readonly ulong _usedOff;
    private readonly ulong _bufOff;
    private readonly ushort[] _free;
    private int _freeCount;
    private ushort _availIdx;
    private ushort _lastUsed;
    private ushort _kickedAt;
    private readonly bool _eventIdx;

    public DriverQueue(int index, ushort size, int bufferSize, MappedMemory mem, ulong offset, ulong iovaBase, bool eventIdx)
    {
        Index = index;
        Size = size;
        BufferSize = bufferSize;
        _mem = mem;
        _eventIdx = eventIdx;
        _descOff = offset;
        _availOff = Align(_descOff + (ulong)DescTableBytes(size), 64);
        _usedOff = Align(_availOff + (ulong)AvailBytes(size), 4096);
        _bufOff = Align(_usedOff + (ulong)UsedBytes(size), 4096);
        End = _bufOff + ((ulong)size * (ulong)bufferSize);
        DescIova = iovaBase + _descOff;
        AvailIova = iovaBase + _availOff;
        UsedIova = iovaBase + _usedOff;
        _free = new ushort[size];
        for (int i = 0; i < size; i++)
        {
            ulong addr = iovaBase + _bufOff + ((ulong)i * (ulong)bufferSize);
            var d = _mem.Span(_descOff + ((ulong)i * DescSize), DescSize);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
            _free[i] = (ushort)(size - 1 - i);
        }
        _freeCount = size;
    }

    public int Index { get; }
    public ushort Size { get; }
    public int BufferSize { get; }
    public ulong DescIova { get; }
    public ulong AvailIova { get; }
    public ulong UsedIova { get; }

    /// <summary>IOVA of buffer 0; the buffers follow each other (<see cref="BufferSize"/> bytes each).</summary>
    public ulong BufferIova => UsedIova - _usedOff + _bufOff;

    /// <summary>First byte after this queue's memory (relative to the region).</summary>
    public ulong End { get; }

    public int FreeCount => _freeCount;

    /// <summary>Bytes one queue of this shape needs.</summary>
    public static ulong Footprint(ushort size, int bufferSize)
    {
        ulong avail = Align((ulong)DescTableBytes(size), 64);
        ulong used = Align(avail + (ulong)AvailBytes(size), 4096);
        ulong buf = Align(used + (ulong)UsedBytes(size), 4096);
        return Align(buf + ((ulong)size * (ulong)bufferSize), 4096);
    }

    private static ulong Align(ulong v, ulong a) => (v + a - 1) & ~(a - 1);

    public Span<byte> Buffer(int id) => _mem.Span(_bufOff + ((ulong)id * (ulong)BufferSize), BufferSize);

    private Span<byte> Desc(int id) => _mem.Span(_descOff + ((ulong)id * DescSize), DescSize);

    private Span<byte> AvailRingArea => _mem.Span(_availOff, AvailBytes(Size));

    private Span<byte> UsedArea => _mem.Span(_usedOff, UsedBytes(Size));

    /// <summary>Takes a free descriptor (TX) or returns -1.</summary>
    public int TakeFree() => _freeCount == 0 ? -1 : _free[--_freeCount];

    public void ReturnFree(int id) => _free[_freeCount++] = (ushort)id;

    /// <summary>Makes descriptor <paramref name="id"/> available with <paramref name="length"/> bytes of its buffer.</summary>
    public void Post(int id, int length, bool deviceWritable)
    {
        var d = Desc(id);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(d[DescLen..], (uint)length);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(d[DescFlags..], deviceWritable ? VIRTQ_DESC_F_WRITE : (ushort)0);
        var avail = AvailRingArea;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(avail[(AvailRing + (2 * (_availIdx % Size)))..], (ushort)id);
        _availIdx++;
    }

    /// <summary>Posts a chain (control queue): several buffers, each its own descriptor, linked with NEXT.</summary>
    public void PostChain(ReadOnlySpan<(int Id, int Length, bool Write)> parts)
    {
        for (int i = 0; i < parts.Length; i++)
        {
            var d = Desc(parts[i].Id);
            ushort flags = (ushort)((parts[i].Write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < parts.Length ? VIRTQ_DESC_F_NEXT : 0));
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(d[DescLen..], (uint)parts[i].Length);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(d[DescFlags..], flags);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(d[DescNext..], i + 1 < parts.Length ? (ushort)parts[i + 1].Id : (ushort)0);
        }
        var avail = AvailRingArea;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(avail[(AvailRing + (2 * (_availIdx % Size)))..], (ushort)parts[0].Id);
        _availIdx++;
    }

    /// <summary>Publishes posted entries (release) and tells whether the device wants a kick.</summary>
    public bool Publish()
    {
        var avail = AvailRingArea;
        SharedIndex.Store16(avail, AvailIdx, _availIdx);
        Interlocked.MemoryBarrier(); // the index store must be visible before we read the device's suppression state
        ushort old = _kickedAt;
        _kickedAt = _availIdx;
        if (old == _availIdx)
        {
            return false;
        }
        var used = UsedArea;
        if (_eventIdx)
        {
            ushort availEvent = SharedIndex.Load16(used, AvailEventOffset(Size));
            return SplitRing.NeedEvent(availEvent, _availIdx, old);
        }
        return (SharedIndex.Load16(used, UsedFlags) & VIRTQ_USED_F_NO_NOTIFY) == 0;
    }

    /// <summary>Takes the next used element, if any.</summary>
    public bool TryTakeUsed(out int id, out int length)
    {
        var used = UsedArea;
        ushort idx = SharedIndex.Load16(used, UsedIdx);
        if (idx == _lastUsed)
        {
            id = 0;
            length = 0;
            return false;
        }
        var e = used.Slice(UsedRing + (UsedElemSize * (_lastUsed % Size)), UsedElemSize);
        uint rawId = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(e);
        uint rawLen = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(e[4..]);
        _lastUsed++;
        // The device is not trusted either: an id or length out of range is dropped, not followed.
        id = rawId < Size ? (int)rawId : -1;
        length = rawLen <= (uint)BufferSize ? (int)rawLen : -1;
        return true;
    }

    /// <summary>Asks for an interrupt at the next used entry (EVENT_IDX) or enables/disables them (flags).</summary>
    public void ArmInterrupt(bool enable)
    {
        var avail = AvailRingArea;
        if (_eventIdx)
        {
            SharedIndex.Store16(avail, UsedEventOffset(Size), enable ? _lastUsed : (ushort)(_lastUsed - 1));
        }
        else
        {
            SharedIndex.Store16(avail, AvailFlags, enable ? (ushort)0 : VIRTQ_AVAIL_F_NO_INTERRUPT);
        }
        Interlocked.MemoryBarrier();
    }

    /// <summary>True if used entries are waiting (checked after re-arming to close the race).</summary>
    public bool HasUsed => SharedIndex.Load16(UsedArea, UsedIdx) != _lastUsed;
}
