using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// poll(2) over several descriptors, reusing one array (no allocation per wait): the kick relay and
/// the vhost-user control loop wait on a handful of eventfds/sockets with it.
/// Safety contract: the caller keeps every descriptor in the set open while <see cref="Wait"/> runs
/// (change the set only from the waiting thread, between waits).
/// </summary>
public sealed class PollSet
{
    private Libc.PollFd[] _fds = [];

    public int Count { get; private set; }

    /// <summary>Replaces the set with <paramref name="fds"/> (all polled for input).</summary>
    public void Reset(ReadOnlySpan<int> fds)
    {
        if (_fds.Length < fds.Length)
        {
            _fds = new Libc.PollFd[fds.Length];
        }
        for (int i = 0; i < fds.Length; i++)
        {
            _fds[i] = new Libc.PollFd { Fd = fds[i], Events = Libc.POLLIN };
        }
        Count = fds.Length;
    }

    /// <summary>
    /// Waits until at least one descriptor is readable (or hung up / in error) or the timeout (ms, -1 =
    /// forever) passes. Returns the number of descriptors with events (0 on timeout).
    /// </summary>
    public unsafe int Wait(int timeoutMs)
    {
        fixed (Libc.PollFd* p = _fds)
        {
            for (int i = 0; i < Count; i++)
            {
                p[i].Revents = 0;
            }
            while (true)
            {
                int r = Libc.poll(p, (nuint)Count, timeoutMs);
                if (r >= 0)
                {
                    return r;
                }
                if (Errno.Last != Libc.EINTR)
                {
                    throw Errno.Exception("poll");
                }
            }
        }
    }

    /// <summary>Descriptor <paramref name="i"/> has data to read.</summary>
    public bool IsReadable(int i) => (_fds[i].Revents & Libc.POLLIN) != 0;

    /// <summary>Descriptor <paramref name="i"/> hung up, is in error or is not open (POLLHUP/ERR/NVAL).</summary>
    public bool IsBroken(int i) => (_fds[i].Revents & Poll.Broken) != 0;
}
