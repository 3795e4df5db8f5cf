using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>Where and how the back-end meets its front-end.</summary>
public sealed record VhostUserBackendOptions
{
    public required string SocketPath { get; init; }

    /// <summary>Client mode: connect to a listening front-end (QEMU server=on, virtio-user server=1) and reconnect.</summary>
    public bool Client { get; init; }

    /// <summary>Permission bits of the server socket file (default 0600).</summary>
    public uint SocketMode { get; init; } = 0x180;

    /// <summary>Owner uid of the server socket file (null: the process's).</summary>
    public uint? SocketOwner { get; init; }

    /// <summary>Group gid of the server socket file (null: the process's), e.g. the group QEMU runs in under libvirt.</summary>
    public uint? SocketGroup { get; init; }

    /// <summary>Delay between connection attempts in client mode.</summary>
    public TimeSpan ReconnectDelay { get; init; } = TimeSpan.FromSeconds(1);

    public VhostUserSessionOptions Session { get; init; } = new();
}

/// <summary>
/// A vhost-user back-end for one vDPA device on one socket: serves one front-end at a time and, when it
/// leaves, the device is reset and the next one is accepted (server) or reconnected to (client).
/// Connections arriving while one is served are refused with a log line.
/// </summary>
public sealed class VhostUserBackend : IDisposable
{
    private readonly IVdpaDevice _device;
    private readonly VhostUserBackendOptions _options;
    private readonly EventFd _stop = EventFd.Create();
    private UnixSocket? _listener;
    private Thread? _thread;
    private volatile VhostUserSession? _session;
    private long _connections;

    public VhostUserBackend(IVdpaDevice device, VhostUserBackendOptions options)
    {
        _device = device;
        _options = options;
    }

    /// <summary>Front-ends served so far.</summary>
    public long Connections => Interlocked.Read(ref _connections);

    /// <summary>The session in progress, if any (null once a session's teardown is complete).</summary>
    public VhostUserSession? Session => _session;

    private void Log(string s) => _options.Session.Log($"{_options.Session.Name}: {s}");

    /// <summary>Creates the socket (server mode, so errors surface here) and starts serving on a thread.</summary>
    public void Start()
    {
        UnixSocket.CheckPath(_options.SocketPath);
        if (!_options.Client)
        {
            _listener = UnixSocket.Listen(_options.SocketPath, _options.SocketMode, owner: _options.SocketOwner, group: _options.SocketGroup);
            Log($"listening on {_options.SocketPath} (mode {Convert.ToString(_options.SocketMode, 8)}" +
                $"{(_options.SocketOwner is { } u ? $", owner {u}" : "")}{(_options.SocketGroup is { } g ? $", group {g}" : "")})");
        }
        _thread = new Thread(Serve) { IsBackground = true, Name = $"vhost-user {_options.SocketPath}" };
        _thread.Start();
    }

    private void Serve()
    {
        bool waitingLogged = false;
        while (!_stop.WaitReadable(0))
        {
            UnixSocket? s;
            if (_listener is not null)
            {
                if (!WaitAny(_listener.Fd))
                {
                    return;
                }
                try
                {
                    s = _listener.Accept(0);
                }
                catch (IOException e)
                {
                    Log($"accept failed: {e.Message}");
                    _stop.WaitReadable(100);
                    continue;
                }
                if (s is null)
                {
                    continue;
                }
            }
            else
            {
                if (!UnixSocket.TryConnect(_options.SocketPath, out s, out int errno))
                {
                    if (!waitingLogged)
                    {
                        Log($"waiting for a front-end at {_options.SocketPath} (errno {errno}); retrying every {_options.ReconnectDelay.TotalMilliseconds} ms");
                        waitingLogged = true;
                    }
                    _stop.WaitReadable((int)_options.ReconnectDelay.TotalMilliseconds);
                    continue;
                }
                waitingLogged = false;
            }
            RunSession(s!);
        }
    }

    private bool WaitAny(int fd)
    {
        var p = new PollSet();
        p.Reset([fd, _stop.Fd]);
        p.Wait(-1);
        return !p.IsReadable(1);
    }

    private void RunSession(UnixSocket s)
    {
        long n = Interlocked.Increment(ref _connections);
        string who;
        try
        {
            var (pid, uid, _) = s.PeerCredentials;
            who = $"pid {pid} uid {uid}";
        }
        catch (IOException)
        {
            who = "unknown peer";
        }
        Log($"front-end #{n} connected ({who})");
        var conn = new VhostUserConnection(s, _options.Session.PayloadTimeoutMs);
        var session = new VhostUserSession(_device, conn, _options.Session);
        _session = session;
        try
        {
            session.Run(_stop, _listener?.Fd ?? -1, RefuseExtra);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A bug of ours must not take the whole back-end down; the device was reset by Run's cleanup.
            Log($"session failed: {e}");
        }
        finally
        {
            session.Dispose();
            _session = null; // only now: whoever sees no session sees its teardown complete (maps, fds, threads)
            Log($"front-end #{n} gone; device reset{(_listener is not null ? ", accepting the next one" : ", reconnecting")}");
        }
    }

    private void RefuseExtra()
    {
        try
        {
            using var extra = _listener!.Accept(0);
            if (extra is not null)
            {
                Log("refused a second front-end: this socket already serves one");
            }
        }
        catch (IOException e)
        {
            Log($"accept failed: {e.Message}");
        }
    }

    /// <summary>Stops serving: the current front-end is disconnected, the device reset, the socket removed.</summary>
    public void Stop()
    {
        _stop.Signal();
        _thread?.Join();
        _thread = null;
        _listener?.Dispose();
        _listener = null;
    }

    public void Dispose()
    {
        Stop();
        _stop.Dispose();
    }
}
