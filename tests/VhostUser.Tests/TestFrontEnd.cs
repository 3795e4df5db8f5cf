using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// A vhost-user front-end written for the tests (what QEMU / virtio-user do on the wire): sends
/// requests with descriptors in one sendmsg, reads replies and checks their framing.
/// </summary>
public sealed class TestFrontEnd : IDisposable
{
    public const uint V1 = VhostUserWire.FlagVersion;
    public const uint NeedReply = VhostUserWire.FlagNeedReply;

    public TestFrontEnd(UnixSocket socket) => Socket = socket;

    public UnixSocket Socket { get; }

    /// <summary>Flags on every request (NEED_REPLY once REPLY_ACK is negotiated, like QEMU).</summary>
    public uint DefaultFlags { get; set; } = V1;

    public void SendRaw(uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default, int? sizeField = null)
    {
        var buf = new byte[12 + payload.Length];
        VhostUserCodec.WriteHeader(buf, request, flags, sizeField ?? payload.Length);
        payload.CopyTo(buf.AsSpan(12));
        Socket.Send(buf, fds);
    }

    public void Send(VhostUserRequest r, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default) =>
        SendRaw((uint)r, DefaultFlags, payload, fds);

    /// <summary>Reads one reply; asserts flags 0x5 and the request code.</summary>
    public byte[] ReadReply(VhostUserRequest r, int timeoutMs = 5000)
    {
        var fds = new List<SafeFd>();
        var h = new byte[12];
        Socket.ReceiveExact(h, fds, timeoutMs);
        var (req, flags, size) = VhostUserCodec.ReadHeader(h);
        Assert.Equal((uint)r, req);
        Assert.Equal(0x5u, flags);
        var p = new byte[size];
        Socket.ReceiveExact(p, fds, timeoutMs);
        Assert.Empty(fds);
        return p;
    }

    public ulong GetU64(VhostUserRequest r)
    {
        SendRaw((uint)r, V1, []);
        var p = ReadReply(r);
        Assert.Equal(8, p.Length);
        return BinaryPrimitives.ReadUInt64LittleEndian(p);
    }

    /// <summary>Sends a request and, when <see cref="DefaultFlags"/> asks for a reply, returns the ack (0 = ok).</summary>
    public ulong? Request(VhostUserRequest r, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        Send(r, payload, fds);
        if ((DefaultFlags & NeedReply) == 0)
        {
            return null;
        }
        var p = ReadReply(r);
        Assert.Equal(8, p.Length);
        return BinaryPrimitives.ReadUInt64LittleEndian(p);
    }

    public ulong? SetU64(VhostUserRequest r, ulong v, ReadOnlySpan<int> fds = default)
    {
        var p = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, v);
        return Request(r, p, fds);
    }

    public ulong? SetState(VhostUserRequest r, uint index, uint num)
    {
        var p = new byte[8];
        new VringState(index, num).Write(p);
        return Request(r, p);
    }

    public uint GetVringBase(uint index)
    {
        var p = new byte[8];
        new VringState(index, 0).Write(p);
        SendRaw((uint)VhostUserRequest.GET_VRING_BASE, V1, p);
        var r = ReadReply(VhostUserRequest.GET_VRING_BASE);
        var st = VringState.Read(r);
        Assert.Equal(index, st.Index);
        return st.Num;
    }

    public ulong? SetVringAddr(uint index, ulong desc, ulong avail, ulong used, uint flags = 0)
    {
        var p = new byte[40];
        new VringAddr(index, flags, desc, used, avail, 0).Write(p);
        return Request(VhostUserRequest.SET_VRING_ADDR, p);
    }

    public ulong? SetMemTable(IReadOnlyList<MemoryRegionDesc> regions, ReadOnlySpan<int> fds, uint? countField = null)
    {
        var p = new byte[8 + (32 * regions.Count)];
        BinaryPrimitives.WriteUInt32LittleEndian(p, countField ?? (uint)regions.Count);
        for (int i = 0; i < regions.Count; i++)
        {
            regions[i].Write(p.AsSpan(8 + (32 * i)));
        }
        return Request(VhostUserRequest.SET_MEM_TABLE, p, fds);
    }

    public ulong? AddMemReg(MemoryRegionDesc d, int fd)
    {
        var p = new byte[40];
        d.Write(p.AsSpan(8));
        return Request(VhostUserRequest.ADD_MEM_REG, p, [fd]);
    }

    public ulong? RemMemReg(MemoryRegionDesc d)
    {
        var p = new byte[40];
        d.Write(p.AsSpan(8));
        return Request(VhostUserRequest.REM_MEM_REG, p);
    }

    /// <summary>True once the back-end has closed the connection (EOF within the timeout).</summary>
    public bool WaitClosed(int timeoutMs = 5000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        var buf = new byte[256];
        var fds = new List<SafeFd>();
        while (Environment.TickCount64 < deadline)
        {
            if (!Poll.WaitReadable(Socket.Fd, 100))
            {
                continue;
            }
            if (Socket.Receive(buf, fds, out _) == 0)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Negotiates like QEMU: features, protocol features, owner.</summary>
    public ulong Negotiate(ulong protocol = VhostUserProtocolFeature.Supported, ulong? features = null, bool replyAck = true)
    {
        ulong offered = GetU64(VhostUserRequest.GET_FEATURES);
        ulong proto = GetU64(VhostUserRequest.GET_PROTOCOL_FEATURES);
        // The live-migration bits come on top when the device can log / announce (not negotiated unless asked for).
        Assert.Equal(VhostUserProtocolFeature.Supported, proto & ~VhostUserProtocolFeature.Migration);
        SetU64(VhostUserRequest.SET_PROTOCOL_FEATURES, protocol & proto);
        if (replyAck && (protocol & (1UL << VhostUserProtocolFeature.REPLY_ACK)) != 0)
        {
            DefaultFlags = V1 | NeedReply;
        }
        Assert.Equal(0UL, SetU64(VhostUserRequest.SET_OWNER, 0) ?? 0);
        ulong f = features ?? offered;
        Assert.Equal(0UL, SetU64(VhostUserRequest.SET_FEATURES, f) ?? 0);
        return offered;
    }

    public void Dispose() => Socket.Dispose();
}
