using System.Net.Sockets;
using System.Text.Json;

namespace IfcVdpa.Daemon;

/// <summary>No daemon answers on the control socket.</summary>
public sealed class ControlUnavailableException(string message) : Exception(message);

/// <summary>The daemon refused the request; the message is its one-line reason.</summary>
public sealed class ControlRefusedException(string message) : Exception(message);

/// <summary>Client side of the control socket: one request, one reply.</summary>
public static class ControlClient
{
    /// <summary>Largest reply accepted.</summary>
    public const int MaxReplyBytes = 4 * 1024 * 1024;

    /// <summary>Sends <paramref name="command"/> and returns the reply's "data" object.</summary>
    public static JsonElement Request(string path, string command, Action<Utf8JsonWriter>? writeArgs = null, TimeSpan? timeout = null)
    {
        byte[] request = ControlWire.Request(command, writeArgs);
        int ms = (int)(timeout ?? TimeSpan.FromSeconds(30)).TotalMilliseconds;
        if (!File.Exists(path))
        {
            throw new ControlUnavailableException($"no daemon is running (no control socket at {path}); start one with \"ifcvf daemon\"");
        }
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.AddressNotAvailable)
        {
            throw new ControlUnavailableException($"no daemon is listening on {path} (stale socket?); start one with \"ifcvf daemon\"");
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AccessDenied)
        {
            throw new ControlUnavailableException($"permission denied on control socket {path}");
        }
        s.SendTimeout = ms;
        s.ReceiveTimeout = ms;
        s.Send(request);
        var reply = new MemoryStream();
        var buf = new byte[16 * 1024];
        try
        {
            int n;
            while ((n = s.Receive(buf)) > 0)
            {
                reply.Write(buf, 0, n);
                if (reply.Length > MaxReplyBytes)
                {
                    throw new ControlRefusedException($"reply larger than {MaxReplyBytes} bytes");
                }
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut)
        {
            throw new ControlUnavailableException($"the daemon on {path} did not answer within {ms / 1000} s");
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset && reply.Length > 0)
        {
            // the daemon closed after a complete reply
        }
        if (reply.Length == 0)
        {
            throw new ControlUnavailableException($"the daemon on {path} closed the connection without a reply");
        }
        return ParseReply(reply.ToArray());
    }

    /// <summary>A reply's "data" object; a refusal becomes <see cref="ControlRefusedException"/>.</summary>
    public static JsonElement ParseReply(byte[] reply)
    {
        using var doc = JsonDocument.Parse(reply);
        var root = doc.RootElement;
        if (root.TryGetProperty("ok", out var ok) && ok.ValueKind == JsonValueKind.True)
        {
            return root.TryGetProperty("data", out var data) ? data.Clone() : default;
        }
        string msg = root.TryGetProperty("error", out var err) && err.ValueKind == JsonValueKind.String ? err.GetString()! : "request failed";
        throw new ControlRefusedException(msg);
    }
}
