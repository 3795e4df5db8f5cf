using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The notify relay (DPDK ifc "ifc-noti"): one thread polls the kick eventfds of the running rings and
/// turns each kick into a doorbell write (<see cref="IVdpaDevice.KickVq"/>). The set changes only
/// through <see cref="Update"/>, which returns after the thread has switched to the new set, so the
/// caller may close a removed descriptor or stop a queue without a late kick racing it.
/// </summary>
internal sealed class KickRelay : IDisposable
{
    private readonly IVdpaDevice _device;
    private readonly Action<string> _log;
    private readonly EventFd _wake = EventFd.Create();
    private readonly object _lock = new(); // Monitor: Update waits for the thread's acknowledgement
    private readonly Thread _thread;
    private (int Qid, EventFd Kick)[] _pending = [];
    private long _requested;
    private long _acknowledged;
    private bool _stop;
    private long _kicks;

    public KickRelay(IVdpaDevice device, string name, Action<string> log)
    {
        _device = device;
        _log = log;
        _thread = new Thread(Loop) { IsBackground = true, Name = $"kick-relay {name}" };
        _thread.Start();
    }

    /// <summary>Kicks relayed so far.</summary>
    public long Kicks => Interlocked.Read(ref _kicks);

    /// <summary>Switches the relay to <paramref name="set"/> and waits until the thread uses it.</summary>
    public void Update((int Qid, EventFd Kick)[] set)
    {
        long gen;
        lock (_lock)
        {
            _pending = set;
            gen = ++_requested;
        }
        _wake.Signal();
        WaitFor(gen);
    }

    private void WaitFor(long gen)
    {
        var deadline = Environment.TickCount64 + 5000;
        lock (_lock)
        {
            while (_acknowledged < gen && _thread.IsAlive)
            {
                int left = (int)(deadline - Environment.TickCount64);
                if (left <= 0)
                {
                    _log("kick relay did not acknowledge a ring-set change within 5 s");
                    return;
                }
                Monitor.Wait(_lock, left);
            }
        }
    }

    private void Loop()
    {
        var poll = new PollSet();
        var current = Array.Empty<(int Qid, EventFd Kick)>();
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
                    fds[i + 1] = current[i].Kick.Fd;
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
                    current[i].Kick.TryConsume(out _);
                    Interlocked.Increment(ref _kicks);
                    try
                    {
                        _device.KickVq(current[i].Qid);
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        // A device error must not kill the relay thread (and with it the process).
                        _log($"ring {current[i].Qid}: kick failed: {e.Message}");
                    }
                }
                else if (poll.IsBroken(i + 1))
                {
                    // The front-end's eventfd is unusable: stop polling it (it would spin) until the next update.
                    _log($"ring {current[i].Qid}: kick fd broken, no longer relayed");
                    current = [.. current.Where((_, j) => j != i)];
                    rebuild = true;
                    break;
                }
            }
        }
    }

    public void Dispose()
    {
        long gen;
        lock (_lock)
        {
            _pending = [];
            _stop = true;
            gen = ++_requested;
        }
        _wake.Signal();
        WaitFor(gen);
        _thread.Join(5000);
        _wake.Dispose();
    }
}
