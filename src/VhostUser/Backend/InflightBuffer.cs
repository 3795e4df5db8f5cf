using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The inflight I/O tracking buffer (INFLIGHT_SHMFD): created here for GET_INFLIGHT_FD (a sealed memfd the
/// front-end keeps across back-end restarts) and mapped from the front-end's fd for SET_INFLIGHT_FD. Split-ring
/// layout of <see cref="VhostInflight"/>: one 64-byte aligned region per queue. Everything in a SET is
/// hostile: the queue count against the device's rings, the queue size against the device's maximum, the size
/// against what the layout needs, offset and size against the file (fstat) and against wrap-around, and the
/// file must be sealed against shrinking (a truncation under the device's writes would be SIGBUS).
/// </summary>
public sealed class InflightBuffer : IDisposable
{
    /// <summary>Largest buffer taken (64 queues of 32768 descriptors need 32 MiB).</summary>
    public const ulong MaxSize = 64UL << 20;

    /// <summary>The struct on the wire: u64 mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size (QEMU pads it to 24).</summary>
    public const int WireSize = 24;

    private readonly MappedMemory _mapping;

    private InflightBuffer(MappedMemory mapping, ulong offset, int queues, int queueSize)
    {
        _mapping = mapping;
        Offset = offset;
        Queues = queues;
        QueueSize = queueSize;
    }

    public int Queues { get; }

    public int QueueSize { get; }

    /// <summary>Where the buffer starts in the file (mmap_offset).</summary>
    public ulong Offset { get; }

    /// <summary>Bytes the layout needs (and the buffer holds at least).</summary>
    public ulong Size => VhostInflight.Size(Queues, QueueSize);

    /// <summary>The memfd of a buffer created here (what GET_INFLIGHT_FD hands out), else null.</summary>
    public SafeFd? Fd => _mapping.Fd;

    /// <summary>Queue <paramref name="q"/>'s region.</summary>
    public MemorySlice Region(int q)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(q);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(q, Queues);
        ulong per = VhostInflight.QueueRegionSize(QueueSize);
        return _mapping.All.Slice(Offset % 4096 + ((ulong)q * per), per);
    }

    /// <summary>Reads the wire struct (20 or 24 bytes, checked by the codec).</summary>
    public static (ulong Size, ulong Offset, ushort Queues, ushort QueueSize) Read(ReadOnlySpan<byte> p) =>
        (BinaryPrimitives.ReadUInt64LittleEndian(p), BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
         BinaryPrimitives.ReadUInt16LittleEndian(p[16..]), BinaryPrimitives.ReadUInt16LittleEndian(p[18..]));

    /// <summary>The wire struct for a GET_INFLIGHT_FD reply.</summary>
    public void Write(Span<byte> p)
    {
        p[..WireSize].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(p, Size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], Offset);
        BinaryPrimitives.WriteUInt16LittleEndian(p[16..], (ushort)Queues);
        BinaryPrimitives.WriteUInt16LittleEndian(p[18..], (ushort)QueueSize);
    }

    private static void CheckShape(int queues, int queueSize, int maxQueues, int maxQueueSize)
    {
        if (queues < 1 || queues > maxQueues)
        {
            throw new VhostUserRequestException($"inflight buffer for {queues} queues (the device has {maxQueues})");
        }
        if (queueSize < 1 || queueSize > maxQueueSize || (queueSize & (queueSize - 1)) != 0)
        {
            throw new VhostUserRequestException($"inflight buffer for queues of {queueSize} descriptors (a power of two up to {maxQueueSize})");
        }
    }

    /// <summary>GET_INFLIGHT_FD: a zeroed, sealed memfd laid out for <paramref name="queues"/> queues of <paramref name="queueSize"/>.</summary>
    public static InflightBuffer Create(int queues, int queueSize, int maxQueues, int maxQueueSize)
    {
        CheckShape(queues, queueSize, maxQueues, maxQueueSize);
        ulong size = VhostInflight.Size(queues, queueSize);
        try
        {
            return new InflightBuffer(MappedMemory.CreateShared("vhost-inflight", size), 0, queues, queueSize);
        }
        catch (IOException e)
        {
            throw new VhostUserRequestException($"cannot create the inflight buffer: {e.Message}");
        }
    }

    /// <summary>SET_INFLIGHT_FD: validates the front-end's buffer against the device and its file, and maps it.</summary>
    public static InflightBuffer Map(SafeFd fd, ulong size, ulong offset, int queues, int queueSize, int maxQueues, int maxQueueSize)
    {
        ArgumentNullException.ThrowIfNull(fd);
        CheckShape(queues, queueSize, maxQueues, maxQueueSize);
        ulong need = VhostInflight.Size(queues, queueSize);
        if (size < need || size > MaxSize)
        {
            throw new VhostUserRequestException($"inflight buffer of 0x{size:x} bytes: {queues} queues of {queueSize} need 0x{need:x} (at most 0x{MaxSize:x})");
        }
        var st = SharedMemoryFile.Check(fd, offset, size, "inflight buffer", "inflight");
        ulong start = offset & ~4095UL;
        ulong length = ((offset - start) + need + 4095) & ~4095UL;
        if (start + length > st.Size)
        {
            length = st.Size - start; // the last page is partly file: map only what the file holds
        }
        try
        {
            return new InflightBuffer(MappedMemory.MapFd(fd.Fd, length, start), offset, queues, queueSize);
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new VhostUserRequestException($"cannot map the inflight buffer: {e.Message}");
        }
    }

    public void Dispose() => _mapping.Dispose();
}
