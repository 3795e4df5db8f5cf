using System.Buffers.Binary;
using System.Globalization;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>
/// Reads one reply on a vhost-user stream, the same way on both sides: the front-end reads the back-end's
/// replies on the main socket, the back-end reads the front-end's acks on the back-end channel. A reply
/// must carry the request's own code, flags exactly 0x5 (REPLY | version 1), the expected payload size
/// and no descriptors, and arrive within the timeout. Anything else is a <see cref="VhostUserReplyException"/>
/// whose message says why: after it the stream cannot be trusted and the caller closes it.
/// </summary>
public static class VhostUserReplyReader
{
    /// <summary>
    /// Reads the reply to request code <paramref name="request"/> (named <paramref name="name"/> in errors):
    /// a payload of exactly <paramref name="size"/> bytes, or any size up to the protocol's limit when -1.
    /// <paramref name="nameOf"/> names an unexpected code; <paramref name="peer"/> names the other side.
    /// </summary>
    public static byte[] Read(UnixSocket socket, uint request, string name, int size, int timeoutMs, Func<uint, string> nameOf, string peer)
    {
        var fds = new List<SafeFd>();
        try
        {
            Span<byte> h = stackalloc byte[VhostUserWire.HeaderSize];
            if (Fill(socket, h, fds, timeoutMs, peer) is { } e1)
            {
                throw new VhostUserReplyException($"no reply to {name}: {e1}");
            }
            var (code, flags, got) = VhostUserCodec.ReadHeader(h);
            if (code != request)
            {
                throw new VhostUserReplyException($"unexpected reply: expected the reply to {name}, got {nameOf(code)}");
            }
            if (flags != VhostUserWire.ReplyFlags)
            {
                throw new VhostUserReplyException($"unexpected reply: reply to {name} has flags 0x{flags:x} (must be exactly 0x{VhostUserWire.ReplyFlags:x})");
            }
            if (size >= 0 ? got != (uint)size : got > VhostUserWire.MaxPayload)
            {
                string want = size >= 0 ? size.ToString(CultureInfo.InvariantCulture) : $"at most {VhostUserWire.MaxPayload}";
                throw new VhostUserReplyException($"unexpected reply: reply to {name} has {got} bytes, expected {want}");
            }
            var payload = got == 0 ? [] : new byte[got];
            if (Fill(socket, payload, fds, timeoutMs, peer) is { } e2)
            {
                throw new VhostUserReplyException($"truncated reply to {name}: {e2}");
            }
            if (fds.Count != 0)
            {
                throw new VhostUserReplyException($"unexpected reply: reply to {name} carries {fds.Count} descriptor(s), expected none");
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

    /// <summary>An 8-byte reply (a getter's value, or REPLY_ACK: 0 = success).</summary>
    public static ulong ReadU64(UnixSocket socket, uint request, string name, int timeoutMs, Func<uint, string> nameOf, string peer) =>
        BinaryPrimitives.ReadUInt64LittleEndian(Read(socket, request, name, VhostUserWire.U64Size, timeoutMs, nameOf, peer));

    /// <summary>Fills <paramref name="buffer"/> within the timeout; the failure as text, or null.</summary>
    private static string? Fill(UnixSocket socket, Span<byte> buffer, List<SafeFd> fds, int timeoutMs, string peer)
    {
        if (buffer.IsEmpty)
        {
            return null;
        }
        try
        {
            socket.ReceiveExact(buffer, fds, timeoutMs);
            return null;
        }
        catch (TimeoutException e)
        {
            return $"timed out ({e.Message})";
        }
        catch (EndOfStreamException e)
        {
            return $"the {peer} closed the connection ({e.Message})";
        }
        catch (IOException e)
        {
            return e.Message;
        }
        catch (InvalidDataException e)
        {
            return e.Message;
        }
        catch (ObjectDisposedException)
        {
            return "the socket is closed on this side";
        }
    }
}
