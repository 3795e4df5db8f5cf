using System.Buffers.Binary;

namespace IfcVdpa.VhostUser;

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

    public static string Name(VhostUserBackendRequest r) => Enum.IsDefined(r) ? r.ToString() : $"back-end request {(uint)r}";

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
                or VhostUserRequest.GET_MAX_MEM_SLOTS or VhostUserRequest.GET_STATUS or VhostUserRequest.SET_LOG_FD:
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
            case VhostUserRequest.SET_LOG_BASE:
                return n == VhostUserWire.LogSize ? null : Expected(r, n, "16");
            case VhostUserRequest.GET_INFLIGHT_FD or VhostUserRequest.SET_INFLIGHT_FD:
                return n is 20 or 24 ? null : Expected(r, n, "24 (or 20 unpadded)");
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
