using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The back-end's request handling, independent of what serves the requests: checks each message
/// (payload size, descriptor count, SET_OWNER first), decodes it, calls the
/// <see cref="IVhostUserBackendHandler"/> member named after the request and sends its reply, or the
/// REPLY_ACK when the front-end asked for one. A refused request (see <see cref="IsRefusal"/>) is answered
/// with a failed REPLY_ACK when the front-end asked for one; otherwise the connection is closed (what
/// DPDK does), since the front-end could not learn of the failure any other way. It keeps the protocol
/// state every request depends on: the owner and the negotiated protocol features.
/// </summary>
public sealed class VhostUserRequestDispatcher
{
    private readonly VhostUserConnection _conn;
    private readonly IVhostUserBackendHandler _handler;
    private readonly Action<string> _log;
    private bool _owner;
    private ulong _protocol;

    public VhostUserRequestDispatcher(VhostUserConnection connection, IVhostUserBackendHandler handler, Action<string> log)
    {
        _conn = connection;
        _handler = handler;
        _log = log;
    }

    /// <summary>Protocol features the front-end set (SET_PROTOCOL_FEATURES).</summary>
    public ulong ProtocolFeatures => _protocol;

    /// <summary>Messages handled, and those refused.</summary>
    public long Messages { get; private set; }

    public long Errors { get; private set; }

    /// <summary>True when <paramref name="protocolFeature"/> was negotiated.</summary>
    public bool Has(int protocolFeature) => (_protocol & (1UL << protocolFeature)) != 0;

    /// <summary>
    /// The one decision which exceptions a request turns into a refusal (a failed REPLY_ACK, or the
    /// connection closed when no ack was asked for): the request's own <see cref="VhostUserRequestException"/>
    /// and what a device throws when it refuses an operation. Anything else is a bug or a broken stream and
    /// ends the session.
    /// </summary>
    public static bool IsRefusal(Exception e) => e is VhostUserRequestException or VdpaException or IOException;

    private static string Describe(Exception e) => e is VhostUserRequestException ? e.Message : $"device error: {e.Message}";

    /// <summary>Counts a failure of the connection itself (not of one request).</summary>
    public void CountError() => Errors++;

    /// <summary>
    /// Handles one message: check, dispatch, reply or ack. Returns false when the connection must be
    /// closed; throws <see cref="VhostUserProtocolException"/> when a reply cannot be sent.
    /// </summary>
    public bool Process(VhostUserMessage m)
    {
        using var _ = m;
        Messages++;
        string? error = Check(m);
        bool replied = false;
        if (error is null)
        {
            try
            {
                replied = Dispatch(m);
            }
            catch (Exception e) when (IsRefusal(e))
            {
                error = Describe(e);
            }
        }
        if (error is not null)
        {
            Errors++;
            _log($"{VhostUserCodec.Name(m.Request)}: {error}");
        }
        if (replied)
        {
            return true;
        }
        if (m.NeedReply && Has(VhostUserProtocolFeature.REPLY_ACK) && !HasOwnReply(m.Request) &&
            !(m.Request == VhostUserRequest.SET_LOG_BASE && Has(VhostUserProtocolFeature.LOG_SHMFD)))
        {
            try
            {
                _conn.ReplyU64(m.Request, error is null ? 0UL : 1UL);
            }
            catch (IOException e)
            {
                _log($"cannot send REPLY_ACK: {e.Message}");
                return false;
            }
            return true;
        }
        if (error is not null)
        {
            _log("closing the connection (the front-end asked for no ack, so it cannot learn of the failure otherwise)");
            return false;
        }
        return true;
    }

    /// <summary>What is wrong with the message before any handler sees it, or null.</summary>
    private string? Check(VhostUserMessage m)
    {
        if (VhostUserCodec.CheckPayload(m.Request, m.Payload) is { } bad)
        {
            return bad;
        }
        var (min, max) = VhostUserCodec.ExpectedFds(m.Request, m.Payload);
        if (m.Fds.Count < min || m.Fds.Count > max)
        {
            return min == max
                ? $"carries {m.Fds.Count} descriptors, expected {min}"
                : $"carries {m.Fds.Count} descriptors, expected {min}..{max}";
        }
        return !_owner && NeedsOwner(m.Request) ? "sent before SET_OWNER" : null;
    }

    private static bool HasOwnReply(VhostUserRequest r) => r is VhostUserRequest.GET_FEATURES or VhostUserRequest.GET_PROTOCOL_FEATURES
        or VhostUserRequest.GET_VRING_BASE or VhostUserRequest.GET_QUEUE_NUM or VhostUserRequest.GET_CONFIG
        or VhostUserRequest.GET_STATUS or VhostUserRequest.GET_MAX_MEM_SLOTS or VhostUserRequest.GET_INFLIGHT_FD;

