using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;

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

/// <summary>One received vhost-user message: header fields, the exact payload and the descriptors it carried.</summary>
public sealed class VhostUserMessage : IDisposable
{
    public VhostUserMessage(VhostUserRequest request, uint flags, byte[] payload, List<SafeFd> fds)
    {
        Request = request;
        Flags = flags;
        Payload = payload;
        Fds = fds;
    }

    public VhostUserRequest Request { get; }

    public uint Flags { get; }

    public byte[] Payload { get; }

    /// <summary>Descriptors received with the message; owned here until taken with <see cref="TakeFd"/>.</summary>
    public List<SafeFd> Fds { get; }

    public bool NeedReply => (Flags & VhostUserWire.FlagNeedReply) != 0;

    public ulong U64 => BinaryPrimitives.ReadUInt64LittleEndian(Payload);

    public VringState State => VringState.Read(Payload);

    /// <summary>Transfers ownership of descriptor <paramref name="i"/> to the caller.</summary>
    public SafeFd TakeFd(int i)
    {
        var fd = Fds[i];
        Fds[i] = new SafeFd(-1, ownsHandle: false);
        return fd;
    }

    /// <summary>Closes every descriptor not taken.</summary>
    public void Dispose()
    {
        foreach (var fd in Fds)
        {
            fd.Dispose();
        }
        Fds.Clear();
    }

    public override string ToString() => $"{VhostUserCodec.Name(Request)} (flags 0x{Flags:x}, {Payload.Length} bytes, {Fds.Count} fds)";
}

