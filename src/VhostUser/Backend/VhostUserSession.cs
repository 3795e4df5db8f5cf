using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>Tunables of a session (one front-end connection).</summary>
public sealed record VhostUserSessionOptions
{
    /// <summary>GET_MAX_MEM_SLOTS answer: regions accepted with ADD_MEM_REG.</summary>
    public int MaxMemSlots { get; init; } = 32;

    /// <summary>How long a started message may take to arrive completely.</summary>
    public int PayloadTimeoutMs { get; init; } = 5000;

    /// <summary>
    /// Longest wait for room on the back-end channel for one message: a front-end that leaves its end
    /// unread that long has its channel closed (only the channel; the session carries on).
    /// </summary>
    public int BackendSendTimeoutMs { get; init; } = 1000;

    /// <summary>One line per event (connection, errors, device configured/stopped).</summary>
    public Action<string> Log { get; init; } = _ => { };

    /// <summary>Prefix of every log line (e.g. the socket path).</summary>
    public string Name { get; init; } = "vhost-user";

    /// <summary>
    /// Inflight I/O tracking for a block device (INFLIGHT_SHMFD offered when set): gives request queue q its
    /// region of the front-end's inflight buffer, or null to take it back; called only while the queue is
    /// stopped. Whoever built the device's datapath provides it (e.g. <c>VirtioBlkEngine.SetInflight</c>).
    /// </summary>
    public Action<int, MemorySlice?>? InflightTarget { get; init; }
}

/// <summary>
/// The back-end side of one vhost-user connection, bound to an <see cref="IVdpaDevice"/>: the request
/// loop. It waits on the connection (and on the back-end channel while host-notifier acks are due),
/// passes each request to the <see cref="VhostUserRequestDispatcher"/>, which calls the
/// <see cref="IVhostUserBackendHandler"/> for the device (<see cref="VdpaBackendHandler"/> over a
/// <see cref="VhostUserVdpaBinding"/>), and sends the back-end channel's queued messages once the reply
/// is out. When it ends the device is always left reset with nothing mapped.
/// </summary>
public sealed class VhostUserSession : IDisposable
{
    private readonly VhostUserConnection _conn;
    private readonly VhostUserSessionOptions _options;
    private readonly VhostUserBackendChannel _channel;
    private readonly VhostUserVdpaBinding _binding;
    private readonly VdpaBackendHandler _handler;
    private readonly VhostUserRequestDispatcher _dispatcher;
    private bool _disposed;

    public VhostUserSession(IVdpaDevice device, VhostUserConnection connection, VhostUserSessionOptions? options = null)
    {
        _conn = connection;
        _options = options ?? new VhostUserSessionOptions();
        _channel = new VhostUserBackendChannel(_options, Log);
        _binding = new VhostUserVdpaBinding(device, _channel, _options, Log);
        _handler = new VdpaBackendHandler(_binding, _channel, _options, Log);
        _dispatcher = new VhostUserRequestDispatcher(connection, _handler, Log);
    }

    /// <summary>Virtio features offered: the device's without ACCESS_PLATFORM (rings use GPAs), plus bit 30.</summary>
    public ulong OfferedFeatures => _handler.OfferedFeatures;

    public ulong AckedFeatures => _binding.AckedFeatures;

    public ulong ProtocolFeatures => _dispatcher.ProtocolFeatures;

    /// <summary>True while the device is programmed and running for this front-end.</summary>
    public bool Configured => _binding.Configured;

    public int QueuePairs => _binding.QueuePairs;

    public GuestMemoryTable Memory => _binding.Memory;

    /// <summary>Kicks relayed to the device so far (0 when no relay ran).</summary>
    public long RelayedKicks => _binding.RelayedKicks;

    /// <summary>
    /// Live migration: whether every page the device writes is logged now (by the device, or by the software
    /// relay), whether LOG_ALL is acked, the pages this process marked in the current log (used rings, and
    /// with the relay the buffers too), and whether the relay is the one logging.
    /// </summary>
    public (bool DeviceLogging, bool LogAll, long UsedRingPagesMarked) DirtyLogState =>
        (_binding.DeviceLogging, _binding.Acked(IfcVdpa.Virtio.VirtioFeature.F_LOG_ALL), _binding.UsedRingPagesMarked);