    private static bool NeedsOwner(VhostUserRequest r) => r is VhostUserRequest.SET_FEATURES or VhostUserRequest.SET_MEM_TABLE
        or VhostUserRequest.ADD_MEM_REG or VhostUserRequest.REM_MEM_REG or VhostUserRequest.SET_VRING_NUM
        or VhostUserRequest.SET_VRING_ADDR or VhostUserRequest.SET_VRING_BASE or VhostUserRequest.GET_VRING_BASE
        or VhostUserRequest.SET_VRING_KICK or VhostUserRequest.SET_VRING_CALL or VhostUserRequest.SET_VRING_ERR
        or VhostUserRequest.SET_VRING_ENABLE or VhostUserRequest.SET_STATUS or VhostUserRequest.SET_CONFIG
        or VhostUserRequest.SEND_RARP or VhostUserRequest.NET_SET_MTU or VhostUserRequest.SET_LOG_BASE
        or VhostUserRequest.SET_LOG_FD or VhostUserRequest.GET_INFLIGHT_FD or VhostUserRequest.SET_INFLIGHT_FD;

    /// <summary>Decodes a checked request and runs its handler member; true if it sent its own reply.</summary>
    private bool Dispatch(VhostUserMessage m)
    {
        var p = m.Payload;
        var h = _handler;
        switch (m.Request)
        {
            case VhostUserRequest.GET_FEATURES:
                return Reply(m, h.GetFeatures());
            case VhostUserRequest.SET_FEATURES:
                h.SetFeatures(m.U64);
                return false;
            case VhostUserRequest.SET_OWNER:
                if (_owner)
                {
                    throw new VhostUserRequestException("the session already has an owner");
                }
                _owner = true;
                h.SetOwner();
                return false;
            case VhostUserRequest.RESET_OWNER:
                h.ResetOwner();
                return false;
            case VhostUserRequest.RESET_DEVICE:
                h.ResetDevice();
                return false;
            case VhostUserRequest.GET_PROTOCOL_FEATURES:
                return Reply(m, h.GetProtocolFeatures());
            case VhostUserRequest.SET_PROTOCOL_FEATURES:
                SetProtocolFeatures(m.U64);
                return false;
            case VhostUserRequest.GET_QUEUE_NUM:
                return Reply(m, h.GetQueueNum());
            case VhostUserRequest.SET_MEM_TABLE:
                h.SetMemTable(MemTable(p), m.Fds);
                return false;
            case VhostUserRequest.GET_MAX_MEM_SLOTS:
                return Reply(m, h.GetMaxMemSlots());
            case VhostUserRequest.ADD_MEM_REG:
                h.AddMemReg(MemoryRegionDesc.Read(p.AsSpan(8)), m.Fds[0]);
                return false;
            case VhostUserRequest.REM_MEM_REG:
                h.RemMemReg(MemoryRegionDesc.Read(p.AsSpan(8)));
                return false;
            case VhostUserRequest.SET_VRING_NUM:
                h.SetVringNum(m.State);
                return false;
            case VhostUserRequest.SET_VRING_ADDR:
                h.SetVringAddr(VringAddr.Read(p));
                return false;
            case VhostUserRequest.SET_VRING_BASE:
                h.SetVringBase(m.State);
                return false;
            case VhostUserRequest.GET_VRING_BASE:
            {
                Span<byte> r = stackalloc byte[VhostUserWire.VringStateSize];
                h.GetVringBase(m.State).Write(r);
                _conn.Reply(m.Request, r);
                return true;
            }
            case VhostUserRequest.SET_VRING_KICK:
            {
                var (q, fd) = RingFd(m, "kick");
                h.SetVringKick(q, fd is null ? null : EventFd.Adopt(fd));
                return false;
            }
            case VhostUserRequest.SET_VRING_CALL:
            {
                var (q, fd) = RingFd(m, "call");
                h.SetVringCall(q, fd is null ? null : EventFd.Adopt(fd));
                return false;
            }
            case VhostUserRequest.SET_VRING_ERR:
            {
                var (q, fd) = RingFd(m, "error");
                h.SetVringErr(q, fd);
                return false;
            }
            case VhostUserRequest.SET_VRING_ENABLE:
                h.SetVringEnable(m.State);
                return false;
            case VhostUserRequest.SEND_RARP:
                h.SendRarp(p.AsSpan(0, 6));
                return false;
            case VhostUserRequest.SET_LOG_BASE:
                // With LOG_SHMFD the front-end waits for a reply (QEMU checks only its code; a u64 0 as
                // libvhost-user sends). A refusal then closes the connection, as for any request with its
                // own reply: the front-end must not migrate with a log nobody writes.
                if (!Has(VhostUserProtocolFeature.LOG_SHMFD))
                {
                    throw new VhostUserRequestException("not supported without LOG_SHMFD negotiated (the log is taken only as shared memory)");
                }
                h.SetLogBase(BinaryPrimitives.ReadUInt64LittleEndian(p), BinaryPrimitives.ReadUInt64LittleEndian(p.AsSpan(8)), m.Fds[0]);
                return Reply(m, 0);
            case VhostUserRequest.SET_LOG_FD:
                if (!FdKind.IsEventFd(m.Fds[0].Fd))
                {
                    throw new VhostUserRequestException($"log descriptor is not an eventfd ({FdKind.Target(m.Fds[0].Fd)})");
                }
                h.SetLogFd(m.TakeFd(0));
                return false;
            case VhostUserRequest.NET_SET_MTU:
                h.NetSetMtu(m.U64);
                return false;
            case VhostUserRequest.SET_BACKEND_REQ_FD:
                h.SetBackendReqFd(AdoptSocket(m.TakeFd(0)));
                return false;
            case VhostUserRequest.GET_CONFIG:
                GetConfig(m);
                return true;
            case VhostUserRequest.SET_CONFIG:
                h.SetConfig(BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(8)),
                    p.AsSpan(VhostUserWire.ConfigHeaderSize, (int)BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(4))));
                return false;
            case VhostUserRequest.GET_INFLIGHT_FD:
            {
                RequireInflight();
                var (_, _, queues, queueSize) = InflightBuffer.Read(p);
                using var b = h.GetInflightFd(queues, queueSize);
                Span<byte> r = stackalloc byte[InflightBuffer.WireSize];
                b.Write(r);
                _conn.Send((uint)m.Request, VhostUserWire.ReplyFlags, r, [b.Fd!.Fd]);
                return true;
            }
            case VhostUserRequest.SET_INFLIGHT_FD:
            {
                RequireInflight();
                var (size, offset, queues, queueSize) = InflightBuffer.Read(p);
                h.SetInflightFd(m.Fds[0], size, offset, queues, queueSize);
                return false;
            }
            case VhostUserRequest.GET_STATUS:
                return Reply(m, h.GetStatus());
            case VhostUserRequest.SET_STATUS:
                h.SetStatus(m.U64);
                return false;
            default:
                throw new VhostUserRequestException(Enum.IsDefined(m.Request)
                    ? "not supported by this back-end (its protocol feature is not offered)"
                    : "unknown request");
        }
    }

    private void RequireInflight()
    {
        if (!Has(VhostUserProtocolFeature.INFLIGHT_SHMFD))
        {
            throw new VhostUserRequestException("not supported without INFLIGHT_SHMFD negotiated");
        }
    }

    private bool Reply(VhostUserMessage m, ulong value)
    {
        _conn.ReplyU64(m.Request, value);
        return true;
    }

    private void SetProtocolFeatures(ulong v)
    {
        ulong offered = _handler.GetProtocolFeatures();
        if ((v & ~offered) != 0)
        {
            throw new VhostUserRequestException($"protocol features 0x{v:x} include unoffered bits 0x{v & ~offered:x}");
        }
        _handler.SetProtocolFeatures(v);
        _protocol = v;
    }

    private static MemoryRegionDesc[] MemTable(byte[] p)
    {
        var descs = new MemoryRegionDesc[BinaryPrimitives.ReadUInt32LittleEndian(p)];
        for (int i = 0; i < descs.Length; i++)
        {
            descs[i] = MemoryRegionDesc.Read(p.AsSpan(8 + (i * VhostUserWire.RegionSize)));
        }
        return descs;
    }

    /// <summary>GET_CONFIG: the reply repeats the request's config header and carries the bytes read.</summary>
    private void GetConfig(VhostUserMessage m)
    {
        var p = m.Payload;
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(p);
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(8));
        var reply = new byte[p.Length];
        p.AsSpan(0, VhostUserWire.ConfigHeaderSize).CopyTo(reply);
        _handler.GetConfig(offset, flags, reply.AsSpan(VhostUserWire.ConfigHeaderSize));
        _conn.Reply(m.Request, reply);
    }

    /// <summary>KICK/CALL/ERR payload: the ring index and, unless NOFD is set, the eventfd (taken from the message).</summary>
    private static (uint Index, SafeFd? Fd) RingFd(VhostUserMessage m, string what)
    {
        ulong v = m.U64;
        if ((v & ~(VhostUserWire.VringIndexMask | VhostUserWire.VringNoFdMask)) != 0)
        {
            throw new VhostUserRequestException($"{what} payload 0x{v:x} has unknown bits");
        }
        uint q = (uint)(v & VhostUserWire.VringIndexMask);
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

    private static UnixSocket AdoptSocket(SafeFd fd)
    {
        try
        {
            return UnixSocket.Adopt(fd);
        }
        catch (IOException e)
        {
            fd.Dispose();
            throw new VhostUserRequestException(e.Message);
        }
    }
}
