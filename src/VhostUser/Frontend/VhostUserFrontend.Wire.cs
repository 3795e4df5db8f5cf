using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Frontend;

public sealed partial class VhostUserFrontend
{
    // Requests and replies on the main socket. The caller holds _ctl, so one request is in flight at a time
    // and every reply read belongs to the request just sent. A reply that breaks the rules makes the stream
    // untrustworthy: the connection is shut down and every later request fails with the first reason.

    private bool ReplyAck => HasProtocol(VhostUserProtocolFeature.REPLY_ACK);

    private void ThrowIfBroken()
    {
        if (_broken is { } why)
        {
            throw new IOException($"{Name}: the vhost-user connection to {_path} is broken: {why}");
        }
    }

    /// <summary>Records why the connection is unusable, shuts it down and returns the exception to throw.</summary>
    private IOException Broken(string why)
    {
        _broken ??= why;
        try
        {
            _socket.Shutdown();
        }
        catch (ObjectDisposedException)
        {
        }
        Log($"connection broken: {why}");
        return new IOException($"{Name}: vhost-user back-end at {_path}: {why}; the connection is closed");
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
    private void Request(VhostUserRequest r, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default, bool expectAck = true)
    {
        bool ack = expectAck && ReplyAck;
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

    private void SendU64(VhostUserRequest r, ulong value, ReadOnlySpan<int> fds = default, bool expectAck = true)
    {
        Span<byte> p = stackalloc byte[VhostUserWire.U64Size];
        BinaryPrimitives.WriteUInt64LittleEndian(p, value);
        Request(r, p, fds, expectAck);
    }

    /// <summary>A getter: no payload, an 8-byte reply.</summary>
    private ulong GetU64(VhostUserRequest r)
    {
        Send(r, VhostUserWire.FlagVersion, [], default);
        return BinaryPrimitives.ReadUInt64LittleEndian(ReadReply(r, VhostUserWire.U64Size));
    }

    /// <summary>A request with a payload and a reply of exactly <paramref name="replySize"/> bytes.</summary>
    private byte[] Query(VhostUserRequest r, ReadOnlySpan<byte> payload, int replySize)
    {
        Send(r, VhostUserWire.FlagVersion, payload, default);
        return ReadReply(r, replySize);
    }

    /// <summary>GET_CONFIG; false when the back-end answered with an empty reply (the spec's way to fail).</summary>
    private bool TryGetBackendConfig(uint offset, Span<byte> buffer)
    {
        var p = new byte[VhostUserWire.ConfigHeaderSize + buffer.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(p, offset);
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), (uint)buffer.Length);
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

    /// <summary>
    /// Reads the reply to <paramref name="r"/>: the same request code, flags exactly 0x5, a payload of
    /// <paramref name="size"/> bytes (-1: any size up to the protocol's limit), no descriptors.
    /// </summary>
    private byte[] ReadReply(VhostUserRequest r, int size)
    {
        string name = VhostUserCodec.Name(r);
        var fds = new List<SafeFd>();
        try
        {
            var h = new byte[VhostUserWire.HeaderSize];
            if (Receive(h, fds) is { } e1)
            {
                throw Broken($"no reply to {name}: {e1}");
            }
            var (code, flags, got) = VhostUserCodec.ReadHeader(h);
            if (code != (uint)r)
            {
                throw Broken($"expected the reply to {name}, got {VhostUserCodec.Name((VhostUserRequest)code)}");
            }
            if (flags != VhostUserWire.ReplyFlags)
            {
                throw Broken($"reply to {name} has flags 0x{flags:x} (must be exactly 0x{VhostUserWire.ReplyFlags:x})");
            }
            if (size >= 0 ? got != (uint)size : got > VhostUserWire.MaxPayload)
            {
                throw Broken($"reply to {name} has {got} bytes, expected {(size >= 0 ? size.ToString(System.Globalization.CultureInfo.InvariantCulture) : $"at most {VhostUserWire.MaxPayload}")}");
            }
            var payload = got == 0 ? [] : new byte[got];
            if (Receive(payload, fds) is { } e2)
            {
                throw Broken($"truncated reply to {name}: {e2}");
            }
            if (fds.Count != 0)
            {
                throw Broken($"reply to {name} carries {fds.Count} descriptor(s), expected none");
            }
            return payload;
        }
        finally
        {
            foreach (var fd in fds)
            {
                fd.Dispose();
            }
        }
    }

    /// <summary>Fills <paramref name="buffer"/> within the reply timeout; the failure as text, or null.</summary>
    private string? Receive(Span<byte> buffer, List<SafeFd> fds)
    {
        if (buffer.IsEmpty)
        {
            return null;
        }
        try
        {
            _socket.ReceiveExact(buffer, fds, _options.ReplyTimeoutMs);
            return null;
        }
        catch (TimeoutException e)
        {
            return $"timed out ({e.Message})";
        }
        catch (EndOfStreamException e)
        {
            return $"the back-end closed the connection ({e.Message})";
        }
        catch (InvalidDataException e)
        {
            return e.Message;
        }
        catch (IOException e)
        {
            return e.Message;
        }
        catch (ObjectDisposedException)
        {
            return "the front-end is closed";
        }
    }
}
