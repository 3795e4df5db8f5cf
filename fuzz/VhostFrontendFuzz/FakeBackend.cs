using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.VhostUser;
using IfcVdpa.VhostUser.Frontend;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.Fuzz;

/// <summary>
/// A hostile vhost-user back-end on one end of a socketpair, on its own thread. For every request the
/// front-end sends it takes one directive byte from the reply script (0 when the script is used up):
/// low nibble = what to answer, high nibble = its argument:
/// <list type="bullet">
/// <item>0-5: the valid reply (nothing when the request has none);</item>
/// <item>6: a hostile value: getters answer an interesting u64 (0, 1, 0xFFFF, 2^63, ...), GET_VRING_BASE another
/// base (or ring), GET_CONFIG the spec's empty failure reply (or another offset), acks are non-zero;</item>
/// <item>7: another request code; 8: flags other than 0x5; 9: a size field that lies (shorter, longer, 64 KiB);</item>
/// <item>10: the valid reply followed by up to 31 bytes taken from the script (the next "reply");</item>
/// <item>11: the reply with 1-2 descriptors attached (<see cref="HostileFds"/> kinds); 12: nothing (timeout);</item>
/// <item>13: close the connection; 14: the reply twice (or an unsolicited one); 15: a reply cut in half.</item>
/// </list>
/// It also checks what the front-end sends (well-formed requests, only negotiated ones, ring addresses and
/// memory regions inside the driver's DMA mapping, features never including ACCESS_PLATFORM); violations
/// are collected in <see cref="Bugs"/>.
/// </summary>
public sealed class FakeBackend : IDisposable
{
    /// <summary>Interesting values for mode 6 (index = the directive's high nibble).</summary>
    private static readonly ulong[] s_values =
        [0, 1, 2, 3, 8, 0xFF, 0x100, 0xFFFF, 0x1_0000, 0x8000, 0x8001, 0xFFFF_FFFF, 1UL << 63, ulong.MaxValue, 512, 513];

    private static readonly HashSet<VhostUserRequest> s_sent =
    [
        VhostUserRequest.GET_FEATURES, VhostUserRequest.SET_FEATURES, VhostUserRequest.SET_OWNER, VhostUserRequest.SET_MEM_TABLE,
        VhostUserRequest.SET_VRING_NUM, VhostUserRequest.SET_VRING_ADDR, VhostUserRequest.SET_VRING_BASE, VhostUserRequest.GET_VRING_BASE,
        VhostUserRequest.SET_VRING_KICK, VhostUserRequest.SET_VRING_CALL, VhostUserRequest.GET_PROTOCOL_FEATURES,
        VhostUserRequest.SET_PROTOCOL_FEATURES, VhostUserRequest.GET_QUEUE_NUM, VhostUserRequest.SET_VRING_ENABLE,
        VhostUserRequest.NET_SET_MTU, VhostUserRequest.SET_BACKEND_REQ_FD, VhostUserRequest.GET_CONFIG, VhostUserRequest.SET_CONFIG,
        VhostUserRequest.RESET_DEVICE, VhostUserRequest.GET_MAX_MEM_SLOTS, VhostUserRequest.ADD_MEM_REG, VhostUserRequest.REM_MEM_REG,
        VhostUserRequest.SET_STATUS, VhostUserRequest.GET_STATUS,
    ];

    private readonly UnixSocket _sock;
    private readonly Thread _thread;
    private readonly Script _script;
    private readonly HostileFds _fds;
    private readonly MemoryRegionDesc _region;
    private readonly string? _dmaTarget;
    private readonly Action<string>? _trace;
    private readonly Lock _lock = new();
    private readonly List<string> _bugs = [];
    private readonly EventFd?[] _kicks = new EventFd?[2];
    private readonly EventFd?[] _calls = new EventFd?[2];
    private readonly uint[] _bases = new uint[2];
    private readonly uint[] _nums = new uint[2];
    private readonly byte[] _config = new byte[VhostUserWire.MaxConfigSize];
    private ulong _offeredFeatures;
    private ulong _offeredProtocol;
    private ulong _acked;
    private ulong _status;
    private bool _desynced;
    private UnixSocket? _channel;
    private int _requests;