/// <summary>
/// Pure message rules: header layout and checks, the payload size and descriptor count each request
/// must have. No I/O, so every rule is unit-testable.
/// </summary>
public static class VhostUserCodec
{
    public static void WriteHeader(Span<byte> h, uint request, uint flags, int size)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(h, request);
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(h[8..], (uint)size);
    }

    public static (uint Request, uint Flags, uint Size) ReadHeader(ReadOnlySpan<byte> h) => (
        BinaryPrimitives.ReadUInt32LittleEndian(h), BinaryPrimitives.ReadUInt32LittleEndian(h[4..]),
        BinaryPrimitives.ReadUInt32LittleEndian(h[8..]));

    public static string Name(VhostUserRequest r) => Enum.IsDefined(r) ? r.ToString() : $"request {(uint)r}";

    /// <summary>
    /// Header checks that make the stream untrustworthy when they fail (the connection is closed):
    /// version 1, no REPLY bit on a request, a payload no larger than <see cref="VhostUserWire.MaxPayload"/>.
    /// </summary>
    public static string? CheckHeader(uint flags, uint size)
    {
        if ((flags & VhostUserWire.FlagVersionMask) != VhostUserWire.FlagVersion)
        {
            return $"bad version in flags 0x{flags:x} (must be 1)";
        }
        if ((flags & VhostUserWire.FlagReply) != 0)
        {
            return $"a request with the REPLY flag (flags 0x{flags:x})";
        }
        if ((flags & ~(VhostUserWire.FlagVersionMask | VhostUserWire.FlagReply | VhostUserWire.FlagNeedReply)) != 0)
        {
            return $"unknown flag bits 0x{flags:x}";
        }
        if (size > VhostUserWire.MaxPayload)
        {
            return $"payload of {size} bytes exceeds the {VhostUserWire.MaxPayload}-byte limit";
        }
        return null;
    }

    /// <summary>Checks the payload size of a known request; null when it is right.</summary>
    public static string? CheckPayload(VhostUserRequest r, ReadOnlySpan<byte> p)
    {
        int n = p.Length;
        switch (r)
        {
            case VhostUserRequest.GET_FEATURES or VhostUserRequest.SET_OWNER or VhostUserRequest.RESET_OWNER
                or VhostUserRequest.GET_PROTOCOL_FEATURES or VhostUserRequest.GET_QUEUE_NUM
                or VhostUserRequest.SET_BACKEND_REQ_FD or VhostUserRequest.RESET_DEVICE
                or VhostUserRequest.GET_MAX_MEM_SLOTS or VhostUserRequest.GET_STATUS:
                // Some front-ends send a zero u64 with getters; accept 0 or 8 bytes.
                return n is 0 or VhostUserWire.U64Size ? null : Expected(r, n, "0 (or 8)");
            case VhostUserRequest.SET_FEATURES or VhostUserRequest.SET_PROTOCOL_FEATURES
                or VhostUserRequest.SET_VRING_KICK or VhostUserRequest.SET_VRING_CALL or VhostUserRequest.SET_VRING_ERR
                or VhostUserRequest.SEND_RARP or VhostUserRequest.NET_SET_MTU or VhostUserRequest.SET_STATUS:
                return n == VhostUserWire.U64Size ? null : Expected(r, n, "8");
            case VhostUserRequest.SET_VRING_NUM or VhostUserRequest.SET_VRING_BASE
                or VhostUserRequest.GET_VRING_BASE or VhostUserRequest.SET_VRING_ENABLE:
                return n == VhostUserWire.VringStateSize ? null : Expected(r, n, "8");
            case VhostUserRequest.SET_VRING_ADDR:
                return n == VhostUserWire.VringAddrSize ? null : Expected(r, n, "40");
            case VhostUserRequest.ADD_MEM_REG or VhostUserRequest.REM_MEM_REG:
                return n == VhostUserWire.SingleRegionSize ? null : Expected(r, n, "40");
            case VhostUserRequest.SET_MEM_TABLE:
            {
                if (n < 8)
                {
                    return Expected(r, n, "at least 8");
                }
                uint regions = BinaryPrimitives.ReadUInt32LittleEndian(p);
                if (regions == 0 || regions > VhostUserWire.MaxMemTableRegions)
                {
                    return $"SET_MEM_TABLE with {regions} regions (1..{VhostUserWire.MaxMemTableRegions} allowed)";
                }
                int want = 8 + ((int)regions * VhostUserWire.RegionSize);
                return n == want ? null : Expected(r, n, $"{want} for {regions} regions");
            }
            case VhostUserRequest.GET_CONFIG or VhostUserRequest.SET_CONFIG:
            {
                if (n < VhostUserWire.ConfigHeaderSize)
                {
                    return Expected(r, n, "at least 12");
                }
                uint size = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
                if (size == 0 || size > VhostUserWire.MaxConfigSize)
                {
                    return $"{r} of {size} config bytes (1..{VhostUserWire.MaxConfigSize} allowed)";
                }
                int want = VhostUserWire.ConfigHeaderSize + (int)size;
                return n == want ? null : Expected(r, n, $"{want} for {size} config bytes");
            }
            default:
                return null;
        }
    }

    /// <summary>How many descriptors a request must carry: (min, max).</summary>
    public static (int Min, int Max) ExpectedFds(VhostUserRequest r, ReadOnlySpan<byte> p)
    {
        switch (r)
        {
            case VhostUserRequest.SET_MEM_TABLE:
            {
                int regions = p.Length >= 4 ? (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(p), 64u) : 0;
                return (regions, regions);
            }
            case VhostUserRequest.ADD_MEM_REG or VhostUserRequest.SET_BACKEND_REQ_FD
                or VhostUserRequest.SET_LOG_BASE or VhostUserRequest.SET_LOG_FD or VhostUserRequest.SET_INFLIGHT_FD:
                return (1, 1);
            case VhostUserRequest.REM_MEM_REG:
                // Should carry none; QEMU sends the region's fd, which is closed unused.
                return (0, 1);
            case VhostUserRequest.SET_VRING_KICK or VhostUserRequest.SET_VRING_CALL or VhostUserRequest.SET_VRING_ERR:
            {
                bool noFd = p.Length >= 8 && (BinaryPrimitives.ReadUInt64LittleEndian(p) & VhostUserWire.VringNoFdMask) != 0;
                return noFd ? (0, 0) : (1, 1);
            }
            default:
                return (0, 0);
        }
    }

    private static string Expected(VhostUserRequest r, int n, string want) => $"{r} payload is {n} bytes, expected {want}";
}
