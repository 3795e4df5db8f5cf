using System.Buffers.Binary;
using System.Diagnostics;
using IfcVdpa.Interop.Primitives;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.Fidelity.Tests;

/// <summary>
/// Memory the test lays rings and buffers out in, DMA-mapped into one software VF at <see cref="IovaBase"/>
/// (what ifcvf_vdpa.c does with the vhost memory table: IOVA = guest physical).
/// </summary>
public sealed class GuestMemory : IDisposable
{
    public const ulong IovaBase = 0x4000_0000;
    private readonly MappedMemory _mem;
    private ulong _next = IovaBase;

    public GuestMemory(ulong bytes = 16 << 20) => _mem = MappedMemory.Allocate(bytes);

    public MemorySlice All => _mem.All;

    public ulong Alloc(ulong bytes, ulong align = 4096)
    {
        _next = (_next + align - 1) & ~(align - 1);
        ulong at = _next;
        _next += bytes;
        return _next <= IovaBase + _mem.Length ? at : throw new InvalidOperationException("test memory exhausted");
    }

    public Span<byte> Span(ulong iova, int length) => _mem.Span(iova - IovaBase, length);

    public void Dispose() => _mem.Dispose();
}

/// <summary>
/// The driver side of one split virtqueue, single-descriptor chains only (descriptor id = ring slot): what a
/// guest's virtio-net driver leaves in memory for the device. The device is programmed by DPDK's code.
/// </summary>
public sealed class GuestQueue
{
    private readonly GuestMemory _mem;

    public GuestQueue(GuestMemory mem, ushort size, uint bufferBytes = 2048)
    {
        _mem = mem;
        Size = size;
        Desc = mem.Alloc((ulong)DescTableBytes(size));
        Avail = mem.Alloc((ulong)AvailBytes(size));
        Used = mem.Alloc((ulong)UsedBytes(size));
        BufferBytes = bufferBytes;
        Buffers = mem.Alloc((ulong)size * bufferBytes);
    }

    public ushort Size { get; }

    public ulong Desc { get; }

    public ulong Avail { get; }

    public ulong Used { get; }

    public ulong Buffers { get; }

    public uint BufferBytes { get; }

    /// <summary>The driver's avail index (next slot to fill).</summary>
    public ushort AvailIdx { get; private set; }

    /// <summary>The next used index the driver will read.</summary>
    public ushort UsedSeen { get; private set; }

    /// <summary>Rings as a driver leaves them when the device (re)starts at <paramref name="index"/>.</summary>
    public void ResetAt(ushort index)
    {
        _mem.Span(Desc, DescTableBytes(Size)).Clear();
        _mem.Span(Avail, AvailBytes(Size)).Clear();
        _mem.Span(Used, UsedBytes(Size)).Clear();
        AvailIdx = UsedSeen = index;
        _nextDesc = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(_mem.Span(Avail + AvailIdxOffset, 2), index);
        BinaryPrimitives.WriteUInt16LittleEndian(_mem.Span(Used + UsedIdxOffset, 2), index);
    }

    private const ulong AvailIdxOffset = (ulong)Virtio.SplitRing.AvailIdx;
    private const ulong UsedIdxOffset = (ulong)Virtio.SplitRing.UsedIdx;

    public ulong BufferOf(ushort id) => Buffers + ((ulong)id * BufferBytes);