    public FakeBackend(ulong features, ulong protocol, Script script, HostileFds fds, ulong iova, Action<string>? trace)
    {
        Features = features;
        Protocol = protocol;
        _script = script;
        _fds = fds;
        _trace = trace;
        _region = new MemoryRegionDesc(iova, fds.Dma.Length, fds.Dma.All.UserAddress, 0);
        _dmaTarget = FdKind.Target(fds.Dma.Fd!.Fd);
        byte[] mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        mac.CopyTo(_config, 0);
        _config[6] = 1; // link up
        _config[8] = 1; // one queue pair
        BinaryPrimitives.WriteUInt16LittleEndian(_config.AsSpan(10), 1500);
        var (a, b) = UnixSocket.CreatePair();
        FrontEnd = a;
        _sock = b;
        _thread = new Thread(Run) { IsBackground = true, Name = "fuzz fake back-end" };
        _thread.Start();
    }

    public ulong Features { get; }

    public ulong Protocol { get; }

    /// <summary>The front-end's end (VhostUserFrontend.Connect takes ownership).</summary>
    public UnixSocket FrontEnd { get; }

    /// <summary>Protocol features the front-end set (SET_PROTOCOL_FEATURES).</summary>
    public ulong Acked
    {
        get
        {
            lock (_lock)
            {
                return _acked;
            }
        }
    }

    /// <summary>Our end of the back-end channel, once SET_BACKEND_REQ_FD arrived.</summary>
    public UnixSocket? Channel
    {
        get
        {
            lock (_lock)
            {
                return _channel;
            }
        }
    }

    public int Requests => Volatile.Read(ref _requests);

    public List<string> Bugs
    {
        get
        {
            lock (_lock)
            {
                return [.. _bugs];
            }
        }
    }

    private void Bug(string s)
    {
        lock (_lock)
        {
            _bugs.Add(s);
        }
    }

    /// <summary>
    /// Null when the back-end holds no kick eventfd for ring <paramref name="q"/>; otherwise whether a kick
    /// was pending (it is consumed).
    /// </summary>
    public bool? ConsumeKick(int q)
    {
        lock (_lock)
        {
            return _kicks[q] is { } k ? k.TryConsume(out _) : null;
        }
    }

    /// <summary>What a back-end does when it used buffers: signal every call eventfd it holds.</summary>
    public void SignalCalls()
    {
        lock (_lock)
        {
            foreach (var c in _calls)
            {
                c?.Signal();
            }
        }
    }

    /// <summary>Waits for the thread to end (the front-end closed its end); false if it did not within the time.</summary>
    public bool Join(int timeoutMs) => _thread.Join(timeoutMs);

    public void Dispose()
    {
        _sock.Shutdown();
        _thread.Join();
        _sock.Dispose();
        lock (_lock)
        {
            _channel?.Dispose();
            _channel = null;
            for (int i = 0; i < 2; i++)
            {
                _kicks[i]?.Dispose();
                _calls[i]?.Dispose();
                _kicks[i] = _calls[i] = null;
            }
        }
    }

    private void Run()
    {
        try
        {
            while (true)
            {
                var m = Receive();
                if (m is null)
                {
                    return;
                }
                using (m)
                {
                    if (!Handle(m))
                    {
                        return;
                    }
                }
            }
        }
        catch (Exception e)
        {
            Bug($"harness: fake back-end thread failed: {e}");
        }
    }

