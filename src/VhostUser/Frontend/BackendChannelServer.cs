using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Frontend;

/// <summary>
/// The front-end's end of the back-end channel (SET_BACKEND_REQ_FD), served on its own thread: config
/// changes and host notifiers, each acked when the back-end asked for it (as QEMU does: a back-end that
/// set NEED_REPLY waits for it). A malformed message (bad header, truncated) or a back-end that does not
/// take its acks closes the channel only; the main connection keeps working.
/// </summary>
internal sealed class BackendChannelServer : IDisposable
{
    private readonly VhostUserConnection _conn;
    private readonly HostNotifierTable _notifiers;
    private readonly bool _hostNotifiers;
    private readonly Action _configChanged;
    private readonly Action<string> _log;
    private readonly EventFd _stop = EventFd.Create();
    private readonly Thread _thread;
    private long _messages;
    private long _errors;

    /// <summary>Starts serving <paramref name="connection"/>; <paramref name="hostNotifiers"/>: HOST_NOTIFIER was negotiated.</summary>
    public BackendChannelServer(string name, VhostUserConnection connection, HostNotifierTable notifiers, bool hostNotifiers,
        Action configChanged, Action<string> log)
    {
        _conn = connection;
        _notifiers = notifiers;
        _hostNotifiers = hostNotifiers;
        _configChanged = configChanged;
        _log = log;
        _thread = new Thread(Loop) { IsBackground = true, Name = $"{name} back-end channel" };
        _thread.Start();
    }

    /// <summary>Requests received.</summary>
    public long Messages => Interlocked.Read(ref _messages);

    /// <summary>Requests refused (bad host-notifier areas, unknown requests) and channel failures.</summary>
    public long Errors => Interlocked.Read(ref _errors);

    private void Loop()
    {
        var poll = new PollSet();
        poll.Reset([_conn.Socket.Fd, _stop.Fd]);
        while (true)
        {
            poll.Wait(-1);
            if (poll.IsReadable(1))
            {
                return;
            }
            if (!poll.IsReadable(0) && !poll.IsBroken(0))
            {
                continue;
            }
            VhostUserMessage? m;
            try
            {
                m = _conn.Receive();
            }
            catch (VhostUserProtocolException e)
            {
                _log($"back-end channel: protocol error, closing the channel: {e.Message}");
                Interlocked.Increment(ref _errors);
                _conn.Socket.Shutdown();
                return;
            }
            catch (IOException e)
            {
                _log($"back-end channel: {e.Message}");
                return;
            }
            if (m is null)
            {
                _log("back-end channel closed by the back-end");
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

    /// <summary>Serves one request; false when the channel was closed because the back-end does not take its acks.</summary>
    private bool Handle(VhostUserMessage m)
    {
        Interlocked.Increment(ref _messages);
        uint code = (uint)m.Request;
        string? error = (VhostUserBackendRequest)code switch
        {
            VhostUserBackendRequest.CONFIG_CHANGE_MSG =>
                m.Payload.Length != 0 ? $"CONFIG_CHANGE_MSG with a {m.Payload.Length}-byte payload (expected none)"
                : m.Fds.Count != 0 ? $"CONFIG_CHANGE_MSG carries {m.Fds.Count} descriptor(s)"
                : null,
            VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG => HostNotifier(m),
            VhostUserBackendRequest.IOTLB_MSG => "IOTLB_MSG: no IOTLB here (ACCESS_PLATFORM is never negotiated with the back-end)",
            _ => $"unknown back-end request {code}",
        };
        if (error is not null)
        {
            Interlocked.Increment(ref _errors);
            _log($"back-end channel: refused: {error}");
        }
        if (m.NeedReply)
        {
            try
            {
                _conn.ReplyU64(m.Request, error is null ? 0UL : 1UL);
            }
            catch (IOException e)
            {
                _log($"back-end channel: cannot ack: {e.Message}");
            }
            catch (VhostUserProtocolException e)
            {
                // The ack could not go out within the timeout: the back-end asks for acks but does not read
                // them. Stop serving it (the main connection is not affected).
                _log($"back-end channel: the back-end does not read its acks ({e.Message}); closing the channel");
                Interlocked.Increment(ref _errors);
                _conn.Socket.Shutdown();
                return false;
            }
        }
        if (error is null && (VhostUserBackendRequest)code == VhostUserBackendRequest.CONFIG_CHANGE_MSG)
        {
            _configChanged();
        }
        return true;
    }

    private string? HostNotifier(VhostUserMessage m)
    {
        if (!_hostNotifiers)
        {
            return "VRING_HOST_NOTIFIER_MSG without the HOST_NOTIFIER protocol feature";
        }
        if (m.Payload.Length != VringArea.WireSize)
        {
            return $"VRING_HOST_NOTIFIER_MSG payload is {m.Payload.Length} bytes, expected {VringArea.WireSize}";
        }
        return _notifiers.Apply(VringArea.Read(m.Payload), m.Fds, _log);
    }

    /// <summary>Stops the thread (the connection itself is the client's).</summary>
    public void Dispose()
    {
        _stop.Signal();
        _thread.Join();
        _stop.Dispose();
    }
}
