using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.VhostUser.Frontend;

/// <summary>
/// The front-end's side of the wire: sends requests, reads and checks their replies
/// (<see cref="VhostUserReplyReader"/>), negotiates features and protocol features, and gives the
/// requests a typed form. It knows nothing of the device it serves. The caller serialises requests, so
/// every reply read belongs to the request just sent. A reply that breaks the rules makes the stream
/// untrustworthy: the connection is shut down and every later request fails with the first reason
/// (<see cref="IOException"/>); a refused request (REPLY_ACK non-zero) is an <see cref="InvalidOperationException"/>
/// and leaves the connection usable.
/// </summary>
internal sealed class VhostUserClient : IDisposable
{
    private readonly UnixSocket _socket;
    private readonly string _path;
    private readonly VhostUserFrontendOptions _options;
    private volatile string? _broken;

    public VhostUserClient(UnixSocket socket, string path, VhostUserFrontendOptions options)
    {
        _socket = socket;
        _path = path;
        _options = options;
    }

    public string Name => _options.Name;

    /// <summary>Virtio features the back-end offered (GET_FEATURES).</summary>
    public ulong BackendFeatures { get; private set; }

    /// <summary>Protocol features in use (SET_PROTOCOL_FEATURES).</summary>
    public ulong ProtocolFeatures { get; private set; }

    /// <summary>Queue pairs the back-end has (GET_QUEUE_NUM, 1 without MQ).</summary>
    public int BackendPairs { get; private set; } = 1;

    /// <summary>Memory regions the back-end takes (GET_MAX_MEM_SLOTS, or SET_MEM_TABLE's 8).</summary>
    public int MaxMemSlots { get; private set; } = VhostUserWire.MaxMemTableRegions;

    /// <summary>True when config space is read from the back-end (GET_CONFIG).</summary>
    public bool ConfigFromBackend { get; private set; }

    /// <summary>Our end of the back-end channel (SET_BACKEND_REQ_FD), when BACKEND_REQ was negotiated.</summary>
    public VhostUserConnection? Channel { get; private set; }

    /// <summary>Why the connection is unusable, or null while it works.</summary>
    public string? BrokenReason => _broken;

    public bool IsBroken => _broken is not null;

    public bool HasProtocol(int bit) => (ProtocolFeatures & (1UL << bit)) != 0;

    private void Log(string s) => _options.Log($"{Name}: {s}");

    // ---- negotiation ----

