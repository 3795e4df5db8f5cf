using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser;

/// <summary>Tunables of a session (one front-end connection).</summary>
public sealed record VhostUserSessionOptions
{
    /// <summary>GET_MAX_MEM_SLOTS answer: regions accepted with ADD_MEM_REG.</summary>
    public int MaxMemSlots { get; init; } = 32;

    /// <summary>How long a started message may take to arrive completely.</summary>
    public int PayloadTimeoutMs { get; init; } = 5000;

    /// <summary>
    /// Longest wait for room on the back-end channel for one message: a front-end that leaves its end
    /// unread that long has its channel closed (only the channel; the session carries on).
    /// </summary>
    public int BackendSendTimeoutMs { get; init; } = 1000;

    /// <summary>One line per event (connection, errors, device configured/stopped).</summary>
    public Action<string> Log { get; init; } = _ => { };

    /// <summary>Prefix of every log line (e.g. the socket path).</summary>
    public string Name { get; init; } = "vhost-user";
}

/// <summary>Per-ring state as the front-end described it.</summary>
internal sealed class Vring
{
    public uint Num;
    public VringAddr? Addr;
    public uint Base;
    public EventFd? Kick;
    public bool KickNoFd;
    public EventFd? Call;
    public bool CallSet;
    public SafeFd? Err;
    public bool Enabled;
    public bool Running;

    /// <summary>A host notifier (doorbell page) was offered to the front-end and not yet removed.</summary>
    public bool NotifierOffered;

    public bool Ready => Num != 0 && Addr is not null && (Kick is not null || KickNoFd) && CallSet;
}

/// <summary>
/// The back-end side of one vhost-user connection, bound to an <see cref="IVdpaDevice"/> the way DPDK's
/// ifc driver is: it negotiates, keeps the memory table and ring descriptions, and once the rings are
/// ready (and DRIVER_OK, with STATUS) maps guest memory into the device (IOVA = guest-physical),
/// programs every enabled queue, binds each queue's interrupt to the front-end's call eventfd and relays
/// kicks. Every request is validated first; a bad one is answered with a failed REPLY_ACK when the
/// front-end asked for one, otherwise the connection is closed (what DPDK does), and the device is
/// always left reset with nothing mapped when the session ends.
/// </summary>
public sealed class VhostUserSession : IDisposable
{
    private readonly IVdpaDevice _device;
    private readonly VhostUserConnection _conn;
    private readonly VhostUserSessionOptions _options;
    private readonly Vring[] _rings;
    private readonly int _pairs;
    private readonly ulong _deviceFeatures;
    private readonly List<EventFd> _retiredCalls = [];
    private GuestMemoryTable _memory = new();
    private KickRelay? _relay;
    private UnixSocket? _backendChannel;
    private readonly Lock _backendLock = new(); // the config callback sends from the device's interrupt thread
    private readonly List<UnixSocket> _retiredBackendChannels = []; // shut down, closed by the session thread
    private int _retiredBackendChannelCount;
    private bool _owner;
    private bool _featuresSet;
    private ulong _acked;
    private ulong _protocol;
    private byte _status;
    private bool _configured;
    private readonly List<(ulong Iova, ulong Size)> _dmaMapped = [];
    private bool _disposed;

    // Host notifiers: messages decided while handling a request, sent once its reply is out; the acks
    // asked for are read by Run as they arrive (never waited for: see FlushHostNotifiers).
    private readonly List<HostNotifierOp> _notifierOps = [];
    private readonly Queue<(int Ring, bool Remove)> _notifierAcks = new();
    private bool _notifierAcksAbandoned;
    private bool _notifierRefusalLogged;
    private bool _stateFallbackLogged;

    /// <summary>Most acks outstanding before the front-end is taken not to answer and none are asked for.</summary>
    private const int MaxOutstandingNotifierAcks = 64;

    private readonly record struct HostNotifierOp(int Ring, bool Remove, SafeFd? Fd, ulong Offset, ulong Size);

    public VhostUserSession(IVdpaDevice device, VhostUserConnection connection, VhostUserSessionOptions? options = null)
    {
        _device = device;
        _conn = connection;
        _options = options ?? new VhostUserSessionOptions();
        _pairs = Math.Max(1, device.NumVqs / 2);
        _rings = new Vring[_pairs * 2];
        for (int i = 0; i < _rings.Length; i++)
        {
            _rings[i] = new Vring();
        }
        _deviceFeatures = device.GetDeviceFeatures();
    }

