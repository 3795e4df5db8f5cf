namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// One thread that waits on a set of eventfds and, for each signal it consumes, runs a handler with the
/// eventfd's tag (a queue or vector number): the vhost-user kick relay (kick eventfd -> doorbell), the
/// front-end's interrupts (call eventfd -> driver callback) and the VFIO MSI-X relay (vector eventfd -> sink)
/// are all this loop.
/// <list type="bullet">
/// <item>The set changes only through <see cref="Update"/>, which returns once the thread uses the new
/// set: after it, no handler runs for a removed eventfd, so the caller may close it.</item>
/// <item>A handler that throws is reported through <c>onError</c>; the thread carries on.</item>
/// <item>An eventfd that hangs up or is invalid is dropped from the set (it would make the wait spin)
/// until the next <see cref="Update"/>, and reported through <c>onBroken</c>.</item>
/// <item>No allocation and no lock per signal; after <see cref="Dispose"/> returns no handler runs again
/// (called from a handler, it stops the loop when that handler returns).</item>
/// </list>
/// </summary>
public sealed class EventFdFanIn : IDisposable
{
    /// <summary>Longest wait for the thread to take a new set before <see cref="Update"/> gives up (and logs).</summary>
    private const int AcknowledgeTimeoutMs = 5000;

    private readonly Action<int> _onSignal;
    private readonly Action<int, Exception> _onError;
    private readonly Action<int> _onBroken;
    private readonly Action<string> _log;
    private readonly EventFd _wake = EventFd.Create();
    private readonly object _lock = new(); // Monitor: Update waits for the thread's acknowledgement
    private readonly Thread _thread;
    private (int Tag, EventFd Fd)[] _pending = [];
    private long _requested;
    private long _acknowledged;
    private bool _stop;
    private int _disposed;

    /// <param name="name">Thread name.</param>
    /// <param name="onSignal">Runs on the thread for every consumed signal, with the eventfd's tag.</param>
    /// <param name="onError">A handler threw (anything but OutOfMemoryException).</param>
    /// <param name="onBroken">An eventfd hung up and is no longer polled.</param>
    /// <param name="log">The loop's own trouble (a set change not acknowledged in time).</param>
    /// <param name="initial">The first set.</param>
    public EventFdFanIn(string name, Action<int> onSignal, Action<int, Exception> onError, Action<int> onBroken, Action<string> log,
        (int Tag, EventFd Fd)[]? initial = null)
    {
        _onSignal = onSignal;
        _onError = onError;
        _onBroken = onBroken;
        _log = log;
        _pending = initial ?? [];
        _requested = 1;
        _thread = new Thread(Loop) { IsBackground = true, Name = name };
        _thread.Start();
        _wake.Signal();
    }

    /// <summary>Switches to <paramref name="set"/> and waits until the thread uses it.</summary>
    public void Update((int Tag, EventFd Fd)[] set) => Request(set, stop: false);

    private void Request((int Tag, EventFd Fd)[] set, bool stop)
    {
        long gen;
        lock (_lock)
        {
            _pending = set;
            _stop |= stop;
            gen = ++_requested;
        }
        _wake.Signal();
        var deadline = Environment.TickCount64 + AcknowledgeTimeoutMs;
        lock (_lock)
        {
            while (_acknowledged < gen && _thread.IsAlive)
            {
                int left = (int)(deadline - Environment.TickCount64);
                if (left <= 0)
                {
                    _log($"{_thread.Name}: a set change was not acknowledged within {AcknowledgeTimeoutMs / 1000} s");
                    return;
                }
                Monitor.Wait(_lock, left);
            }
        }
    }

    private void Loop()
    {
        var poll = new PollSet();
        var current = Array.Empty<(int Tag, EventFd Fd)>();
        var fds = new int[1];
        bool rebuild = true;
        while (true)
        {
            if (rebuild)
            {
                if (fds.Length != current.Length + 1)
                {
                    fds = new int[current.Length + 1];
                }
                fds[0] = _wake.Fd;
                for (int i = 0; i < current.Length; i++)
                {
                    fds[i + 1] = current[i].Fd.Fd;
                }
                poll.Reset(fds);
                rebuild = false;
            }
            poll.Wait(-1);
            if (poll.IsReadable(0))
            {
                _wake.TryConsume(out _);
                lock (_lock)
                {
                    current = _pending;
                    _acknowledged = _requested;
                    Monitor.PulseAll(_lock);
                    if (_stop)
                    {
                        return;
                    }
                }
                rebuild = true;
                continue;
            }
            for (int i = 0; i < current.Length; i++)
            {
                if (poll.IsReadable(i + 1))
                {
                    if (current[i].Fd.TryConsume(out _))
                    {
                        Run(current[i].Tag);
                        if (Volatile.Read(ref _disposed) != 0)
                        {
                            _wake.Dispose(); // disposed by the handler itself: the thread closes what Dispose could not
                            return;
                        }
                    }
                }
                else if (poll.IsBroken(i + 1))
                {
                    _onBroken(current[i].Tag);
                    current = [.. current.Where((_, j) => j != i)];
                    rebuild = true;
                    break;
                }
            }
        }
    }

    private void Run(int tag)
    {
        try
        {
            _onSignal(tag);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A handler's failure must not kill the thread (and with it the process).
            _onError(tag, e);
        }
    }

    /// <summary>Stops the thread; no handler runs after this returns. The eventfds in the set are the caller's.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        if (Thread.CurrentThread == _thread)
        {
            return; // from a handler: the loop sees _disposed when the handler returns, closes its wake fd and ends
        }
        Request([], stop: true);
        _thread.Join(AcknowledgeTimeoutMs);
        _wake.Dispose();
    }
}