    /// <summary>
    /// GET_FEATURES, the protocol features (what both sides support and <see cref="VhostUserFrontendOptions.ProtocolFeatures"/>
    /// allows), the queue and memory slot counts, the back-end channel, SET_OWNER, and whether GET_CONFIG
    /// works (probed with <paramref name="configBytes"/> bytes).
    /// </summary>
    public void Negotiate(ulong supportedProtocol, int configBytes)
    {
        BackendFeatures = GetU64(VhostUserRequest.GET_FEATURES);
        if (Has(BackendFeatures, F_PROTOCOL_FEATURES))
        {
            ulong offered = GetU64(VhostUserRequest.GET_PROTOCOL_FEATURES);
            ulong p = offered & _options.ProtocolFeatures & supportedProtocol;
            if ((p & (1UL << VhostUserProtocolFeature.BACKEND_REQ)) == 0)
            {
                p &= ~(1UL << VhostUserProtocolFeature.BACKEND_SEND_FD);
            }
            if ((p & (1UL << VhostUserProtocolFeature.BACKEND_SEND_FD)) == 0)
            {
                p &= ~(1UL << VhostUserProtocolFeature.HOST_NOTIFIER);
            }
            // Sent without NEED_REPLY: REPLY_ACK is not in force before this message is handled.
            SendU64(VhostUserRequest.SET_PROTOCOL_FEATURES, p, expectAck: false);
            ProtocolFeatures = p;
            Log($"protocol features offered 0x{offered:x}, using 0x{p:x}");
        }
        if (HasProtocol(VhostUserProtocolFeature.MQ))
        {
            ulong n = GetU64(VhostUserRequest.GET_QUEUE_NUM);
            if (n is 0 or > VhostUserWire.MaxRingSize)
            {
                throw Broken($"GET_QUEUE_NUM answered {n} queue pairs");
            }
            BackendPairs = (int)n;
        }
        if (HasProtocol(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS))
        {
            ulong n = GetU64(VhostUserRequest.GET_MAX_MEM_SLOTS);
            if (n == 0)
            {
                throw Broken("GET_MAX_MEM_SLOTS answered 0 slots");
            }
            MaxMemSlots = (int)Math.Min(n, 512);
        }
        if (HasProtocol(VhostUserProtocolFeature.BACKEND_REQ))
        {
            var (mine, theirs) = UnixSocket.CreatePair();
            try
            {
                Request(VhostUserRequest.SET_BACKEND_REQ_FD, [], [theirs.Fd]);
            }
            catch
            {
                mine.Dispose();
                throw;
            }
            finally
            {
                theirs.Dispose();
            }
            Channel = new VhostUserConnection(mine, _options.ReplyTimeoutMs);
        }
        Request(VhostUserRequest.SET_OWNER, []);
        if (HasProtocol(VhostUserProtocolFeature.CONFIG))
        {
            Span<byte> probe = stackalloc byte[configBytes];
            ConfigFromBackend = TryGetConfig(0, probe);
            if (!ConfigFromBackend)
            {
                Log("the back-end negotiated CONFIG but does not serve GET_CONFIG: config space is synthesized");
            }
        }
        Log($"connected to {_path}: features 0x{BackendFeatures:x}, {BackendPairs} queue pair(s) at the back-end, " +
            $"memory by {(HasProtocol(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS) ? $"ADD_MEM_REG ({MaxMemSlots} slots)" : "SET_MEM_TABLE")}, " +
            $"config {(ConfigFromBackend ? "from the back-end" : "synthesized")}");
    }

    // ---- typed requests ----

    /// <summary>SET_VRING_NUM, SET_VRING_BASE or SET_VRING_ENABLE.</summary>
    public void SetVringState(VhostUserRequest r, int q, uint num)
    {
        Span<byte> st = stackalloc byte[VhostUserWire.VringStateSize];
        new VringState((uint)q, num).Write(st);
        Request(r, st);
    }

    /// <summary>
    /// SET_VRING_ADDR with addresses in this process's address space; with <paramref name="logUsedAt"/> the
    /// ring's used writes are logged (VHOST_VRING_F_LOG, log_guest_addr = the used ring's guest-physical address).
    /// </summary>
    public void SetVringAddr(int q, ulong desc, ulong used, ulong avail, ulong? logUsedAt = null)
    {
        Span<byte> addr = stackalloc byte[VhostUserWire.VringAddrSize];
        new VringAddr((uint)q, logUsedAt is null ? 0 : VhostUserWire.VringFlagLog, desc, used, avail, logUsedAt ?? 0).Write(addr);
        Request(VhostUserRequest.SET_VRING_ADDR, addr);
    }