    /// <summary>
    /// One request: the header (with its descriptors), then exactly the payload; null at the end of the stream.
    /// Its own reader, not VhostUserConnection: code on this thread stays out of the instrumented front-end
    /// assembly, so the coverage afl-fuzz sees is the front-end's.
    /// </summary>
    private VhostUserMessage? Receive()
    {
        var fds = new List<SafeFd>();
        var h = new byte[VhostUserWire.HeaderSize];
        try
        {
            int got = _sock.Receive(h, fds, out bool truncated);
            if (got == 0 || truncated)
            {
                if (truncated || fds.Count != 0)
                {
                    Bug("the front-end sent descriptors without a message, or too many");
                }
                return null;
            }
            _sock.ReceiveExact(h.AsSpan(got), fds, 1000);
            var (request, flags, size) = VhostUserCodec.ReadHeader(h);
            if (size > VhostUserWire.MaxPayload)
            {
                Bug($"the front-end sent a {size}-byte payload");
                return null;
            }
            var payload = new byte[size];
            _sock.ReceiveExact(payload, fds, 1000);
            var m = new VhostUserMessage((VhostUserRequest)request, flags, payload, fds);
            fds = [];
            return m;
        }
        catch (Exception e) when (e is TimeoutException or EndOfStreamException or InvalidDataException)
        {
            Bug($"the front-end sent a truncated or malformed message: {e.Message}");
            return null;
        }
        catch (IOException)
        {
            return null; // our end was shut down
        }
        finally
        {
            foreach (var f in fds)
            {
                f.Dispose();
            }
        }
    }

    private static bool IsGetter(VhostUserRequest r) => r is VhostUserRequest.GET_FEATURES or VhostUserRequest.GET_PROTOCOL_FEATURES
        or VhostUserRequest.GET_QUEUE_NUM or VhostUserRequest.GET_MAX_MEM_SLOTS or VhostUserRequest.GET_STATUS
        or VhostUserRequest.GET_VRING_BASE or VhostUserRequest.GET_CONFIG;

    private bool Handle(VhostUserMessage m)
    {
        int n = Interlocked.Increment(ref _requests);
        Check(m);
        Track(m);
        byte[]? valid = ValidReply(m);
        byte d = _script.Next();
        int mode = d & 15, arg = d >> 4;
        _trace?.Invoke($"back-end: #{n - 1} {m} -> mode {mode} arg {arg}");
        var r = m.Request;
        byte[] some = valid ?? U64(0);
        switch (mode)
        {
            case <= 5:
                return valid is null || Send((uint)r, VhostUserWire.ReplyFlags, valid);
            case 6:
                return Hostile(m, arg, valid);
            case 7:
                return Send(arg == 15 ? 0 : (uint)r + 1 + (uint)arg, VhostUserWire.ReplyFlags, some);
            case 8:
                return Send((uint)r, VhostUserWire.ReplyFlags ^ (uint)(1 + arg), some);
            case 9:
            {
                if (arg == 15)
                {
                    var h = new byte[VhostUserWire.HeaderSize];
                    VhostUserCodec.WriteHeader(h, (uint)r, VhostUserWire.ReplyFlags, 0x1_0000);
                    return Raw(h);
                }
                int len = arg < 8 ? Math.Max(0, some.Length - (arg + 1)) : some.Length + (arg - 7);
                var p = new byte[len];
                some.AsSpan(0, Math.Min(len, some.Length)).CopyTo(p);
                return Send((uint)r, VhostUserWire.ReplyFlags, p);
            }
            case 10:
            {
                _desynced = true;
                var extra = new byte[1 + (arg * 2)];
                _script.Fill(extra);
                return (valid is null || Send((uint)r, VhostUserWire.ReplyFlags, valid)) && Raw(extra);
            }
            case 11:
            {
                int count = 1 + (arg & 1);
                var fds = new int[count];
                for (int i = 0; i < count; i++)
                {
                    fds[i] = _fds.Make(arg >> 1, out _);
                }
                return Send((uint)r, VhostUserWire.ReplyFlags, some, fds);
            }
            case 12:
                return true;
            case 13:
                _sock.Shutdown();
                return false;
            case 14:
                _desynced = true;
                return Send((uint)r, VhostUserWire.ReplyFlags, some) && Send((uint)r, VhostUserWire.ReplyFlags, some);
            default:
            {
                var whole = some.Length == 0 ? U64(0) : some;
                var buf = new byte[VhostUserWire.HeaderSize + (whole.Length / 2)];
                VhostUserCodec.WriteHeader(buf, (uint)r, VhostUserWire.ReplyFlags, whole.Length);
                whole.AsSpan(0, whole.Length / 2).CopyTo(buf.AsSpan(VhostUserWire.HeaderSize));
                return Raw(buf);
            }
        }
    }