    /// <summary>Makes one buffer available: device-readable <paramref name="bytes"/>, or a writable buffer of the slot's size.</summary>
    public ushort Post(ReadOnlySpan<byte> bytes, bool writable)
    {
        ushort id = (ushort)(AvailIdx % Size);
        ulong buf = BufferOf(id);
        uint len = writable ? BufferBytes : (uint)bytes.Length;
        if (!writable)
        {
            bytes.CopyTo(_mem.Span(buf, bytes.Length));
        }
        var d = _mem.Span(Desc + ((ulong)id * DescSize), DescSize);
        BinaryPrimitives.WriteUInt64LittleEndian(d[DescAddr..], buf);
        BinaryPrimitives.WriteUInt32LittleEndian(d[DescLen..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(d[DescFlags..], writable ? VIRTQ_DESC_F_WRITE : (ushort)0);
        BinaryPrimitives.WriteUInt16LittleEndian(d[DescNext..], 0);
        BinaryPrimitives.WriteUInt16LittleEndian(_mem.Span(Avail + (ulong)AvailRing + (2UL * id), 2), id);
        AvailIdx++;
        Thread.MemoryBarrier();
        BinaryPrimitives.WriteUInt16LittleEndian(_mem.Span(Avail + AvailIdxOffset, 2), AvailIdx);
        return id;
    }

    private ushort _nextDesc;

    /// <summary>
    /// Makes one descriptor chain available (a virtio-blk request: readable header and data, then writable
    /// data and status): the descriptors are consecutive, taken from a rolling index; returns the head (the
    /// chain's id). The caller keeps fewer chains outstanding than the table has room for.
    /// </summary>
    public ushort PostChain(ReadOnlySpan<(ulong Addr, uint Len, bool Writable)> segs)
    {
        if (segs.Length == 0 || segs.Length > Size)
        {
            throw new ArgumentException("a chain needs 1 to queue-size descriptors");
        }
        if (_nextDesc + segs.Length > Size)
        {
            _nextDesc = 0;
        }
        ushort head = _nextDesc;
        for (int i = 0; i < segs.Length; i++)
        {
            ushort at = (ushort)(head + i);
            var d = _mem.Span(Desc + ((ulong)at * DescSize), DescSize);
            BinaryPrimitives.WriteUInt64LittleEndian(d[DescAddr..], segs[i].Addr);
            BinaryPrimitives.WriteUInt32LittleEndian(d[DescLen..], segs[i].Len);
            ushort flags = (ushort)((segs[i].Writable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < segs.Length ? VIRTQ_DESC_F_NEXT : 0));
            BinaryPrimitives.WriteUInt16LittleEndian(d[DescFlags..], flags);
            BinaryPrimitives.WriteUInt16LittleEndian(d[DescNext..], (ushort)(at + 1));
        }
        _nextDesc = (ushort)(head + segs.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(_mem.Span(Avail + (ulong)AvailRing + (2UL * (ulong)(AvailIdx % Size)), 2), head);
        AvailIdx++;
        Thread.MemoryBarrier();
        BinaryPrimitives.WriteUInt16LittleEndian(_mem.Span(Avail + AvailIdxOffset, 2), AvailIdx);
        return head;
    }

    /// <summary>The device's used index (volatile read of guest memory).</summary>
    public ushort DeviceUsedIdx
    {
        get
        {
            Thread.MemoryBarrier();
            return BinaryPrimitives.ReadUInt16LittleEndian(_mem.Span(Used + UsedIdxOffset, 2));
        }
    }

    /// <summary>The next used element, if the device published one.</summary>
    public bool TryTakeUsed(out ushort id, out uint len)
    {
        id = 0;
        len = 0;
        if (DeviceUsedIdx == UsedSeen)
        {
            return false;
        }
        var e = _mem.Span(Used + (ulong)UsedRing + ((ulong)(UsedSeen % Size) * UsedElemSize), UsedElemSize);
        id = (ushort)BinaryPrimitives.ReadUInt32LittleEndian(e);
        len = BinaryPrimitives.ReadUInt32LittleEndian(e[4..]);
        UsedSeen++;
        return true;
    }

    /// <summary>Waits (bounded) until the device's used index reaches <paramref name="index"/>.</summary>
    public bool WaitUsed(ushort index, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while ((short)(DeviceUsedIdx - index) < 0)
        {
            if (sw.Elapsed > timeout)
            {
                return false;
            }
            Thread.Sleep(1); // polling guest memory: the device raises no event the test could wait on here
        }
        return true;
    }

    public byte[] Read(ulong iova, int len) => _mem.Span(iova, len).ToArray();
}
