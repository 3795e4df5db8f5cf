using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Daemon;

/// <summary>Serves one control command: reads its arguments, writes the properties of the reply's "data" object.</summary>
public delegate void ControlHandler(ControlArgs args, Utf8JsonWriter data);

public sealed record ControlServerOptions
{
    public required string Path { get; init; }

    /// <summary>Peers with these uids are served besides the daemon's own uid.</summary>
    public IReadOnlyCollection<uint> AllowUids { get; init; } = [];

    /// <summary>Largest request accepted (bytes up to the newline).</summary>
    public int MaxRequestBytes { get; init; } = 64 * 1024;

    /// <summary>How long a client may take to send its request.</summary>
    public TimeSpan ReadTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Connections served at once; more are closed at once.</summary>
    public int MaxConnections { get; init; } = 32;
}

/// <summary>
/// The control socket: a Unix stream socket (mode 0600), one JSON request per connection
/// (<c>{"cmd":"dev add","args":{…}}</c> + newline), one JSON reply (<c>{"ok":true,"data":{…}}</c> or
/// <c>{"ok":false,"error":"…"}</c>). The peer's uid (SO_PEERCRED) must be the daemon's own or an
/// allowed one. Commands are registered with <see cref="Handle"/>, so other subsystems can add theirs.
/// </summary>
public sealed class ControlServer : IDisposable
{
    private const int SolSocket = 1;
    private const int SoPeerCred = 17;

    private readonly ControlServerOptions _options;
    private readonly DaemonLog _log;
    private readonly Dictionary<string, ControlHandler> _handlers = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stop = new();
    private readonly uint _ownUid = ProcessIdentity.EffectiveUid;
    private Socket? _listener;
    private Task? _acceptLoop;
    private int _active;
    private long _requests;
    private long _refusals;
    private bool _disposed;

    public ControlServer(ControlServerOptions options, DaemonLog? log = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        _log = log ?? DaemonLog.Stderr;
        Path = ControlPaths.Resolve(options.Path);
    }

    public string Path { get; }

    /// <summary>Requests answered (ok or error) since start.</summary>
    public long Requests => Interlocked.Read(ref _requests);

    /// <summary>Requests answered with a refusal: uid not allowed, malformed request, bad arguments, a device that said no.</summary>
    public long Refusals => Interlocked.Read(ref _refusals);

    private void CountRefusal()
    {
        Interlocked.Increment(ref _requests);
        Interlocked.Increment(ref _refusals);
    }

    /// <summary>Registers a command (before or after Start). A name may be registered once.</summary>
    public void Handle(string command, ControlHandler handler)
    {
        lock (_handlers)
        {
            if (!_handlers.TryAdd(command, handler))
            {
                throw new ArgumentException($"control command \"{command}\" is already registered");
            }
        }
    }

    public IReadOnlyCollection<string> Commands
    {
        get { lock (_handlers) { return _handlers.Keys.Order(StringComparer.Ordinal).ToArray(); } }
    }

    /// <summary>Binds the socket (refusing to steal one a live daemon listens on) and starts accepting.</summary>
    public void Start()
    {
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("the control socket needs Linux (SO_PEERCRED, Unix file modes)");
        }
        string dir = System.IO.Path.GetDirectoryName(Path)!;
        if (!Directory.Exists(dir))
        {
            Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        if (File.Exists(Path))
        {
            if (IsLive(Path))
            {
                throw new InvalidOperationException($"another daemon is already listening on {Path}");
            }
            if ((File.GetAttributes(Path) & FileAttributes.Directory) != 0)
            {
                throw new InvalidOperationException($"{Path} is a directory");
            }
            File.Delete(Path); // a stale socket left by a daemon that died
        }
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Bind(new UnixDomainSocketEndPoint(Path));
            // Owner-only. (A peer racing in before the chmod is still refused by its uid below.)
            File.SetUnixFileMode(Path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            s.Listen(64);
        }
        catch
        {
            s.Dispose();
            throw;
        }
        _listener = s;
        _acceptLoop = Task.Run(AcceptLoopAsync);
        _log.Info("control socket listening", ("path", Path), ("mode", "0600"), ("allow_uids", string.Join(',', _options.AllowUids)));
    }

