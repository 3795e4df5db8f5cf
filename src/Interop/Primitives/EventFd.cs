using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// A Linux eventfd: the kick/call primitive of vhost and VFIO. Signalling adds 1 to the counter;
/// consuming reads and clears it. Safe to signal from any thread.
/// </summary>
public sealed class EventFd : IDisposable
{
    private readonly SafeFd _fd;

    private EventFd(SafeFd fd) => _fd = fd;

    public int Fd => _fd.Fd;

    public SafeFd Handle => _fd;

    public static EventFd Create(bool nonBlocking = true)
    {
        int fd = Libc.eventfd(0, Libc.EFD_CLOEXEC | (nonBlocking ? Libc.EFD_NONBLOCK : 0));
        if (fd < 0)
        {
            throw Errno.Exception("eventfd");
        }
        return new EventFd(new SafeFd(fd));
    }

    /// <summary>Wraps a descriptor received from a peer (the wrapper owns it).</summary>
    public static EventFd Adopt(SafeFd fd) => new(fd);

    /// <summary>Adds 1 to the counter. Returns false if the write failed (e.g. the peer closed it).</summary>
    public unsafe bool Signal()
    {
        ulong one = 1;
        return Libc.write(_fd.Fd, &one, 8) == 8;
    }

    /// <summary>Reads and clears the counter without blocking (for a non-blocking eventfd).</summary>
    public unsafe bool TryConsume(out ulong value)
    {
        ulong v = 0;
        nint n = Libc.read(_fd.Fd, &v, 8);
        value = v;
        return n == 8;
    }

    /// <summary>Waits until the counter is non-zero or the timeout (ms, -1 = forever) passes.</summary>
    public bool WaitReadable(int timeoutMs) => Poll.WaitReadable(_fd.Fd, timeoutMs);

    public void Dispose() => _fd.Dispose();
}