    private bool Hostile(VhostUserMessage m, int arg, byte[]? valid)
    {
        var r = m.Request;
        ulong v = s_values[arg];
        switch (r)
        {
            case VhostUserRequest.GET_FEATURES or VhostUserRequest.GET_PROTOCOL_FEATURES or VhostUserRequest.GET_QUEUE_NUM
                or VhostUserRequest.GET_MAX_MEM_SLOTS or VhostUserRequest.GET_STATUS:
                Offered(r, v);
                return Send((uint)r, VhostUserWire.ReplyFlags, U64(v));
            case VhostUserRequest.GET_VRING_BASE:
            {
                var p = new byte[VhostUserWire.VringStateSize];
                uint q = m.Payload.Length >= 8 ? m.State.Index : 0;
                new VringState(arg == 15 ? q + 1 : q, (uint)v).Write(p);
                return Send((uint)r, VhostUserWire.ReplyFlags, p);
            }
            case VhostUserRequest.GET_CONFIG:
            {
                if (arg < 8 || valid is null || valid.Length < VhostUserWire.ConfigHeaderSize)
                {
                    return Send((uint)r, VhostUserWire.ReplyFlags, []);
                }
                var p = (byte[])valid.Clone();
                BinaryPrimitives.WriteUInt32LittleEndian(p, BinaryPrimitives.ReadUInt32LittleEndian(p) + (uint)(arg - 7));
                return Send((uint)r, VhostUserWire.ReplyFlags, p);
            }
            default:
                return valid is null || Send((uint)r, VhostUserWire.ReplyFlags, U64(v == 0 ? 1 : v));
        }
    }