    /// <summary>Whether the rings run through the software relay now, and the used entries it relayed so far.</summary>
    public (bool Relaying, long RelayedEntries) RelayState => (_binding.Relaying, _binding.RelayedEntries);

    /// <summary>Messages handled, and those rejected.</summary>
    public long Messages => _dispatcher.Messages;

    public long Errors => _dispatcher.Errors;

    private void Log(string s) => _options.Log($"{_options.Name}: {s}");

    /// <summary>
    /// Serves the connection until the front-end disconnects, a fatal protocol error happens or
    /// <paramref name="stop"/> becomes readable. <paramref name="extra"/> (e.g. the listening socket) is
    /// polled too and <paramref name="onExtra"/> is called when it is readable.
    /// </summary>
    public void Run(EventFd? stop = null, int extra = -1, Action? onExtra = null)
    {
        var poll = new PollSet();
        var fds = new List<int> { _conn.Socket.Fd };
        int stopAt = -1, extraAt = -1;
        if (stop is not null)
        {
            stopAt = fds.Count;
            fds.Add(stop.Fd);
        }
        if (extra >= 0)
        {
            extraAt = fds.Count;
            fds.Add(extra);
        }
        int ackAt = fds.Count; // the back-end channel, polled only while acks are outstanding
        int polledAck = -1;
        poll.Reset(fds.ToArray());
        try
        {
            while (true)
            {
                _channel.CloseRetired();
                int wantAck = _channel.AckFd;
                if (wantAck != polledAck)
                {
                    polledAck = wantAck;
                    var set = fds.ToArray();
                    poll.Reset(wantAck >= 0 ? [.. set, wantAck] : set);
                }
                poll.Wait(-1);
                if (stopAt >= 0 && poll.IsReadable(stopAt))
                {
                    Log("stopping");
                    return;
                }
                if (polledAck >= 0 && (poll.IsReadable(ackAt) || poll.IsBroken(ackAt)))
                {
                    _channel.ReadAck();
                }
                if (!poll.IsReadable(0) && !poll.IsBroken(0))
                {
                    // Only another connection attempt is pending. The connection is looked at first, so a
                    // front-end that closed just before its successor connected is not mistaken for busy.
                    if (extraAt >= 0 && poll.IsReadable(extraAt))
                    {
                        onExtra?.Invoke();
                    }
                    continue;
                }
                if (!ServeOne())
                {
                    return;
                }
            }
        }
        finally
        {
            Teardown();
            _conn.Dispose(); // the front-end sees the connection close
        }
    }

    /// <summary>Receives and handles one message; false when the session ends.</summary>
    private bool ServeOne()
    {
        VhostUserMessage? m;
        try
        {
            m = _conn.Receive();
        }
        catch (VhostUserProtocolException e)
        {
            _dispatcher.CountError();
            Log($"protocol error, closing the connection: {e.Message}");
            return false;
        }
        catch (IOException e)
        {
            Log($"connection error: {e.Message}");
            return false;
        }
        if (m is null)
        {
            Log("front-end disconnected");
            return false;
        }
        try
        {
            return Process(m);
        }
        catch (VhostUserProtocolException e)
        {
            _dispatcher.CountError();
            Log($"closing the connection: {e.Message}");
            return false;
        }
    }

    /// <summary>
    /// Handles one message: validate sizes and descriptors, dispatch, reply or ack, then send what the
    /// back-end channel has queued. Returns false when the connection must be closed.
    /// </summary>
    public bool Process(VhostUserMessage m)
    {
        bool keep = _dispatcher.Process(m);
        // After the reply: the front-end may be blocked reading it and only then service its back-end
        // channel (QEMU does so from its main loop).
        _channel.Flush(askAcks: keep && _dispatcher.Has(VhostUserProtocolFeature.REPLY_ACK));
        return keep;
    }

    private void Teardown()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _binding.Dispose();
        _channel.Dispose();
    }

    public void Dispose()
    {
        Teardown();
        _conn.Dispose();
    }
}