    /// <summary>Virtio features offered: the device's without ACCESS_PLATFORM (rings use GPAs), plus bit 30.</summary>
    public ulong OfferedFeatures =>
        (_deviceFeatures & ~VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM)) | VirtioFeature.Bit(VirtioFeature.F_PROTOCOL_FEATURES);

    public ulong AckedFeatures => _acked;

    public ulong ProtocolFeatures => _protocol;

    /// <summary>True while the device is programmed and running for this front-end.</summary>
    public bool Configured => _configured;

    public int QueuePairs => _pairs;

    public GuestMemoryTable Memory => _memory;

    /// <summary>Kicks relayed to the device so far (0 when no relay ran).</summary>
    public long RelayedKicks => _relay?.Kicks ?? 0;

    /// <summary>Messages handled, and those rejected.</summary>
    public long Messages { get; private set; }

    public long Errors { get; private set; }

    private bool Has(int protocolFeature) => (_protocol & (1UL << protocolFeature)) != 0;

    private bool AckedBit(int feature) => (_acked & (1UL << feature)) != 0;

    private void Log(string s) => _options.Log($"{_options.Name}: {s}");

    /// <summary>
    /// Serves the connection until the front-end disconnects, a fatal protocol error happens or
    /// <paramref name="stop"/> becomes readable. <paramref name="extra"/> (e.g. the listening socket) is
    /// polled too and <paramref name="onExtra"/> is called when it is readable.
    /// </summary>
    public void Run(EventFd? stop = null, int extra = -1, Action? onExtra = null)
    {
        var poll = new PollSet();
        var fds = new List<int> { _conn.Socket.Fd };
        int stopAt = -1, extraAt = -1;
        if (stop is not null)
        {
            stopAt = fds.Count;
            fds.Add(stop.Fd);
        }
        if (extra >= 0)
        {
            extraAt = fds.Count;
            fds.Add(extra);
        }
        int backendAt = fds.Count; // the back-end channel, polled only while acks are outstanding
        int polledBackend = -1;
        poll.Reset(fds.ToArray());
        try
        {
            while (true)
            {
                CloseRetiredBackendChannels();
                int wantBackend = _notifierAcks.Count > 0 && _backendChannel is { } ch ? ch.Fd : -1;
                if (wantBackend != polledBackend)
                {
                    polledBackend = wantBackend;
                    var set = fds.ToArray();
                    poll.Reset(wantBackend >= 0 ? [.. set, wantBackend] : set);
                }
                poll.Wait(-1);
                if (stopAt >= 0 && poll.IsReadable(stopAt))
                {
                    Log("stopping");
                    return;
                }
                if (polledBackend >= 0 && (poll.IsReadable(backendAt) || poll.IsBroken(backendAt)))
                {
                    ReadNotifierAck();
                }
                bool connReady = poll.IsReadable(0) || poll.IsBroken(0);
                if (!connReady)
                {
                    // Only another connection attempt is pending. The connection is looked at first, so a
                    // front-end that closed just before its successor connected is not mistaken for busy.
                    if (extraAt >= 0 && poll.IsReadable(extraAt))
                    {
                        onExtra?.Invoke();
                    }
                    continue;
                }
                VhostUserMessage? m;
                try
                {
                    m = _conn.Receive();
                }
                catch (VhostUserProtocolException e)
                {
                    Errors++;
                    Log($"protocol error, closing the connection: {e.Message}");
                    return;
                }
                catch (IOException e)
                {
                    Log($"connection error: {e.Message}");
                    return;
                }
                if (m is null)
                {
                    Log("front-end disconnected");
                    return;
                }
                bool keep;
                try
                {
                    keep = Process(m);
                }
                catch (VhostUserProtocolException e)
                {
                    Errors++;
                    Log($"closing the connection: {e.Message}");
                    return;
                }
                if (!keep)
                {
                    return;
                }
            }
        }
        finally
        {
            Teardown();
            _conn.Dispose(); // the front-end sees the connection close
        }
    }

    /// <summary>
    /// Handles one message: validate sizes and descriptors, dispatch, reply or ack. Returns false when the
    /// connection must be closed.
    /// </summary>
    public bool Process(VhostUserMessage m)
    {
        bool keep = ProcessRequest(m);
        // After the reply: the front-end may be blocked reading it and only then service its back-end
        // channel (QEMU does so from its main loop).
        FlushHostNotifiers(askAcks: keep);
        return keep;
    }

    private bool ProcessRequest(VhostUserMessage m)
    {
        using var _ = m;
        Messages++;
        string? error = VhostUserCodec.CheckPayload(m.Request, m.Payload);
        if (error is null)
        {
            var (min, max) = VhostUserCodec.ExpectedFds(m.Request, m.Payload);
            if (m.Fds.Count < min || m.Fds.Count > max)
            {
                error = min == max
                    ? $"carries {m.Fds.Count} descriptors, expected {min}"
                    : $"carries {m.Fds.Count} descriptors, expected {min}..{max}";
            }
        }
        if (error is null && !_owner && NeedsOwner(m.Request))
        {
            error = "sent before SET_OWNER";
        }
        bool replied = false;
        if (error is null)
        {
            try
            {
                replied = Dispatch(m);
            }
            catch (VhostUserRequestException e)
            {
                error = e.Message;
            }
            catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or NotSupportedException or TimeoutException)
            {
                error = $"device error: {e.Message}";
            }
        }
        if (error is not null)
        {
            Errors++;
            Log($"{VhostUserCodec.Name(m.Request)}: {error}");
        }
        if (replied)
        {
            return true;
        }
        if (m.NeedReply && Has(VhostUserProtocolFeature.REPLY_ACK) && !HasOwnReply(m.Request))
        {
            try
            {
                _conn.ReplyU64(m.Request, error is null ? 0UL : 1UL);
            }
            catch (IOException e)
            {
                Log($"cannot send REPLY_ACK: {e.Message}");
                return false;
            }
            return true;
        }
        if (error is not null)
        {
            Log("closing the connection (the front-end asked for no ack, so it cannot learn of the failure otherwise)");
            return false;
        }
        return true;
    }

    private static bool HasOwnReply(VhostUserRequest r) => r is VhostUserRequest.GET_FEATURES or VhostUserRequest.GET_PROTOCOL_FEATURES
        or VhostUserRequest.GET_VRING_BASE or VhostUserRequest.GET_QUEUE_NUM or VhostUserRequest.GET_CONFIG
        or VhostUserRequest.GET_STATUS or VhostUserRequest.GET_MAX_MEM_SLOTS;

    private static bool NeedsOwner(VhostUserRequest r) => r is VhostUserRequest.SET_FEATURES or VhostUserRequest.SET_MEM_TABLE
        or VhostUserRequest.ADD_MEM_REG or VhostUserRequest.REM_MEM_REG or VhostUserRequest.SET_VRING_NUM
        or VhostUserRequest.SET_VRING_ADDR or VhostUserRequest.SET_VRING_BASE or VhostUserRequest.GET_VRING_BASE
        or VhostUserRequest.SET_VRING_KICK or VhostUserRequest.SET_VRING_CALL or VhostUserRequest.SET_VRING_ERR
        or VhostUserRequest.SET_VRING_ENABLE or VhostUserRequest.SET_STATUS or VhostUserRequest.SET_CONFIG
        or VhostUserRequest.SEND_RARP or VhostUserRequest.NET_SET_MTU;

    /// <summary>Runs one valid-looking request; true if it sent its own reply.</summary>
    private bool Dispatch(VhostUserMessage m)
    {
        var p = m.Payload;
        switch (m.Request)
        {
            case VhostUserRequest.GET_FEATURES:
                _conn.ReplyU64(m.Request, OfferedFeatures);
                return true;
            case VhostUserRequest.SET_FEATURES:
                SetFeatures(m.U64);
                return false;
            case VhostUserRequest.SET_OWNER:
                if (_owner)
                {
                    throw new VhostUserRequestException("the session already has an owner");
                }
                _owner = true;
                return false;
            case VhostUserRequest.RESET_OWNER or VhostUserRequest.RESET_DEVICE:
                ResetState();
                return false;
            case VhostUserRequest.SET_MEM_TABLE:
                SetMemTable(m);
                return false;
            case VhostUserRequest.ADD_MEM_REG:
                AddMemReg(m);
                return false;
            case VhostUserRequest.REM_MEM_REG:
                RemMemReg(MemoryRegionDesc.Read(p.AsSpan(8)));
                return false;
            case VhostUserRequest.GET_MAX_MEM_SLOTS:
                _conn.ReplyU64(m.Request, (ulong)_options.MaxMemSlots);
                return true;
            case VhostUserRequest.SET_VRING_NUM:
                SetVringNum(m.State);
                return false;
            case VhostUserRequest.SET_VRING_ADDR:
                SetVringAddr(VringAddr.Read(p));
                return false;
            case VhostUserRequest.SET_VRING_BASE:
                SetVringBase(m.State);
                return false;
            case VhostUserRequest.GET_VRING_BASE:
            {
                var st = GetVringBase(m.State);
                Span<byte> r = stackalloc byte[8];
                st.Write(r);
                _conn.Reply(m.Request, r);
                return true;
            }
            case VhostUserRequest.SET_VRING_KICK:
                SetVringKick(m);
                return false;
            case VhostUserRequest.SET_VRING_CALL:
                SetVringCall(m);
                return false;
            case VhostUserRequest.SET_VRING_ERR:
            {
                var (q, fd) = RingFd(m, "error");
                _rings[q].Err?.Dispose();
                _rings[q].Err = fd;
                return false;
            }
            case VhostUserRequest.GET_PROTOCOL_FEATURES:
                _conn.ReplyU64(m.Request, VhostUserProtocolFeature.Supported);
                return true;
            case VhostUserRequest.SET_PROTOCOL_FEATURES:
            {
                ulong v = m.U64;
                if ((v & ~VhostUserProtocolFeature.Supported) != 0)
                {
                    throw new VhostUserRequestException($"protocol features 0x{v:x} include unoffered bits 0x{v & ~VhostUserProtocolFeature.Supported:x}");
                }
                _protocol = v;
                return false;
            }
            case VhostUserRequest.GET_QUEUE_NUM:
                _conn.ReplyU64(m.Request, (ulong)_pairs);
                return true;
            case VhostUserRequest.SET_VRING_ENABLE:
                SetVringEnable(m.State);
                return false;
            case VhostUserRequest.SEND_RARP:
                Log($"SEND_RARP for {FormatMac(p.AsSpan(0, 6))} (the guest announces itself: GUEST_ANNOUNCE)");
                return false;
            case VhostUserRequest.NET_SET_MTU:
                SetMtu(m.U64);
                return false;
            case VhostUserRequest.SET_BACKEND_REQ_FD:
            {
                var fd = m.TakeFd(0);
                UnixSocket s;
                try
                {
                    s = UnixSocket.Adopt(fd);
                }
                catch (IOException e)
                {
                    fd.Dispose();
                    throw new VhostUserRequestException(e.Message);
                }
                lock (_backendLock)
                {
                    _backendChannel?.Dispose();
                    _backendChannel = s;
                }
                _notifierAcks.Clear(); // acks asked on the old channel cannot arrive on the new one
                return false;
            }
            case VhostUserRequest.GET_CONFIG:
                GetConfig(m);
                return true;
            case VhostUserRequest.SET_CONFIG:
                SetConfig(p);
                return false;
            case VhostUserRequest.GET_STATUS:
            {
                byte s = _status;
                if (_configured && (_device.GetStatus() & VirtioStatus.NEEDS_RESET) != 0)
                {
                    s |= VirtioStatus.NEEDS_RESET;
                }
                _conn.ReplyU64(m.Request, s);
                return true;
            }
            case VhostUserRequest.SET_STATUS:
                SetStatus(m.U64);
                return false;
            default:
                throw new VhostUserRequestException(Enum.IsDefined(m.Request)
                    ? "not supported by this back-end (its protocol feature is not offered)"
                    : "unknown request");
        }
    }

    // ---- negotiation ----

    private void SetFeatures(ulong v)
    {
        if ((v & ~OfferedFeatures) != 0)
        {
            throw new VhostUserRequestException($"features 0x{v:x} include unoffered bits 0x{v & ~OfferedFeatures:x}");
        }
        bool changed = _featuresSet && v != _acked;
        _acked = v;
        _featuresSet = true;
        if (!AckedBit(VirtioFeature.F_PROTOCOL_FEATURES))
        {
            // Without bit 30 rings start enabled (vhost-user.rst "Ring states").
            foreach (var r in _rings)
            {
                r.Enabled = true;
            }
        }
        if (changed && _configured)
        {
            Log("features changed while running: restarting the device");
            Deconfigure();
        }
        Reevaluate();
    }

    private void SetStatus(ulong v)
    {
        if (v > 0xFF)
        {
            throw new VhostUserRequestException($"status 0x{v:x} is not a status byte");
        }
        byte s = (byte)v;
        if ((s & VirtioStatus.FEATURES_OK) != 0 && !_featuresSet)
        {
            s &= unchecked((byte)~VirtioStatus.FEATURES_OK); // nothing negotiated: FEATURES_OK does not stick
        }
        _status = s;
        if (s == 0 || (s & VirtioStatus.DRIVER_OK) == 0)
        {
            Deconfigure();
        }
        Reevaluate();
    }

    private void SetMtu(ulong mtu)
    {
        if (mtu is < 68 or > 65535)
        {
            throw new VhostUserRequestException($"MTU {mtu} outside 68..65535");
        }
        if ((_deviceFeatures & VirtioFeature.Bit(VirtioFeature.NET_F_MTU)) != 0 && _device.GetConfigSize() >= 12)
        {
            Span<byte> b = stackalloc byte[2];
            _device.GetConfig(10, b);
            ushort max = BinaryPrimitives.ReadUInt16LittleEndian(b);
            if (max != 0 && mtu > max)
            {
                throw new VhostUserRequestException($"MTU {mtu} exceeds the device's {max}");
            }
        }
        Log($"front-end MTU {mtu}");
    }

    private void GetConfig(VhostUserMessage m)
    {
        var p = m.Payload;
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(p);
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(4));
        CheckConfigRange(offset, size);
        var reply = new byte[p.Length];
        p.AsSpan(0, VhostUserWire.ConfigHeaderSize).CopyTo(reply);
        _device.GetConfig(offset, reply.AsSpan(VhostUserWire.ConfigHeaderSize, (int)size));
        _conn.Reply(m.Request, reply);
    }

    private void SetConfig(byte[] p)
    {
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(p);
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(4));
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(8));
        if (flags > 1)
        {
            throw new VhostUserRequestException($"config flags 0x{flags:x} unknown");
        }
        CheckConfigRange(offset, size);
        _device.SetConfig(offset, p.AsSpan(VhostUserWire.ConfigHeaderSize, (int)size));
    }

    private void CheckConfigRange(uint offset, uint size)
    {
        uint max = _device.GetConfigSize();
        if (offset > max || size > max - offset)
        {
            throw new VhostUserRequestException($"config range [{offset}, +{size}) outside the {max}-byte config space");
        }
    }

    // ---- memory ----

    private void SetMemTable(VhostUserMessage m)
    {
        var p = m.Payload;
        int n = (int)BinaryPrimitives.ReadUInt32LittleEndian(p);
        var descs = new MemoryRegionDesc[n];
        for (int i = 0; i < n; i++)
        {
            descs[i] = MemoryRegionDesc.Read(p.AsSpan(8 + (i * VhostUserWire.RegionSize)));
        }
        if (_memory.Count > 0 && _memory.SameLayout(descs))
        {
            Log("SET_MEM_TABLE unchanged: kept the current mapping");
            return;
        }
        var table = new GuestMemoryTable();
        try
        {
            for (int i = 0; i < n; i++)
            {
                table.Add(GuestMemoryRegion.Map(descs[i], m.Fds[i]));
            }
        }
        catch
        {
            table.Dispose();
            throw;
        }
        bool wasConfigured = _configured;
        Deconfigure();
        _memory.Dispose();
        _memory = table;
        Log($"memory table: {Describe(table)}{(wasConfigured ? " (device restarted)" : "")}");
        Reevaluate();
    }

    private void AddMemReg(VhostUserMessage m)
    {
        var d = MemoryRegionDesc.Read(m.Payload.AsSpan(8));
        if (_memory.FindIdentical(d) is { } same)
        {
            // Another of the front-end's vhost devices (one per queue pair in QEMU) adds the same region.
            same.References++;
            Log($"region GPA 0x{d.GuestPhysAddr:x} size 0x{d.Size:x} added again ({same.References} references)");
            return;
        }
        if (_memory.Count >= _options.MaxMemSlots)
        {
            throw new VhostUserRequestException($"all {_options.MaxMemSlots} memory slots are in use");
        }
        var r = GuestMemoryRegion.Map(d, m.Fds[0]);
        try
        {
            _memory.Add(r);
        }
        catch
        {
            r.Dispose();
            throw;
        }
        if (_configured)
        {
            MapForDevice(r);
        }
        Log($"added region GPA 0x{d.GuestPhysAddr:x} size 0x{d.Size:x}");
        Reevaluate();
    }

    private void RemMemReg(MemoryRegionDesc d)
    {
        if (_memory.Regions.All(x => x.GuestPhysAddr != d.GuestPhysAddr || x.UserAddr != d.UserAddr || x.Size != d.Size))
        {
            throw new VhostUserRequestException($"no region at GPA 0x{d.GuestPhysAddr:x} VA 0x{d.UserAddr:x} size 0x{d.Size:x}");
        }
        var existing = _memory.Regions.First(x => x.GuestPhysAddr == d.GuestPhysAddr && x.UserAddr == d.UserAddr && x.Size == d.Size);
        if (existing.References > 1)
        {
            existing.References--;
            Log($"region GPA 0x{d.GuestPhysAddr:x} size 0x{d.Size:x} still referenced {existing.References} time(s)");
            return;
        }
        // The device may be using the region: stop it, remove, restart with what is left.
        Deconfigure();
        _memory.Remove(d)!.Dispose();
        Log($"removed region GPA 0x{d.GuestPhysAddr:x} size 0x{d.Size:x}");
        Reevaluate();
    }

    private static string Describe(GuestMemoryTable t) => string.Join(", ",
        t.Regions.Select(r => $"GPA 0x{r.GuestPhysAddr:x} VA 0x{r.UserAddr:x} size 0x{r.Size:x} offset 0x{r.Desc.MmapOffset:x}"));

    // ---- rings ----

    private int RingIndex(uint index)
    {
        if (index >= _rings.Length)
        {
            throw new VhostUserRequestException($"ring {index} out of range (the device has {_rings.Length} rings)");
        }
        return (int)index;
    }

    private void SetVringNum(VringState s)
    {
        int q = RingIndex(s.Index);
        uint max = Math.Min(VhostUserWire.MaxRingSize, Math.Max((uint)_device.GetVqNumMax(), 1));
        if (s.Num == 0 || (s.Num & (s.Num - 1)) != 0 || s.Num > max)
        {
            throw new VhostUserRequestException($"ring {q} size {s.Num} invalid (a power of two, 1..{max})");
        }
        StopIfRunning(q);
        _rings[q].Num = s.Num;
        Reevaluate();
    }

    private void SetVringAddr(VringAddr a)
    {
        int q = RingIndex(a.Index);
        if ((a.Flags & VhostUserWire.VringFlagLog) != 0)
        {
            throw new VhostUserRequestException($"ring {q}: dirty logging requested but not supported");
        }
        if (a.Flags != 0)
        {
            throw new VhostUserRequestException($"ring {q}: unknown address flags 0x{a.Flags:x}");
        }
        if ((a.Desc & 15) != 0 || (a.Avail & 1) != 0 || (a.Used & 3) != 0)
        {
            throw new VhostUserRequestException(
                $"ring {q}: misaligned rings (desc 0x{a.Desc:x} needs 16, avail 0x{a.Avail:x} 2, used 0x{a.Used:x} 4)");
        }
        if (_memory.Count > 0)
        {
            TranslateRing(q, a, Math.Max(_rings[q].Num, 1));
        }
        StopIfRunning(q);
        _rings[q].Addr = a;
        Reevaluate();
    }

    private void SetVringBase(VringState s)
    {
        int q = RingIndex(s.Index);
        bool packed = AckedBit(VirtioFeature.F_RING_PACKED);
        if (!packed && s.Num > 0xFFFF)
        {
            throw new VhostUserRequestException($"ring {q} base 0x{s.Num:x} beyond a split ring's 16-bit index");
        }
        if (packed && _rings[q].Num != 0 && ((s.Num & 0x7FFF) >= _rings[q].Num || (s.Num >> 16 != 0 && ((s.Num >> 16) & 0x7FFF) >= _rings[q].Num)))
        {
            throw new VhostUserRequestException($"ring {q} packed base 0x{s.Num:x} beyond the {_rings[q].Num}-entry ring");
        }
        StopIfRunning(q);
        _rings[q].Base = s.Num;
        Reevaluate();
    }

    private VringState GetVringBase(VringState s)
    {
        int q = RingIndex(s.Index);
        var r = _rings[q];
        bool wasRunning = r.Running;
        if (wasRunning)
        {
            StopQueue(q);
        }
        // The ring is stopped: forget its addresses and kick (stale rings must not look ready after a reboot).
        r.Addr = null;
        r.Kick?.Dispose();
        r.Kick = null;
        r.KickNoFd = false;
        Log(wasRunning ? $"ring {q} stopped at {r.Base}" : $"ring {q}: base {r.Base} reported (already stopped)");
        return new VringState((uint)q, r.Base);
    }

    private (int Q, SafeFd? Fd) RingFd(VhostUserMessage m, string what)
    {
        ulong v = m.U64;
        if ((v & ~(VhostUserWire.VringIndexMask | VhostUserWire.VringNoFdMask)) != 0)
        {
            throw new VhostUserRequestException($"{what} payload 0x{v:x} has unknown bits");
        }
        int q = RingIndex((uint)(v & VhostUserWire.VringIndexMask));
        if ((v & VhostUserWire.VringNoFdMask) != 0)
        {
            return (q, null);
        }
        if (!FdKind.IsEventFd(m.Fds[0].Fd))
        {
            throw new VhostUserRequestException($"ring {q} {what} descriptor is not an eventfd ({FdKind.Target(m.Fds[0].Fd)})");
        }
        return (q, m.TakeFd(0));
    }

    private void SetVringKick(VhostUserMessage m)
    {
        var (q, fd) = RingFd(m, "kick");
        StopIfRunning(q);
        var r = _rings[q];
        r.Kick?.Dispose();
        r.Kick = fd is null ? null : EventFd.Adopt(fd);
        r.KickNoFd = fd is null;
        if (!AckedBit(VirtioFeature.F_PROTOCOL_FEATURES))
        {
            r.Enabled = true;
        }
        Reevaluate();
    }

    private void SetVringCall(VhostUserMessage m)
    {
        var (q, fd) = RingFd(m, "call");
        var r = _rings[q];
        var old = r.Call;
        r.Call = fd is null ? null : EventFd.Adopt(fd);
        r.CallSet = true;
        if (r.Running)
        {
            // Re-bind the interrupt at once (QEMU swaps irqfd and its masked notifier at runtime).
            _device.SetVqCallback(q, r.Call is null ? null : VdpaCallback.ForEventFd(r.Call));
        }
        if (old is not null)
        {
            Retire(old);
        }
        Reevaluate();
    }

    private void SetVringEnable(VringState s)
    {
        // QEMU sends SET_VRING_ENABLE(0) during init, before SET_FEATURES: accept it then; once features
        // are set, the request needs bit 30.
        if (_featuresSet && !AckedBit(VirtioFeature.F_PROTOCOL_FEATURES))
        {
            throw new VhostUserRequestException("SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES (bit 30) negotiated");
        }
        int q = RingIndex(s.Index);
        if (s.Num > 1)
        {
            throw new VhostUserRequestException($"ring {q} enable value {s.Num} is not 0 or 1");
        }
        _rings[q].Enabled = s.Num == 1;
        Reevaluate();
    }

    /// <summary>
    /// A replaced call eventfd may still be signalled by an interrupt that raced the re-bind, so it is
    /// closed only at the next device stop (or when many pile up, the oldest).
    /// </summary>
    private void Retire(EventFd old)
    {
        _retiredCalls.Add(old);
        if (_retiredCalls.Count > 64)
        {
            _retiredCalls[0].Dispose();
            _retiredCalls.RemoveAt(0);
        }
    }

    // ---- binding to the vDPA device ----

    private bool StatusGate => !Has(VhostUserProtocolFeature.STATUS) || (_status & VirtioStatus.DRIVER_OK) != 0;

    private bool ShouldRun(int q) => _rings[q].Ready && _rings[q].Enabled && TryTranslateRing(_rings[q].Addr!.Value, _rings[q].Num, out _);

    private bool ReadyToConfigure() => _featuresSet && _memory.Count > 0 && StatusGate && ShouldRun(0) && ShouldRun(1);

    /// <summary>After every state change: start the device when ready, start/stop individual rings when running.</summary>
    private void Reevaluate()
    {
        if (!_configured)
        {
            if (ReadyToConfigure())
            {
                Configure();
            }
            return;
        }
        bool changed = false;
        for (int q = 0; q < _rings.Length; q++)
        {
            bool should = ShouldRun(q);
            if (should && !_rings[q].Running)
            {
                StartQueue(q);
                Log($"ring {q} started at {_rings[q].Base}");
                changed = true;
            }
            else if (!should && _rings[q].Running)
            {
                StopQueue(q);
                Log($"ring {q} stopped at {_rings[q].Base}");
                changed = true;
            }
        }
        if (changed)
        {
            UpdateRelay();
        }
    }

    private void Configure()
    {
        try
        {
            _device.Reset();
            _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
            ulong toDevice = (_acked & _deviceFeatures) | (_deviceFeatures & VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM));
            _device.SetDriverFeatures(toDevice);
            _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
            if ((_device.GetStatus() & VirtioStatus.FEATURES_OK) == 0)
            {
                throw new VhostUserRequestException($"the device refused features 0x{toDevice:x} (FEATURES_OK not set)");
            }
            foreach (var r in _memory.Regions)
            {
                MapForDevice(r);
            }
            _configured = true;
            int started = 0;
            for (int q = 0; q < _rings.Length; q++)
            {
                if (ShouldRun(q))
                {
                    StartQueue(q);
                    started++;
                }
            }
            if (_backendChannel is not null && Has(VhostUserProtocolFeature.BACKEND_REQ))
            {
                _device.SetConfigCallback(VdpaCallback.ForHandler(SendConfigChange));
            }
            _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
            _relay ??= new KickRelay(_device, _options.Name, Log);
            UpdateRelay();
            Log($"device {_device.Name} running: {started} rings, features 0x{toDevice:x}");
        }
        catch
        {
            Deconfigure();
            throw;
        }
    }

    private void MapForDevice(GuestMemoryRegion r)
    {
        _device.DmaMap(r.GuestPhysAddr, r.Memory, writable: true);
        _dmaMapped.Add((r.GuestPhysAddr, r.Size));
    }

    private bool TryTranslateRing(VringAddr a, uint num, out (ulong Desc, ulong Avail, ulong Used) gpa) =>
        TranslateRingCore(0, a, num, out gpa) is null;

    private (ulong Desc, ulong Avail, ulong Used) TranslateRing(int q, VringAddr a, uint num)
    {
        string? error = TranslateRingCore(q, a, num, out var gpa);
        return error is null ? gpa : throw new VhostUserRequestException(error);
    }

    /// <summary>Front-end VAs of a ring -> guest-physical; each part must lie wholly inside one region.</summary>
    private string? TranslateRingCore(int q, VringAddr a, uint num, out (ulong Desc, ulong Avail, ulong Used) gpa)
    {
        bool eventIdx = AckedBit(VirtioFeature.F_RING_EVENT_IDX);
        ulong descLen = 16UL * num;
        // Split: avail and used rings; packed: the 4-byte driver and device event suppression areas.
        ulong availLen = Packed ? 4 : 4 + (2UL * num) + (eventIdx ? 2UL : 0);
        ulong usedLen = Packed ? 4 : 4 + (8UL * num) + (eventIdx ? 2UL : 0);
        gpa = default;
        if (!_memory.TryVaToGpa(a.Desc, descLen, out ulong desc))
        {
            return $"ring {q} descriptor table VA 0x{a.Desc:x} (+{descLen}) is outside guest memory";
        }
        if (!_memory.TryVaToGpa(a.Avail, availLen, out ulong avail))
        {
            return $"ring {q} avail ring VA 0x{a.Avail:x} (+{availLen}) is outside guest memory";
        }
        if (!_memory.TryVaToGpa(a.Used, usedLen, out ulong used))
        {
            return $"ring {q} used ring VA 0x{a.Used:x} (+{usedLen}) is outside guest memory";
        }
        gpa = (desc, avail, used);
        return null;
    }

    private bool Packed => AckedBit(VirtioFeature.F_RING_PACKED);

    private void StartQueue(int q)
    {
        var r = _rings[q];
        var (desc, avail, used) = TranslateRing(q, r.Addr!.Value, r.Num);
        VdpaVqState state;
        if (Packed)
        {
            state = VringBase.Decode(r.Base, packed: true)!.Value;
        }
        else
        {
            ushort availBase = (ushort)r.Base;
            ushort usedIdx = TryReadUsedIdx(used, out ushort published) ? published : availBase;
            if (usedIdx != availBase)
            {
                // As DPDK does: in-flight buffers are lost, resume from the used index (TX resent, RX dropped).
                Log($"ring {q}: base {availBase} differs from used->idx {usedIdx}; resuming from {usedIdx}");
                availBase = usedIdx;
            }
            state = new VdpaVqState(availBase, usedIdx);
        }
        _device.SetVqNum(q, r.Num);
        _device.SetVqAddress(q, desc, avail, used);
        _device.SetVqState(q, state);
        _device.SetVqCallback(q, r.Call is null ? null : VdpaCallback.ForEventFd(r.Call));
        _device.SetVqReady(q, true);
        r.Running = true;
        OfferHostNotifier(q);
    }

    /// <summary>used->idx of a split ring whose used area is at guest-physical <paramref name="usedGpa"/>.</summary>
    private bool TryReadUsedIdx(ulong usedGpa, out ushort idx)
    {
        idx = 0;
        if (!_memory.TryGpaSpan(usedGpa + 2, 2, out var span))
        {
            return false;
        }
        idx = SharedIndex.Load16(span, 0);
        return true;
    }

    /// <summary>The ring base as GET_VRING_BASE reports it, from the device's saved state.</summary>
    private uint SavedBase(int q)
    {
        try
        {
            var st = _device.GetVqState(q);
            return VringBase.Encode(st, Packed);
        }
        catch (VdpaNotSupportedException e)
        {
            // A device that cannot report its ring state (a plain virtio function without the IFC LM block):
            // as vhost-vdpa does for a device it could not suspend, resume from what the device published,
            // used->idx in guest memory (in-flight buffers are lost: TX resent, RX dropped).
            uint fallback = _rings[q].Base;
            if (!Packed && _rings[q].Addr is { } a && TranslateRingCore(q, a, _rings[q].Num, out var gpa) is null &&
                TryReadUsedIdx(gpa.Used, out ushort published))
            {
                fallback = published;
            }
            if (!_stateFallbackLogged)
            {
                _stateFallbackLogged = true;
                Log($"ring state not readable ({e.Message}); reporting the used index from guest memory as the base");
            }
            return fallback;
        }
    }

    private void StopQueue(int q)
    {
        var r = _rings[q];
        r.Running = false;
        RemoveHostNotifier(q);
        UpdateRelay();
        _device.SetVqReady(q, false);
        r.Base = SavedBase(q);
        _device.SetVqCallback(q, null);
    }

    private void StopIfRunning(int q)
    {
        if (_rings[q].Running)
        {
            StopQueue(q);
        }
    }

    private void UpdateRelay()
    {
        var set = new List<(int, EventFd)>();
        for (int q = 0; q < _rings.Length; q++)
        {
            if (_rings[q].Running && _rings[q].Kick is { } k)
            {
                set.Add((q, k));
            }
        }
        _relay?.Update([.. set]);
    }

    /// <summary>Stops every ring (saving its base), resets the device and removes every DMA mapping.</summary>
    private void Deconfigure()
    {
        if (!_configured)
        {
            return;
        }
        _configured = false;
        _relay?.Update([]);
        for (int q = 0; q < _rings.Length; q++)
        {
            if (_rings[q].Running)
            {
                _rings[q].Running = false;
                RemoveHostNotifier(q);
                try
                {
                    _device.SetVqReady(q, false);
                    _rings[q].Base = SavedBase(q);
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    // whatever the device says, the teardown goes on: reset and DMA unmap must still happen
                    Log($"ring {q}: stop failed: {e.Message}");
                }
            }
        }
        ResetDevice();
        Log($"device {_device.Name} stopped");
    }

    private void ResetDevice()
    {
        try
        {
            _device.SetConfigCallback(null);
            _device.Reset();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Log($"device reset failed: {e.Message}");
        }
        foreach (var (iova, size) in _dmaMapped)
        {
            try
            {
                _device.DmaUnmap(iova, size);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Log($"DMA unmap of 0x{iova:x} failed: {e.Message}");
            }
        }
        _dmaMapped.Clear();
        foreach (var c in _retiredCalls)
        {
            c.Dispose();
        }
        _retiredCalls.Clear();
    }

    // ---- host notifiers (VHOST_USER_PROTOCOL_F_HOST_NOTIFIER) ----

    /// <summary>
    /// Why ring <paramref name="q"/>'s doorbell cannot be handed to the front-end for direct mapping, or
    /// null when it can: there must be a descriptor to map, the doorbell must start a page (QEMU maps
    /// exactly one host page at the offset and the guest writes at the page's start) and the queue's
    /// notify area must fill that page (a smaller notify_off_multiplier would put other queues'
    /// doorbells on it).
    /// </summary>
    public static string? HostNotifierRefusal(int q, VdpaNotificationArea area, ulong pageSize)
    {
        if (area.MapFd is null || area.MapFd.IsInvalid || area.MapFd.IsClosed)
        {
            return $"the device offers no mappable descriptor for its doorbells (BAR{area.Bar}): a software device cannot trap stores to shared memory, and a VFIO BAR must be mmappable";
        }
        if (area.MapOffset % pageSize != 0)
        {
            return $"ring {q}'s doorbell (BAR{area.Bar} offset 0x{area.Offset:x}) does not start a {pageSize}-byte page";
        }
        if (area.Size < pageSize)
        {
            return $"ring {q}'s notify area is {area.Size} bytes (notify_off_multiplier): a {pageSize}-byte page would hold other rings' doorbells";
        }
        return null;
    }

    private static ulong HostPageSize => (ulong)Environment.SystemPageSize;

    /// <summary>Ring <paramref name="q"/> just started: queue its doorbell page for the front-end, if it can have it.</summary>
    private void OfferHostNotifier(int q)
    {
        if (!Has(VhostUserProtocolFeature.HOST_NOTIFIER) || _rings[q].NotifierOffered)
        {
            return;
        }
        string? why;
        VdpaNotificationArea area = default;
        if (!Has(VhostUserProtocolFeature.BACKEND_REQ) || !Has(VhostUserProtocolFeature.BACKEND_SEND_FD))
        {
            why = "HOST_NOTIFIER was negotiated without BACKEND_REQ and BACKEND_SEND_FD";
        }
        else if (_backendChannel is null)
        {
            why = "the front-end gave no back-end channel (SET_BACKEND_REQ_FD)";
        }
        else
        {
            try
            {
                area = _device.GetVqNotification(q);
                why = HostNotifierRefusal(q, area, HostPageSize);
            }
            catch (Exception e) when (e is NotSupportedException or InvalidOperationException or ArgumentException)
            {
                why = $"the device has no notify area: {e.Message}";
            }
        }
        if (why is not null)
        {
            if (!_notifierRefusalLogged)
            {
                _notifierRefusalLogged = true;
                Log($"host notifiers not offered for {_device.Name}: {why}; kicks go through the eventfd relay");
            }
            return;
        }
        _rings[q].NotifierOffered = true;
        _notifierOps.Add(new HostNotifierOp(q, Remove: false, area.MapFd, area.MapOffset, HostPageSize));
    }

    /// <summary>Ring <paramref name="q"/> stops (or the device resets): take its doorbell page back.</summary>
    private void RemoveHostNotifier(int q)
    {
        if (!_rings[q].NotifierOffered)
        {
            return;
        }
        _rings[q].NotifierOffered = false;
        _notifierOps.Add(new HostNotifierOp(q, Remove: true, null, 0, 0));
    }

    /// <summary>
    /// Sends the queued VRING_HOST_NOTIFIER_MSGs, in order, once the reply to the current request is out.
    /// NEED_REPLY is set when REPLY_ACK is negotiated, but the ack is never waited for here: QEMU
    /// services its back-end channel from the main loop, which may be blocked waiting for our reply to
    /// its next request, so a synchronous wait could deadlock (DPDK waits, and relies on the front-end).
    /// <see cref="Run"/> reads the acks as they arrive and logs refusals; the kick relay stays in place
    /// either way, so a refused or ignored notifier costs nothing but the direct path.
    /// </summary>
    private void FlushHostNotifiers(bool askAcks)
    {
        if (_notifierOps.Count == 0)
        {
            return;
        }
        foreach (var op in _notifierOps)
        {
            SendHostNotifier(op, askAcks);
        }
        _notifierOps.Clear();
    }

    private void SendHostNotifier(HostNotifierOp op, bool askAcks)
    {
        bool needReply = askAcks && Has(VhostUserProtocolFeature.REPLY_ACK) && !_notifierAcksAbandoned;
        var msg = new byte[VhostUserWire.HeaderSize + VringArea.WireSize];
        VhostUserCodec.WriteHeader(msg, (uint)VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG,
            VhostUserWire.FlagVersion | (needReply ? VhostUserWire.FlagNeedReply : 0), VringArea.WireSize);
        ulong indexFlags = (uint)op.Ring | (op.Remove ? VhostUserWire.VringNoFdMask : 0UL);
        new VringArea(indexFlags, op.Size, op.Offset).Write(msg.AsSpan(VhostUserWire.HeaderSize));
        try
        {
            lock (_backendLock)
            {
                if (_backendChannel is null)
                {
                    return; // gone (closed by the front-end): nothing is mapped through it any more
                }
                if (!SendOnBackendChannel(msg, op.Remove ? [] : [op.Fd!.Fd], "VRING_HOST_NOTIFIER_MSG"))
                {
                    _notifierAcks.Clear(); // none can arrive any more
                    return;
                }
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            Log($"ring {op.Ring}: cannot send the host notifier {(op.Remove ? "removal" : "offer")}: {e.Message}");
            return;
        }
        Log(op.Remove
            ? $"ring {op.Ring}: host notifier removed"
            : $"ring {op.Ring}: host notifier offered ({op.Size} bytes at offset 0x{op.Offset:x} of the device fd)");
        if (needReply)
        {
            _notifierAcks.Enqueue((op.Ring, op.Remove));
            if (_notifierAcks.Count > MaxOutstandingNotifierAcks)
            {
                _notifierAcksAbandoned = true;
                _notifierAcks.Clear();
                Log($"the front-end left {MaxOutstandingNotifierAcks} host-notifier messages unanswered: no more acks are asked for");
            }
        }
    }

    /// <summary>Reads one reply from the back-end channel (readable or hung up) while acks are outstanding.</summary>
    private void ReadNotifierAck()
    {
        var ch = _backendChannel;
        if (ch is null)
        {
            _notifierAcks.Clear();
            return;
        }
        var fds = new List<SafeFd>();
        string? error = null;
        try
        {
            Span<byte> h = stackalloc byte[VhostUserWire.HeaderSize];
            int n = ch.Receive(h, fds, out bool truncated);
            if (n == 0)
            {
                error = "closed by the front-end";
            }
            else if (truncated || fds.Count > 0)
            {
                error = "a reply carried descriptors";
            }
            else
            {
                if (n < h.Length)
                {
                    ch.ReceiveExact(h[n..], fds, _options.PayloadTimeoutMs);
                }
                var (request, flags, size) = VhostUserCodec.ReadHeader(h);
                if (request != (uint)VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG || flags != VhostUserWire.ReplyFlags || size != VhostUserWire.U64Size)
                {
                    error = $"unexpected reply (request {request}, flags 0x{flags:x}, {size} bytes) while host-notifier acks were outstanding";
                }
                else
                {
                    Span<byte> p = stackalloc byte[VhostUserWire.U64Size];
                    ch.ReceiveExact(p, fds, _options.PayloadTimeoutMs);
                    ulong v = BinaryPrimitives.ReadUInt64LittleEndian(p);
                    if (!_notifierAcks.TryDequeue(out var pending))
                    {
                        error = "a host-notifier ack that was not asked for";
                    }
                    else if (v != 0)
                    {
                        Log(pending.Remove
                            ? $"ring {pending.Ring}: the front-end answered {v} to the host notifier removal (it may have dropped it already)"
                            : $"ring {pending.Ring}: the front-end refused the host notifier ({v}; QEMU needs page-per-vq=on on the virtio-net-pci device); kicks keep going through the eventfd relay");
                    }
                }
            }
        }
        catch (Exception e) when (e is IOException or TimeoutException or InvalidDataException)
        {
            error = e.Message;
        }
        finally
        {
            foreach (var fd in fds)
            {
                fd.Dispose();
            }
        }
        if (error is not null)
        {
            Log($"back-end channel: {error}; closing it");
            _notifierAcks.Clear();
            lock (_backendLock)
            {
                _backendChannel?.Dispose();
                _backendChannel = null;
            }
        }
    }

    private void SendConfigChange()
    {
        try
        {
            Span<byte> h = stackalloc byte[VhostUserWire.HeaderSize];
            VhostUserCodec.WriteHeader(h, (uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG, VhostUserWire.FlagVersion, 0);
            lock (_backendLock)
            {
                if (_backendChannel is not null)
                {
                    SendOnBackendChannel(h, [], "CONFIG_CHANGE_MSG");
                }
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            Log($"config-change notification failed: {e.Message}");
        }
    }

    /// <summary>
    /// Sends one message on the back-end channel (the caller holds <see cref="_backendLock"/> and has seen
    /// the channel open), never waiting longer than <see cref="VhostUserSessionOptions.BackendSendTimeoutMs"/>
    /// for room: a front-end that does not read its end must not hang the session thread or the device's
    /// interrupt thread. On timeout the channel is closed (a message the kernel took only part of is cut
    /// off by the shutdown, never followed by another) and false is returned.
    /// </summary>
    private bool SendOnBackendChannel(ReadOnlySpan<byte> msg, ReadOnlySpan<int> fds, string what)
    {
        var ch = _backendChannel!;
        int timeoutMs = Math.Max(0, _options.BackendSendTimeoutMs);
        if (ch.TrySend(msg, fds, timeoutMs))
        {
            return true;
        }
        Log($"back-end channel: front-end not reading, closing it ({what} not taken within {timeoutMs} ms)");
        // This may run on the interrupt thread while the session thread polls or reads the channel:
        // shut it down now (the front-end sees it end) and leave closing the descriptor to the session thread.
        ch.Shutdown();
        _backendChannel = null;
        _retiredBackendChannels.Add(ch);
        Volatile.Write(ref _retiredBackendChannelCount, _retiredBackendChannels.Count);
        return false;
    }

    /// <summary>Closes channels shut down by <see cref="SendOnBackendChannel"/> (session thread, outside any use of them).</summary>
    private void CloseRetiredBackendChannels()
    {
        if (Volatile.Read(ref _retiredBackendChannelCount) == 0)
        {
            return; // the usual case: no wait for the lock an interrupt-thread send may hold
        }
        lock (_backendLock)
        {
            foreach (var ch in _retiredBackendChannels)
            {
                ch.Dispose();
            }
            _retiredBackendChannels.Clear();
            Volatile.Write(ref _retiredBackendChannelCount, 0);
        }
    }

    /// <summary>RESET_OWNER / RESET_DEVICE: stop the device and forget rings, memory, features and status.</summary>
    private void ResetState()
    {
        Deconfigure();
        CloseRings();
        _memory.Dispose();
        _memory = new GuestMemoryTable();
        _acked = 0;
        _featuresSet = false;
        _status = 0;
    }

    private void CloseRings()
    {
        for (int i = 0; i < _rings.Length; i++)
        {
            var r = _rings[i];
            r.Kick?.Dispose();
            r.Call?.Dispose();
            r.Err?.Dispose();
            _rings[i] = new Vring();
        }
    }

    private void Teardown()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Deconfigure();
        FlushHostNotifiers(askAcks: false); // nobody reads acks any more
        _relay?.Dispose();
        _relay = null;
        ResetDevice(); // also when never configured: the next front-end starts from a reset device
        CloseRings();
        _memory.Dispose();
        lock (_backendLock)
        {
            _backendChannel?.Dispose();
            _backendChannel = null;
        }
        CloseRetiredBackendChannels();
    }

    private static string FormatMac(ReadOnlySpan<byte> m) => $"{m[0]:x2}:{m[1]:x2}:{m[2]:x2}:{m[3]:x2}:{m[4]:x2}:{m[5]:x2}";

    public void Dispose()
    {
        Teardown();
        _conn.Dispose();
    }
}