    private static byte[] U64(ulong v)
    {
        var p = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, v);
        return p;
    }

    private void Offered(VhostUserRequest r, ulong v)
    {
        lock (_lock)
        {
            if (r == VhostUserRequest.GET_FEATURES)
            {
                _offeredFeatures |= v;
            }
            else if (r == VhostUserRequest.GET_PROTOCOL_FEATURES)
            {
                _offeredProtocol |= v;
            }
        }
    }

    private bool Send(uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        var buf = new byte[VhostUserWire.HeaderSize + payload.Length];
        VhostUserCodec.WriteHeader(buf, request, flags, payload.Length);
        payload.CopyTo(buf.AsSpan(VhostUserWire.HeaderSize));
        return Raw(buf, fds);
    }

    private bool Raw(ReadOnlySpan<byte> bytes, ReadOnlySpan<int> fds = default)
    {
        try
        {
            return _sock.TrySend(bytes, fds, 1000);
        }
        catch (IOException)
        {
            return false; // the front-end is gone
        }
    }

    private byte[]? ValidReply(VhostUserMessage m)
    {
        var r = m.Request;
        lock (_lock)
        {
            switch (r)
            {
                case VhostUserRequest.GET_FEATURES:
                    _offeredFeatures |= Features;
                    return U64(Features);
                case VhostUserRequest.GET_PROTOCOL_FEATURES:
                    _offeredProtocol |= Protocol;
                    return U64(Protocol);
                case VhostUserRequest.GET_QUEUE_NUM:
                    return U64(1);
                case VhostUserRequest.GET_MAX_MEM_SLOTS:
                    return U64(8);
                case VhostUserRequest.GET_STATUS:
                    return U64(_status);
                case VhostUserRequest.GET_VRING_BASE:
                {
                    uint q = m.Payload.Length >= 8 ? m.State.Index : 0;
                    var p = new byte[VhostUserWire.VringStateSize];
                    new VringState(q, _bases[q & 1]).Write(p);
                    return p;
                }
                case VhostUserRequest.GET_CONFIG:
                {
                    if (m.Payload.Length < VhostUserWire.ConfigHeaderSize)
                    {
                        return [];
                    }
                    uint off = BinaryPrimitives.ReadUInt32LittleEndian(m.Payload);
                    uint size = BinaryPrimitives.ReadUInt32LittleEndian(m.Payload.AsSpan(4));
                    if (off > _config.Length || size > _config.Length - off)
                    {
                        return [];
                    }
                    var p = new byte[VhostUserWire.ConfigHeaderSize + size];
                    m.Payload.AsSpan(0, VhostUserWire.ConfigHeaderSize).CopyTo(p);
                    _config.AsSpan((int)off, (int)size).CopyTo(p.AsSpan(VhostUserWire.ConfigHeaderSize));
                    return p;
                }
                default:
                    return m.NeedReply ? U64(0) : null;
            }
        }
    }

    /// <summary>Keeps what a real back-end keeps: protocol features, status, ring bases, the channel, kick and call fds.</summary>
    private void Track(VhostUserMessage m)
    {
        lock (_lock)
        {
            switch (m.Request)
            {
                case VhostUserRequest.SET_PROTOCOL_FEATURES when m.Payload.Length == 8:
                    _acked = m.U64;
                    break;
                case VhostUserRequest.SET_STATUS when m.Payload.Length == 8:
                    _status = m.U64;
                    break;
                case VhostUserRequest.RESET_DEVICE:
                    _status = 0;
                    break;
                case VhostUserRequest.SET_VRING_BASE when m.Payload.Length == 8:
                    _bases[m.State.Index & 1] = m.State.Num;
                    break;
                case VhostUserRequest.SET_VRING_NUM when m.Payload.Length == 8:
                    _nums[m.State.Index & 1] = m.State.Num;
                    break;
                case VhostUserRequest.SET_BACKEND_REQ_FD when m.Fds.Count == 1:
                    _channel?.Dispose();
                    _channel = UnixSocket.Adopt(m.TakeFd(0));
                    break;
                case VhostUserRequest.SET_VRING_KICK or VhostUserRequest.SET_VRING_CALL when m.Fds.Count == 1 && m.Payload.Length == 8:
                {
                    var slot = m.Request == VhostUserRequest.SET_VRING_KICK ? _kicks : _calls;
                    int q = (int)(m.U64 & 1);
                    slot[q]?.Dispose();
                    slot[q] = EventFd.Adopt(m.TakeFd(0));
                    break;
                }
            }
        }
    }

    private bool Acks(int bit)
    {
        lock (_lock)
        {
            return (_acked & (1UL << bit)) != 0;
        }
    }

    /// <summary>What a well-behaved front-end sends, whatever the back-end answered before.</summary>
    private void Check(VhostUserMessage m)
    {
        var r = m.Request;
        string name = VhostUserCodec.Name(r);
        var p = m.Payload;
        if (!s_sent.Contains(r))
        {
            Bug($"the front-end sent {name}, which it never should");
            return;
        }
        if ((m.Flags & ~VhostUserWire.FlagNeedReply) != VhostUserWire.FlagVersion)
        {
            Bug($"{name} with flags 0x{m.Flags:x}");
        }
        if (m.NeedReply && (!Acks(VhostUserProtocolFeature.REPLY_ACK) || IsGetter(r) || r == VhostUserRequest.SET_PROTOCOL_FEATURES))
        {
            Bug($"{name} asks for a reply (flags 0x{m.Flags:x}) without REPLY_ACK in force or on a getter");
        }
        if (VhostUserCodec.CheckPayload(r, p) is { } bad)
        {
            Bug($"malformed request: {bad}");
            return;
        }
        var (min, max) = VhostUserCodec.ExpectedFds(r, p);
        if (m.Fds.Count < min || m.Fds.Count > max)
        {
            Bug($"{name} carries {m.Fds.Count} descriptors, expected {min}..{max}");
            return;
        }
        bool desynced;
        ulong offeredFeatures, offeredProtocol;
        lock (_lock)
        {
            desynced = _desynced;
            offeredFeatures = _offeredFeatures;
            offeredProtocol = _offeredProtocol;
        }
        int? gate = r switch
        {
            VhostUserRequest.GET_QUEUE_NUM => VhostUserProtocolFeature.MQ,
            VhostUserRequest.GET_MAX_MEM_SLOTS or VhostUserRequest.ADD_MEM_REG or VhostUserRequest.REM_MEM_REG => VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS,
            VhostUserRequest.SET_BACKEND_REQ_FD => VhostUserProtocolFeature.BACKEND_REQ,
            VhostUserRequest.GET_CONFIG or VhostUserRequest.SET_CONFIG => VhostUserProtocolFeature.CONFIG,
            VhostUserRequest.RESET_DEVICE => VhostUserProtocolFeature.RESET_DEVICE,
            VhostUserRequest.SET_STATUS or VhostUserRequest.GET_STATUS => VhostUserProtocolFeature.STATUS,
            VhostUserRequest.NET_SET_MTU => VhostUserProtocolFeature.MTU,
            _ => null,
        };
        if (gate is { } g && !Acks(g))
        {
            Bug($"{name} without protocol feature {g} negotiated");
        }
        bool needs30 = r is VhostUserRequest.GET_PROTOCOL_FEATURES or VhostUserRequest.SET_PROTOCOL_FEATURES or VhostUserRequest.SET_VRING_ENABLE;
        if (needs30 && !desynced && (offeredFeatures & (1UL << F_PROTOCOL_FEATURES)) == 0)
        {
            Bug($"{name} although the back-end never offered PROTOCOL_FEATURES");
        }
        switch (r)
        {
            case VhostUserRequest.SET_PROTOCOL_FEATURES:
            {
                ulong v = m.U64;
                if ((v & ~VhostUserFrontend.SupportedProtocolFeatures) != 0 || (!desynced && (v & ~offeredProtocol) != 0))
                {
                    Bug($"SET_PROTOCOL_FEATURES 0x{v:x}: not offered (0x{offeredProtocol:x}) or not supported");
                }
                break;
            }
            case VhostUserRequest.SET_FEATURES:
            {
                ulong v = m.U64;
                if ((v & ((1UL << F_ACCESS_PLATFORM) | (1UL << F_LOG_ALL))) != 0 || (!desynced && (v & ~offeredFeatures) != 0))
                {
                    Bug($"SET_FEATURES 0x{v:x}: ACCESS_PLATFORM/LOG_ALL, or not offered (0x{offeredFeatures:x})");
                }
                break;
            }
            case VhostUserRequest.SET_STATUS when m.U64 > 0xFF:
                Bug($"SET_STATUS 0x{m.U64:x} is not a status byte");
                break;
            case VhostUserRequest.SET_VRING_NUM or VhostUserRequest.SET_VRING_BASE or VhostUserRequest.GET_VRING_BASE
                or VhostUserRequest.SET_VRING_ENABLE:
            {
                var s = m.State;
                if (s.Index >= 2)
                {
                    Bug($"{name} for ring {s.Index} (the front-end has 2)");
                }
                if (r == VhostUserRequest.SET_VRING_NUM && (s.Num == 0 || (s.Num & (s.Num - 1)) != 0 || s.Num > 1024))
                {
                    Bug($"SET_VRING_NUM {s.Num}");
                }
                if (r == VhostUserRequest.SET_VRING_ENABLE && s.Num > 1)
                {
                    Bug($"SET_VRING_ENABLE {s.Num}");
                }
                break;
            }
            case VhostUserRequest.SET_VRING_KICK or VhostUserRequest.SET_VRING_CALL:
                if (m.U64 >= 2)
                {
                    Bug($"{name} 0x{m.U64:x}");
                }
                else if (!FdKind.IsEventFd(m.Fds[0].Fd))
                {
                    Bug($"{name} carries {FdKind.Target(m.Fds[0].Fd)}, not an eventfd");
                }
                break;
            case VhostUserRequest.SET_VRING_ADDR:
                CheckAddr(VringAddr.Read(p));
                break;
            case VhostUserRequest.SET_MEM_TABLE:
            {
                uint n = BinaryPrimitives.ReadUInt32LittleEndian(p);
                for (int i = 0; i < n; i++)
                {
                    CheckRegion(name, MemoryRegionDesc.Read(p.AsSpan(8 + (i * VhostUserWire.RegionSize))), m.Fds[i].Fd);
                }
                break;
            }
            case VhostUserRequest.ADD_MEM_REG:
                CheckRegion(name, MemoryRegionDesc.Read(p.AsSpan(8)), m.Fds[0].Fd);
                break;
            case VhostUserRequest.REM_MEM_REG:
                CheckRegion(name, MemoryRegionDesc.Read(p.AsSpan(8)), null);
                break;
            case VhostUserRequest.GET_CONFIG or VhostUserRequest.SET_CONFIG:
            {
                uint off = BinaryPrimitives.ReadUInt32LittleEndian(p);
                uint size = BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(4));
                if (off > VhostUserFrontend.ConfigBytes || size > VhostUserFrontend.ConfigBytes - off)
                {
                    Bug($"{name} [{off}, +{size}) beyond the front-end's config space");
                }
                break;
            }
            case VhostUserRequest.SET_BACKEND_REQ_FD when FdKind.Target(m.Fds[0].Fd) is not { } t || !t.StartsWith("socket:", StringComparison.Ordinal):
                Bug($"SET_BACKEND_REQ_FD carries {FdKind.Target(m.Fds[0].Fd)}");
                break;
        }
    }

    private void CheckRegion(string name, MemoryRegionDesc d, int? fd)
    {
        if (d != _region)
        {
            Bug($"{name} region {d} is not the driver's mapping {_region}");
        }
        if (fd is { } f && FdKind.Target(f) != _dmaTarget)
        {
            Bug($"{name} carries {FdKind.Target(f)}, not the driver's memfd {_dmaTarget}");
        }
    }

    /// <summary>Every ring part must lie inside the driver's mapping (front-end addresses).</summary>
    private void CheckAddr(VringAddr a)
    {
        if (a.Index >= 2 || a.Flags != 0)
        {
            Bug($"SET_VRING_ADDR ring {a.Index} flags 0x{a.Flags:x}");
            return;
        }
        ulong num;
        lock (_lock)
        {
            num = _nums[a.Index];
        }
        ulong lo = _region.UserAddr, hi = _region.UserAddr + _region.Size;
        bool Inside(ulong at, ulong len) => at >= lo && at <= hi && len <= hi - at;
        if (!Inside(a.Desc, 16 * num) || !Inside(a.Avail, 4) || !Inside(a.Used, 4))
        {
            Bug($"SET_VRING_ADDR ring {a.Index} (num {num}): desc 0x{a.Desc:x} avail 0x{a.Avail:x} used 0x{a.Used:x} not inside [0x{lo:x}, 0x{hi:x})");
        }
    }
}