    /// <summary>
    /// SET_LOG_BASE with the log's memfd (LOG_SHMFD): u64 mmap_size, u64 mmap_offset. The back-end answers
    /// once it maps the log (sent without NEED_REPLY: the reply is the request's own); non-zero is a refusal.
    /// </summary>
    public void SetLogBase(ulong size, ulong offset, SafeFd fd)
    {
        Span<byte> p = stackalloc byte[VhostUserWire.LogSize];
        BinaryPrimitives.WriteUInt64LittleEndian(p, size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], offset);
        Send(VhostUserRequest.SET_LOG_BASE, VhostUserWire.FlagVersion, p, [fd.Fd]);
        ulong v = BinaryPrimitives.ReadUInt64LittleEndian(ReadReply(VhostUserRequest.SET_LOG_BASE, VhostUserWire.U64Size));
        if (v != 0)
        {
            throw new InvalidOperationException($"{Name}: the vhost-user back-end refused SET_LOG_BASE of 0x{size:x} bytes (reply {v})");
        }
    }

    /// <summary>SET_VRING_KICK or SET_VRING_CALL with an eventfd.</summary>
    public void SetVringFd(VhostUserRequest r, int q, EventFd fd) => SendU64(r, (ulong)q, [fd.Fd]);

    /// <summary>GET_VRING_BASE: stops the ring; the base it answers (checked to be for ring <paramref name="q"/>).</summary>
    public uint GetVringBase(int q)
    {
        Span<byte> st = stackalloc byte[VhostUserWire.VringStateSize];
        new VringState((uint)q, 0).Write(st);
        Send(VhostUserRequest.GET_VRING_BASE, VhostUserWire.FlagVersion, st, default);
        var r = VringState.Read(ReadReply(VhostUserRequest.GET_VRING_BASE, VhostUserWire.VringStateSize));
        return r.Index == (uint)q ? r.Num : throw Broken($"GET_VRING_BASE for ring {q} answered ring {r.Index}");
    }

    /// <summary>ADD_MEM_REG (with the region's descriptor) or REM_MEM_REG.</summary>
    public void SendRegion(VhostUserRequest r, MemoryRegionDesc d, SafeFd fd)
    {
        Span<byte> p = stackalloc byte[VhostUserWire.SingleRegionSize];
        p[..8].Clear();
        d.Write(p[8..]);
        Request(r, p, r == VhostUserRequest.ADD_MEM_REG ? [fd.Fd] : default);
    }

    /// <summary>SET_MEM_TABLE: every region with its descriptor.</summary>
    public void SetMemTable(IReadOnlyList<(MemoryRegionDesc Desc, SafeFd Fd)> regions)
    {
        int n = regions.Count;
        var p = new byte[8 + (n * VhostUserWire.RegionSize)];
        BinaryPrimitives.WriteUInt32LittleEndian(p, (uint)n);
        var fds = new int[n];
        for (int i = 0; i < n; i++)
        {
            regions[i].Desc.Write(p.AsSpan(8 + (i * VhostUserWire.RegionSize)));
            fds[i] = regions[i].Fd.Fd;
        }
        Request(VhostUserRequest.SET_MEM_TABLE, p, fds);
    }

    /// <summary>GET_CONFIG; false when the back-end answered with an empty reply (the spec's way to fail).</summary>
    public bool TryGetConfig(uint offset, Span<byte> buffer)
    {
        var p = ConfigPayload(offset, buffer.Length);
        Send(VhostUserRequest.GET_CONFIG, VhostUserWire.FlagVersion, p, default);
        var reply = ReadReply(VhostUserRequest.GET_CONFIG, -1);
        if (reply.Length == 0)
        {
            return false;
        }
        if (reply.Length != p.Length)
        {
            throw Broken($"GET_CONFIG reply has {reply.Length} bytes, expected {p.Length}");
        }
        uint gotOffset = BinaryPrimitives.ReadUInt32LittleEndian(reply);
        uint gotSize = BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(4));
        if (gotOffset != offset || gotSize != (uint)buffer.Length)
        {
            throw Broken($"GET_CONFIG reply is for [{gotOffset}, +{gotSize}), asked [{offset}, +{buffer.Length})");
        }
        reply.AsSpan(VhostUserWire.ConfigHeaderSize).CopyTo(buffer);
        return true;
    }

    /// <summary>SET_CONFIG.</summary>
    public void SetConfig(uint offset, ReadOnlySpan<byte> data)
    {
        var p = ConfigPayload(offset, data.Length);
        data.CopyTo(p.AsSpan(VhostUserWire.ConfigHeaderSize));
        Request(VhostUserRequest.SET_CONFIG, p);
    }

    private static byte[] ConfigPayload(uint offset, int size)
    {
        var p = new byte[VhostUserWire.ConfigHeaderSize + size];
        BinaryPrimitives.WriteUInt32LittleEndian(p, offset);
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), (uint)size);
        return p;
    }

    // ---- the wire ----

    public void ThrowIfBroken()
    {
        if (_broken is { } why)
        {
            throw new IOException($"{Name}: the vhost-user connection to {_path} is broken: {why}");
        }
    }

    /// <summary>Records why the connection is unusable, shuts it down and returns the exception to throw.</summary>
    public IOException Broken(string why)
    {
        _broken ??= why;
        Shutdown();
        Log($"connection broken: {why}");
        return new IOException($"{Name}: vhost-user back-end at {_path}: {why}; the connection is closed");
    }

    /// <summary>Shuts the connection down (the back-end sees the front-end leave); sends nothing.</summary>
    public void Shutdown()
    {
        try
        {
            _socket.Shutdown();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private void Send(VhostUserRequest r, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds)
    {
        ThrowIfBroken();
        var buf = new byte[VhostUserWire.HeaderSize + payload.Length];
        VhostUserCodec.WriteHeader(buf, (uint)r, flags, payload.Length);
        payload.CopyTo(buf.AsSpan(VhostUserWire.HeaderSize));
        try
        {
            _socket.Send(buf, fds);
        }
        catch (IOException e)
        {
            throw Broken($"sending {VhostUserCodec.Name(r)}: {e.Message}");
        }
    }

    /// <summary>
    /// Sends a request that has no reply of its own; with REPLY_ACK it asks for one and a non-zero ack is
    /// an <see cref="InvalidOperationException"/> (the back-end refused; the connection stays usable).
    /// </summary>
    public void Request(VhostUserRequest r, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default, bool expectAck = true)
    {
        bool ack = expectAck && HasProtocol(VhostUserProtocolFeature.REPLY_ACK);
        Send(r, VhostUserWire.FlagVersion | (ack ? VhostUserWire.FlagNeedReply : 0), payload, fds);
        if (!ack)
        {
            return;
        }
        ulong v = BinaryPrimitives.ReadUInt64LittleEndian(ReadReply(r, VhostUserWire.U64Size));
        if (v != 0)
        {
            throw new InvalidOperationException($"{Name}: the vhost-user back-end refused {VhostUserCodec.Name(r)} (REPLY_ACK {v}){Detail(r, payload)}");
        }
    }

    private static string Detail(VhostUserRequest r, ReadOnlySpan<byte> p) => r switch
    {
        VhostUserRequest.SET_FEATURES or VhostUserRequest.NET_SET_MTU or VhostUserRequest.SET_STATUS when p.Length == 8 =>
            $" for 0x{BinaryPrimitives.ReadUInt64LittleEndian(p):x}",
        VhostUserRequest.SET_VRING_KICK or VhostUserRequest.SET_VRING_CALL when p.Length == 8 =>
            $" for ring {BinaryPrimitives.ReadUInt64LittleEndian(p) & VhostUserWire.VringIndexMask}",
        VhostUserRequest.SET_VRING_NUM or VhostUserRequest.SET_VRING_BASE or VhostUserRequest.SET_VRING_ENABLE
            or VhostUserRequest.SET_VRING_ADDR when p.Length >= 8 =>
            $" for ring {BinaryPrimitives.ReadUInt32LittleEndian(p)} (value 0x{BinaryPrimitives.ReadUInt32LittleEndian(p[4..]):x})",
        _ => "",
    };

    public void SendU64(VhostUserRequest r, ulong value, ReadOnlySpan<int> fds = default, bool expectAck = true)
    {
        Span<byte> p = stackalloc byte[VhostUserWire.U64Size];
        BinaryPrimitives.WriteUInt64LittleEndian(p, value);
        Request(r, p, fds, expectAck);
    }

    /// <summary>A getter: no payload, an 8-byte reply.</summary>
    public ulong GetU64(VhostUserRequest r)
    {
        Send(r, VhostUserWire.FlagVersion, [], default);
        return BinaryPrimitives.ReadUInt64LittleEndian(ReadReply(r, VhostUserWire.U64Size));
    }

    /// <summary>The reply to <paramref name="r"/> (see <see cref="VhostUserReplyReader"/>); a bad one breaks the connection.</summary>
    private byte[] ReadReply(VhostUserRequest r, int size)
    {
        try
        {
            return VhostUserReplyReader.Read(_socket, (uint)r, VhostUserCodec.Name(r), size, _options.ReplyTimeoutMs,
                static c => VhostUserCodec.Name((VhostUserRequest)c), "back-end");
        }
        catch (VhostUserReplyException e)
        {
            throw Broken(e.Message);
        }
    }

    public void Dispose()
    {
        Channel?.Dispose();
        _socket.Dispose();
    }
}
