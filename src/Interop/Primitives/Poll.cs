using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>poll(2) on one or two descriptors (for many, see <see cref="PollSet"/>).</summary>
public static class Poll
{
    /// <summary>The revents bits that mean the descriptor is hung up, in error or invalid.</summary>
    public const short Broken = LibcSocket.POLLHUP | LibcSocket.POLLERR | LibcSocket.POLLNVAL;

    /// <summary>
    /// Waits up to <paramref name="timeoutMs"/> (0: just look, -1: forever) for <paramref name="events"/> on
    /// <paramref name="fd"/>; returns the revents (0 on timeout). EINTR restarts with the time that is left.
    /// </summary>
    public static unsafe short Wait(int fd, short events, int timeoutMs)
    {
        long deadline = Environment.TickCount64 + timeoutMs;
        while (true)
        {
            var p = new Libc.PollFd { Fd = fd, Events = events };
            int r = Libc.poll(&p, 1, timeoutMs);
            if (r >= 0)
            {
                return r > 0 ? p.Revents : (short)0;
            }
            if (Errno.Last != Libc.EINTR)
            {
                throw Errno.Exception("poll");
            }
            if (timeoutMs > 0)
            {
                timeoutMs = (int)Math.Max(0, deadline - Environment.TickCount64);
            }
        }
    }

    /// <summary>True when <paramref name="fd"/> becomes readable within <paramref name="timeoutMs"/>.</summary>
    public static bool WaitReadable(int fd, int timeoutMs) => (Wait(fd, Libc.POLLIN, timeoutMs) & Libc.POLLIN) != 0;

    /// <summary>
    /// Waits until either descriptor is readable (<paramref name="fd2"/> &lt; 0: ignored) or the timeout passes,
    /// for event-mode workers; EINTR and timeouts return too (the caller re-checks its work anyway).
    /// </summary>
    public static unsafe void WaitEither(int fd1, int fd2, int timeoutMs)
    {
        var p = stackalloc Libc.PollFd[2];
        p[0] = new Libc.PollFd { Fd = fd1, Events = Libc.POLLIN };
        p[1] = new Libc.PollFd { Fd = fd2, Events = Libc.POLLIN };
        Libc.poll(p, fd2 >= 0 ? 2u : 1u, timeoutMs);
    }
}