    private static bool IsLive(string path)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private async Task AcceptLoopAsync()
    {
        var ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            Socket conn;
            try
            {
                conn = await _listener!.AcceptAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                _log.Warn("accept failed", ("error", e.Message));
                continue;
            }
            if (Interlocked.Increment(ref _active) > _options.MaxConnections)
            {
                Interlocked.Decrement(ref _active);
                _log.Warn("too many control connections; closing one", ("limit", _options.MaxConnections));
                conn.Dispose();
                continue;
            }
            _ = Task.Run(() =>
            {
                try
                {
                    Serve(conn);
                }
                finally
                {
                    conn.Dispose();
                    Interlocked.Decrement(ref _active);
                }
            });
        }
    }

    /// <summary>The peer's (pid, uid) from SO_PEERCRED.</summary>
    public static (int Pid, uint Uid) PeerCredentials(Socket s)
    {
        ArgumentNullException.ThrowIfNull(s);
        Span<byte> cred = stackalloc byte[12]; // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        int n = s.GetRawSocketOption(SolSocket, SoPeerCred, cred);
        if (n < 12)
        {
            throw new SocketException((int)SocketError.ProtocolOption);
        }
        return (BinaryPrimitives.ReadInt32LittleEndian(cred), BinaryPrimitives.ReadUInt32LittleEndian(cred[4..]));
    }

    private void Serve(Socket conn)
    {
        int pid;
        uint uid;
        try
        {
            (pid, uid) = PeerCredentials(conn);
        }
        catch (SocketException e)
        {
            _log.Warn("control peer credentials unavailable; refused", ("error", e.Message));
            return;
        }
        try
        {
            if (uid != _ownUid && !_options.AllowUids.Contains(uid))
            {
                _log.Warn("control request refused: uid not allowed", ("peer_uid", uid), ("peer_pid", pid));
                CountRefusal();
                Reply(conn, Error($"permission denied: uid {uid} may not use this daemon (it serves uid {_ownUid}; allow others with --allow-uid)"));
                return;
            }
            conn.ReceiveTimeout = (int)_options.ReadTimeout.TotalMilliseconds;
            conn.SendTimeout = (int)_options.ReadTimeout.TotalMilliseconds;
            byte[]? request = ReadRequest(conn, out string? readError);
            if (request is null)
            {
                if (readError is not null)
                {
                    _log.Warn("bad control request", ("peer_uid", uid), ("peer_pid", pid), ("error", readError));
                    CountRefusal();
                    Reply(conn, Error(readError));
                }
                return;
            }
            Reply(conn, Dispatch(request, uid, pid));
        }
        catch (SocketException e)
        {
            _log.Warn("control connection failed", ("peer_uid", uid), ("peer_pid", pid), ("error", e.Message));
        }
    }

    /// <summary>
    /// Serves one request line in-process, as from the daemon's own uid (the config file at start, before
    /// the socket listens): the same handlers, checks and counters as a request on the socket.
    /// </summary>
    public byte[] Invoke(ReadOnlySpan<byte> requestLine)
    {
        int end = requestLine.IndexOf((byte)'\n');
        return Dispatch((end >= 0 ? requestLine[..end] : requestLine).ToArray(), _ownUid, Environment.ProcessId);
    }

    private byte[]? ReadRequest(Socket conn, out string? error)
    {
        error = null;
        var buf = new byte[_options.MaxRequestBytes + 1];
        int have = 0;
        while (true)
        {
            int n;
            try
            {
                n = conn.Receive(buf, have, buf.Length - have, SocketFlags.None);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
            {
                error = $"request not received within {_options.ReadTimeout.TotalSeconds:0} s";
                return null;
            }
            if (n == 0)
            {
                break; // EOF: the request is what we have
            }
            int nl = Array.IndexOf(buf, (byte)'\n', have, n);
            have += n;
            if (nl >= 0)
            {
                have = nl;
                break;
            }
            if (have > _options.MaxRequestBytes)
            {
                error = $"request larger than {_options.MaxRequestBytes} bytes";
                return null;
            }
        }
        if (have == 0)
        {
            error = "empty request";
            return null;
        }
        if (have > _options.MaxRequestBytes)
        {
            error = $"request larger than {_options.MaxRequestBytes} bytes";
            return null;
        }
        return buf.AsSpan(0, have).ToArray();
    }

    private byte[] Dispatch(byte[] request, uint uid, int pid)
    {
        string cmd = "?";
        try
        {
            if (!System.Text.Unicode.Utf8.IsValid(request))
            {
                // JSON strings are read as UTF-16 later; invalid UTF-8 inside one would surface there as an
                // InvalidOperationException, so it is refused here, whole.
                throw new ControlException("request is not valid UTF-8");
            }
            using var doc = JsonDocument.Parse(request, new JsonDocumentOptions { MaxDepth = 8 });
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new ControlException("request must be a JSON object {\"cmd\":…,\"args\":{…}}");
            }
            JsonElement args = default;
            string? c = null;
            foreach (var p in root.EnumerateObject())
            {
                if (p.NameEquals("cmd") && c is null && p.Value.ValueKind == JsonValueKind.String)
                {
                    c = p.Value.GetString();
                }
                else if (p.NameEquals("args") && args.ValueKind == JsonValueKind.Undefined)
                {
                    args = p.Value;
                }
                else
                {
                    throw new ControlException($"unexpected or repeated field \"{ControlArgs.Truncate(p.Name)}\" in request");
                }
            }
            if (c is null || c.Length is 0 or > 64)
            {
                throw new ControlException("request needs \"cmd\": a command name string");
            }
            cmd = c;
            ControlHandler? handler;
            lock (_handlers)
            {
                _handlers.TryGetValue(cmd, out handler);
            }
            if (handler is null)
            {
                throw new ControlException($"unknown command \"{ControlArgs.Truncate(cmd)}\"");
            }
            var a = new ControlArgs(args);
            var data = new MemoryStream();
            using (var w = new Utf8JsonWriter(data))
            {
                w.WriteStartObject();
                handler(a, w);
                w.WriteEndObject();
            }
            _log.Debug("control request served", ("cmd", cmd), ("peer_uid", uid), ("peer_pid", pid));
            Interlocked.Increment(ref _requests);
            return Ok(data.ToArray());
        }
        catch (JsonException e)
        {
            CountRefusal();
            return Error($"request is not valid JSON: {e.Message}");
        }
        catch (Exception e) when (DaemonErrors.IsRefusal(e))
        {
            CountRefusal();
            _log.Info("control request refused", ("cmd", ControlArgs.Truncate(cmd)), ("peer_uid", uid), ("error", e.Message));
            return Error(e.Message);
        }
#pragma warning disable CA1031 // one failing command must not take the daemon down
        catch (Exception e)
#pragma warning restore CA1031
        {
            _log.Error("control command failed", ("cmd", ControlArgs.Truncate(cmd)), ("error", e.ToString()));
            Interlocked.Increment(ref _requests);
            return Error($"internal error: {e.Message}");
        }
    }

    private static byte[] Ok(byte[] data)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            w.WriteBoolean("ok", true);
            w.WritePropertyName("data");
            w.WriteRawValue(data, skipInputValidation: true);
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    private static byte[] Error(string message)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            w.WriteBoolean("ok", false);
            w.WriteString("error", message);
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    private static void Reply(Socket conn, byte[] body)
    {
        conn.Send(body);
        conn.Send("\n"u8);
        try
        {
            conn.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
            // the peer already went away
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _stop.Cancel();
        _listener?.Dispose();
        try
        {
            _acceptLoop?.Wait(TimeSpan.FromSeconds(2));
        }
        catch (AggregateException)
        {
            // the loop ends by cancellation
        }
        if (_listener is not null)
        {
            try
            {
                File.Delete(Path);
            }
            catch (IOException)
            {
                // already gone
            }
        }
        _stop.Dispose();
    }
}

/// <summary>Encoding helpers for building request lines.</summary>
public static class ControlWire
{
    public static byte[] Request(string command, Action<Utf8JsonWriter>? writeArgs)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            w.WriteString("cmd", command);
            w.WriteStartObject("args");
            writeArgs?.Invoke(w);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        ms.WriteByte((byte)'\n');
        return ms.ToArray();
    }

    internal static string Utf8(ReadOnlySpan<byte> b) => Encoding.UTF8.GetString(b);
}
