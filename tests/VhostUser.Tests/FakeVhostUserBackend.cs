using System.Buffers.Binary;
using System.Collections.Concurrent;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>One request as the fake back-end received it.</summary>
public sealed record ReceivedRequest(VhostUserRequest Request, uint Flags, byte[] Payload, int FdCount);

/// <summary>
/// A scriptable vhost-user back-end for front-end tests, on one end of a socketpair: answers getters with
/// configured values, acks everything else with 0 (unless <see cref="AckValue"/> says otherwise), keeps
/// the descriptors a real back-end keeps (kick/call eventfds, the back-end channel, memory regions) and
/// records every request. <see cref="Intercept"/> replaces the answer to any request (bad replies).
/// </summary>
public sealed class FakeVhostUserBackend : IDisposable
{
    public const ulong DefaultFeatures =
        (1UL << VirtioFeature.F_VERSION_1) | (1UL << VirtioFeature.NET_F_MRG_RXBUF) | (1UL << VirtioFeature.F_RING_EVENT_IDX) |
        (1UL << VirtioFeature.NET_F_CTRL_VQ) | (1UL << VirtioFeature.NET_F_MQ) | (1UL << VirtioFeature.NET_F_GUEST_ANNOUNCE) |
        (1UL << VirtioFeature.F_ACCESS_PLATFORM) | (1UL << VirtioFeature.F_LOG_ALL) | (1UL << VirtioFeature.F_PROTOCOL_FEATURES);

    public const ulong DefaultProtocol =
        (1UL << VhostUserProtocolFeature.MQ) | (1UL << VhostUserProtocolFeature.REPLY_ACK) |
        (1UL << VhostUserProtocolFeature.BACKEND_REQ) | (1UL << VhostUserProtocolFeature.BACKEND_SEND_FD) |
        (1UL << VhostUserProtocolFeature.HOST_NOTIFIER) | (1UL << VhostUserProtocolFeature.STATUS) |
        (1UL << VhostUserProtocolFeature.LOG_SHMFD) | (1UL << VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS);

    private readonly VhostUserConnection _conn;
    private readonly Thread _thread;
    private ulong _acked;
    private ulong _status;

    public FakeVhostUserBackend(ulong features = DefaultFeatures, ulong protocol = DefaultProtocol,
        Func<VhostUserMessage, VhostUserConnection, bool>? intercept = null)
    {
        Features = features;
        Protocol = protocol;
        Intercept = intercept;
        var (a, b) = UnixSocket.CreatePair();
        FrontEndSocket = a;
        _conn = new VhostUserConnection(b, 2000);
        _thread = new Thread(Run) { IsBackground = true, Name = "fake vhost-user back-end" };
        _thread.Start();
    }

    public ulong Features { get; }

    public ulong Protocol { get; }

    public ulong QueueNum { get; init; } = 4;

    /// <summary>Replaces the default answer: return true when the message was handled (or deliberately ignored).</summary>
    public Func<VhostUserMessage, VhostUserConnection, bool>? Intercept { get; set; }

    /// <summary>REPLY_ACK value per request (default 0 = success).</summary>
    public Func<VhostUserMessage, ulong> AckValue { get; set; } = _ => 0;

    /// <summary>The socket to give the front-end (VhostUserFrontend.Connect takes ownership).</summary>
    public UnixSocket FrontEndSocket { get; }

    public ConcurrentQueue<ReceivedRequest> Received { get; } = new();

    /// <summary>Our end of the back-end channel (SET_BACKEND_REQ_FD).</summary>
    public UnixSocket? Channel { get; private set; }

    public ConcurrentDictionary<uint, EventFd> Kicks { get; } = new();

    public ConcurrentDictionary<uint, EventFd> Calls { get; } = new();

    public ConcurrentDictionary<uint, uint> Bases { get; } = new();

    public IEnumerable<ReceivedRequest> Of(VhostUserRequest r) => Received.Where(x => x.Request == r);

    private void Run()
    {
        while (true)
        {
            VhostUserMessage? m;
            try
            {
                m = _conn.Receive();
            }
            catch (Exception e) when (e is VhostUserProtocolException or IOException or ObjectDisposedException)
            {
                return;
            }
            if (m is null)
            {
                return;
            }
            using (m)
            {
                Received.Enqueue(new ReceivedRequest(m.Request, m.Flags, m.Payload.ToArray(), m.Fds.Count));
                try
                {
                    if (Intercept?.Invoke(m, _conn) == true)
                    {
                        continue;
                    }
                    Answer(m);
                }
                catch (IOException)
                {
                    return;
                }
            }
        }
    }

