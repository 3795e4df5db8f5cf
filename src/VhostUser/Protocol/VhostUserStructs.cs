using System.Buffers.Binary;

namespace IfcVdpa.VhostUser;

/// <summary>vhost_vring_state: ring index and a number (size, base, enable flag).</summary>
public readonly record struct VringState(uint Index, uint Num)
{
    public static VringState Read(ReadOnlySpan<byte> p) =>
        new(BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p[4..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], Num);
    }
}

/// <summary>vhost_vring_addr: front-end virtual addresses of the rings (note: used before avail on the wire).</summary>
public readonly record struct VringAddr(uint Index, uint Flags, ulong Desc, ulong Used, ulong Avail, ulong Log)
{
    public static VringAddr Read(ReadOnlySpan<byte> p) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p[4..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[8..]), BinaryPrimitives.ReadUInt64LittleEndian(p[16..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[24..]), BinaryPrimitives.ReadUInt64LittleEndian(p[32..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], Desc);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], Used);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], Avail);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], Log);
    }
}

/// <summary>vhost_user_memory_region: guest-physical range, its size, the front-end's VA and the fd offset.</summary>
public readonly record struct MemoryRegionDesc(ulong GuestPhysAddr, ulong Size, ulong UserAddr, ulong MmapOffset)
{
    public static MemoryRegionDesc Read(ReadOnlySpan<byte> p) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(p), BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[16..]), BinaryPrimitives.ReadUInt64LittleEndian(p[24..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(p, GuestPhysAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], Size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], UserAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], MmapOffset);
    }
}

/// <summary>
/// vhost_user_vring_area (VRING_HOST_NOTIFIER_MSG on the back-end channel): bits 0-7 of
/// <see cref="IndexFlags"/> are the ring, bit 8 (<see cref="VhostUserWire.VringNoFdMask"/>) means "no fd:
/// remove the notifier"; otherwise the front-end maps <see cref="Size"/> bytes of the attached fd at
/// <see cref="Offset"/> and writes the queue index there instead of kicking.
/// </summary>
public readonly record struct VringArea(ulong IndexFlags, ulong Size, ulong Offset)
{
    public const int WireSize = 24;

    public int Index => (int)(IndexFlags & VhostUserWire.VringIndexMask);

    public bool NoFd => (IndexFlags & VhostUserWire.VringNoFdMask) != 0;

    public static VringArea Read(ReadOnlySpan<byte> p) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(p), BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(p[16..]));

    public void Write(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(p, IndexFlags);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], Size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], Offset);
    }
}

