using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>
/// One vhost-user connection: receives a message as exactly the 12-byte header (with its SCM_RIGHTS
/// descriptors) and then exactly the payload, so descriptors never get attached to the wrong message;
/// sends replies with flags 0x5.
/// </summary>
public sealed class VhostUserConnection : IDisposable
{
    private readonly UnixSocket _socket;
    private readonly int _payloadTimeoutMs;
    private readonly byte[] _header = new byte[VhostUserWire.HeaderSize];
    private readonly Lock _sendLock = new();

    public VhostUserConnection(UnixSocket socket, int payloadTimeoutMs = 5000)
    {
        _socket = socket;
        _payloadTimeoutMs = payloadTimeoutMs;
    }

    public UnixSocket Socket => _socket;

    /// <summary>
    /// Reads one message. Returns null when the peer closed the connection between messages; throws
    /// <see cref="VhostUserProtocolException"/> for a truncated or malformed message (any descriptors
    /// received with it are closed).
    /// </summary>
    public VhostUserMessage? Receive()
    {
        var fds = new List<SafeFd>();
        try
        {
            int first = ReceiveFirst(fds);
            if (first == 0)
            {
                return null;
            }
            Fill(_header.AsSpan(first), fds, "header");
            var (request, flags, size) = VhostUserCodec.ReadHeader(_header);
            string? bad = VhostUserCodec.CheckHeader(flags, size);
            if (bad is not null)
            {
                throw new VhostUserProtocolException($"{VhostUserCodec.Name((VhostUserRequest)request)}: {bad}");
            }
            var payload = size == 0 ? [] : new byte[size];
            Fill(payload, fds, $"{VhostUserCodec.Name((VhostUserRequest)request)} payload");
            var msg = new VhostUserMessage((VhostUserRequest)request, flags, payload, fds);
            fds = null;
            return msg;
        }
        finally
        {
            if (fds is not null)
            {
                foreach (var fd in fds)
                {
                    fd.Dispose();
                }
            }
        }
    }

    private int ReceiveFirst(List<SafeFd> fds)
    {
        int n = _socket.Receive(_header, fds, out bool truncated);
        if (truncated)
        {
            throw new VhostUserProtocolException("control data truncated (MSG_CTRUNC): too many descriptors");
        }
        if (n == 0 && fds.Count > 0)
        {
            throw new VhostUserProtocolException("descriptors without a message");
        }
        return n;
    }

    private void Fill(Span<byte> rest, List<SafeFd> fds, string what)
    {
        try
        {
            _socket.ReceiveExact(rest, fds, _payloadTimeoutMs);
        }
        catch (EndOfStreamException e)
        {
            throw new VhostUserProtocolException($"truncated {what}: {e.Message}");
        }
        catch (TimeoutException e)
        {
            throw new VhostUserProtocolException($"truncated {what}: {e.Message}");
        }
        catch (InvalidDataException e)
        {
            throw new VhostUserProtocolException(e.Message);
        }
    }

    /// <summary>Sends a reply: the request's code, flags exactly 0x5, the payload.</summary>
    public void Reply(VhostUserRequest request, ReadOnlySpan<byte> payload) =>
        Send((uint)request, VhostUserWire.ReplyFlags, payload, default);

    public void ReplyU64(VhostUserRequest request, ulong value)
    {
        Span<byte> p = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, value);
        Reply(request, p);
    }

    /// <summary>
    /// Sends any message (header + payload + descriptors in one sendmsg). Bounded in time: a front-end that
    /// stops reading its replies cannot hold the session thread; after the payload timeout the message is
    /// abandoned (never half-sent on a live stream) and <see cref="VhostUserProtocolException"/> says why.
    /// </summary>
    public void Send(uint request, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds)
    {
        var buf = new byte[VhostUserWire.HeaderSize + payload.Length];
        VhostUserCodec.WriteHeader(buf, request, flags, payload.Length);
        payload.CopyTo(buf.AsSpan(VhostUserWire.HeaderSize));
        bool sent;
        lock (_sendLock)
        {
            sent = _socket.TrySend(buf, fds, _payloadTimeoutMs);
        }
        if (!sent)
        {
            throw new VhostUserProtocolException(
                $"the front-end took no {VhostUserCodec.Name((VhostUserRequest)request)} reply within {_payloadTimeoutMs} ms (it is not reading its socket)");
        }
    }

    public void Dispose() => _socket.Dispose();
}