    private void Answer(VhostUserMessage m)
    {
        switch (m.Request)
        {
            case VhostUserRequest.GET_FEATURES:
                _conn.ReplyU64(m.Request, Features);
                return;
            case VhostUserRequest.GET_PROTOCOL_FEATURES:
                _conn.ReplyU64(m.Request, Protocol);
                return;
            case VhostUserRequest.GET_QUEUE_NUM:
                _conn.ReplyU64(m.Request, QueueNum);
                return;
            case VhostUserRequest.GET_MAX_MEM_SLOTS:
                _conn.ReplyU64(m.Request, 8);
                return;
            case VhostUserRequest.GET_STATUS:
                _conn.ReplyU64(m.Request, _status);
                return;
            case VhostUserRequest.GET_VRING_BASE:
            {
                uint q = m.State.Index;
                var r = new byte[8];
                new VringState(q, Bases.GetValueOrDefault(q)).Write(r);
                _conn.Reply(m.Request, r);
                return;
            }
            case VhostUserRequest.SET_PROTOCOL_FEATURES:
                _acked = m.U64;
                break;
            case VhostUserRequest.SET_STATUS:
                _status = m.U64;
                break;
            case VhostUserRequest.SET_VRING_BASE:
                Bases[m.State.Index] = m.State.Num;
                break;
            case VhostUserRequest.SET_BACKEND_REQ_FD:
                Channel = UnixSocket.Adopt(m.TakeFd(0));
                break;
            case VhostUserRequest.SET_VRING_KICK when m.Fds.Count == 1:
                Keep(Kicks, (uint)(m.U64 & 0xFF), EventFd.Adopt(m.TakeFd(0)));
                break;
            case VhostUserRequest.SET_VRING_CALL when m.Fds.Count == 1:
                Keep(Calls, (uint)(m.U64 & 0xFF), EventFd.Adopt(m.TakeFd(0)));
                break;
        }
        if (m.NeedReply && (_acked & (1UL << VhostUserProtocolFeature.REPLY_ACK)) != 0)
        {
            _conn.ReplyU64(m.Request, AckValue(m));
        }
    }

    private static void Keep(ConcurrentDictionary<uint, EventFd> d, uint q, EventFd fd)
    {
        if (d.TryGetValue(q, out var old))
        {
            old.Dispose();
        }
        d[q] = fd;
    }

    /// <summary>Sends a request on the back-end channel and returns the front-end's u64 ack (after checking its framing).</summary>
    public ulong BackendRequest(uint request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default,
        uint flags = VhostUserWire.FlagVersion | VhostUserWire.FlagNeedReply)
    {
        var ch = Channel ?? throw new InvalidOperationException("no back-end channel");
        SendOnChannel(request, flags, payload, fds);
        var got = new List<SafeFd>();
        var h = new byte[12];
        ch.ReceiveExact(h, got, 5000);
        var (code, rflags, size) = VhostUserCodec.ReadHeader(h);
        Assert.Equal(request, code);
        Assert.Equal(VhostUserWire.ReplyFlags, rflags);
        Assert.Equal(8u, size);
        var p = new byte[8];
        ch.ReceiveExact(p, got, 5000);
        Assert.Empty(got);
        return BinaryPrimitives.ReadUInt64LittleEndian(p);
    }

    public void SendOnChannel(uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        var ch = Channel ?? throw new InvalidOperationException("no back-end channel");
        var buf = new byte[12 + payload.Length];
        VhostUserCodec.WriteHeader(buf, request, flags, payload.Length);
        payload.CopyTo(buf.AsSpan(12));
        ch.Send(buf, fds);
    }

    public static byte[] HostNotifierPayload(ulong indexFlags, ulong size, ulong offset)
    {
        var p = new byte[VringArea.WireSize];
        new VringArea(indexFlags, size, offset).Write(p);
        return p;
    }

    public void Dispose()
    {
        _conn.Socket.Shutdown();
        _thread.Join(5000);
        _conn.Dispose();
        Channel?.Dispose();
        foreach (var e in Kicks.Values.Concat(Calls.Values))
        {
            e.Dispose();
        }
        FrontEndSocket.Dispose();
    }
}
