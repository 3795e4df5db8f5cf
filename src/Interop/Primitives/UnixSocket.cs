using System.Text;
using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// An AF_UNIX SOCK_STREAM socket that can pass file descriptors (SCM_RIGHTS), as vhost-user needs:
/// .NET has no managed API for ancillary data. Blocking I/O, except <see cref="TrySend"/> (a send bounded in
/// time, for peers that may stop reading); waits with timeouts use poll(2).
///
/// Safety contract: every received descriptor is wrapped in a <see cref="SafeFd"/> at once (also when
/// the control data was truncated), so the caller owns and closes each of them; buffers handed to the
/// kernel are pinned spans sized by the call itself.
/// </summary>
public sealed unsafe class UnixSocket : IDisposable
{
    /// <summary>Most descriptors accepted with one message (DPDK takes 8, rust-vmm 32).</summary>
    public const int MaxFdsPerMessage = 32;

    private readonly SafeFd _fd;
    private readonly string? _boundPath;

    private UnixSocket(SafeFd fd, string? boundPath)
    {
        _fd = fd;
        _boundPath = boundPath;
    }

    public int Fd => _fd.Fd;

    public SafeFd Handle => _fd;

    /// <summary>The path this listening socket is bound to (removed on dispose), or null.</summary>
    public string? BoundPath => _boundPath;

    /// <summary>
    /// Creates a listening socket at <paramref name="path"/> with file mode <paramref name="mode"/> (octal permission bits, e.g. 0x180 = 0600).
    /// A stale socket file (nobody accepting on it) is removed first; a live one, or a path that
    /// is not a socket, is an error.
    /// </summary>
    public static UnixSocket Listen(string path, uint mode, int backlog = 16, uint? owner = null, uint? group = null)
    {
        var addr = MakeAddress(path);
        var existing = FileStatus.OfPath(path);
        if (existing is { } st)
        {
            if (!st.IsSocket)
            {
                throw new IOException($"{path} exists and is not a socket");
            }
            if (TryConnect(path, out var live, out _))
            {
                live!.Dispose();
                throw new IOException($"{path} is in use by another server");
            }
            File.Delete(path);
        }
        var fd = NewSocket();
        if (LibcSocket.bind(fd.Fd, &addr, (uint)sizeof(LibcSocket.SockaddrUn)) != 0)
        {
            var e = Errno.Exception($"bind({path})");
            fd.Dispose();
            throw e;
        }
        try
        {
            // Before listen(): nobody can connect yet, so owner, group and mode are in place before the first peer.
            FileStatus.SetOwner(path, owner, group);
            FileStatus.SetMode(path, mode);
            if (LibcSocket.listen(fd.Fd, backlog) != 0)
            {
                throw Errno.Exception($"listen({path})");
            }
        }
        catch
        {
            fd.Dispose();
            File.Delete(path);
            throw;
        }
        return new UnixSocket(fd, path);
    }

    /// <summary>Accepts one pending connection, or returns null if none arrives within the timeout.</summary>
    public UnixSocket? Accept(int timeoutMs)
    {
        if (!Poll.WaitReadable(_fd.Fd, timeoutMs))
        {
            return null;
        }
        int c = LibcSocket.accept4(_fd.Fd, 0, 0, LibcSocket.SOCK_CLOEXEC);
        if (c < 0)
        {
            int e = Errno.Last;
            if (e == Libc.EAGAIN || e == Libc.EINTR || e == LibcSocket.ECONNRESET)
            {
                return null;
            }
            throw Errno.Exception("accept4");
        }
        return new UnixSocket(new SafeFd(c), null);
    }

    /// <summary>Connects to a listening socket; false with the errno when nobody listens there.</summary>
    public static bool TryConnect(string path, out UnixSocket? socket, out int errno)
    {
        var addr = MakeAddress(path);
        var fd = NewSocket();
        if (LibcSocket.connect(fd.Fd, &addr, (uint)sizeof(LibcSocket.SockaddrUn)) != 0)
        {
            errno = Errno.Last;
            fd.Dispose();
            socket = null;
            return false;
        }
        errno = 0;
        socket = new UnixSocket(fd, null);
        return true;
    }

    public static UnixSocket Connect(string path)
    {
        if (!TryConnect(path, out var s, out int e))
        {
            throw new IOException($"connect({path}) failed: errno {e}", e);
        }
        return s!;
    }

    /// <summary>Wraps a connected socket received from a peer (the result owns it); fails if it is not a socket.</summary>
    public static UnixSocket Adopt(SafeFd fd)
    {
        if (!FileStatus.OfFd(fd.Fd).IsSocket)
        {
            throw new IOException($"fd {fd.Fd} is not a socket");
        }
        return new UnixSocket(fd, null);
    }

    /// <summary>A connected pair (socketpair(2)), for tests and in-process peers.</summary>
    public static (UnixSocket A, UnixSocket B) CreatePair()
    {
        int* sv = stackalloc int[2];
        if (LibcSocket.socketpair(LibcSocket.AF_UNIX, LibcSocket.SOCK_STREAM | LibcSocket.SOCK_CLOEXEC, 0, sv) != 0)
        {
            throw Errno.Exception("socketpair");
        }
        return (new UnixSocket(new SafeFd(sv[0]), null), new UnixSocket(new SafeFd(sv[1]), null));
    }

    /// <summary>
    /// One recvmsg(2) into <paramref name="buffer"/>. Received descriptors are appended to
    /// <paramref name="fds"/>; <paramref name="controlTruncated"/> reports MSG_CTRUNC (descriptors were
    /// lost: a protocol error). Returns the byte count, 0 at end of stream.
    /// </summary>
    public int Receive(Span<byte> buffer, List<SafeFd> fds, out bool controlTruncated)
    {
        const int controlBytes = 16 + (MaxFdsPerMessage * 4); // CMSG_SPACE(32 * sizeof(int))
        ulong* control = stackalloc ulong[controlBytes / 8];
        fixed (byte* p = buffer)
        {
            var iov = new LibcSocket.IoVec { Base = p, Length = (nuint)buffer.Length };
            var msg = new LibcSocket.MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = controlBytes };
            nint n;
            while (true)
            {
                n = LibcSocket.recvmsg(_fd.Fd, &msg, LibcSocket.MSG_CMSG_CLOEXEC);
                if (n >= 0 || Errno.Last != Libc.EINTR)
                {
                    break;
                }
            }
            if (n < 0)
            {
                if (Errno.Last == LibcSocket.ECONNRESET)
                {
                    controlTruncated = false;
                    return 0;
                }
                throw Errno.Exception("recvmsg");
            }
            CollectFds((byte*)control, (int)msg.ControlLen, fds);
            controlTruncated = (msg.Flags & LibcSocket.MSG_CTRUNC) != 0;
            return (int)n;
        }
    }

    /// <summary>
    /// Fills <paramref name="buffer"/> completely (several recvmsg calls if the stream delivers it in
    /// pieces), collecting descriptors. Throws <see cref="EndOfStreamException"/> when the peer closes
    /// (the message says how many bytes had arrived), <see cref="TimeoutException"/> when no byte arrives
    /// for <paramref name="timeoutMs"/> (-1 = wait forever) and <see cref="InvalidDataException"/> on
    /// MSG_CTRUNC (the descriptors that did arrive are still in <paramref name="fds"/>).
    /// </summary>
    public void ReceiveExact(Span<byte> buffer, List<SafeFd> fds, int timeoutMs)
    {
        int got = 0;
        while (got < buffer.Length)
        {
            if (timeoutMs >= 0 && !Poll.WaitReadable(_fd.Fd, timeoutMs) && !HasHangup())
            {
                throw new TimeoutException($"no data for {timeoutMs} ms ({got} of {buffer.Length} bytes received)");
            }
            int n = Receive(buffer[got..], fds, out bool truncated);
            if (truncated)
            {
                throw new InvalidDataException("control data truncated (MSG_CTRUNC): too many descriptors");
            }
            if (n == 0)
            {
                throw new EndOfStreamException($"peer closed after {got} of {buffer.Length} bytes");
            }
            got += n;
        }
    }

    /// <summary>
    /// Sends <paramref name="data"/> with <paramref name="fds"/> attached to its first byte (one sendmsg;
    /// continues without descriptors if the kernel takes only part of the data). Blocks while the peer's
    /// buffer is full: use <see cref="TrySend"/> towards a peer that may stop reading.
    /// </summary>
    public void Send(ReadOnlySpan<byte> data, ReadOnlySpan<int> fds = default) => SendCore(data, fds, -1);

    /// <summary>
    /// Sends one whole message, waiting at most <paramref name="timeoutMs"/> (0 = only what fits now) for
    /// room in the socket buffer: every sendmsg is non-blocking (MSG_DONTWAIT) and the waits in between
    /// are poll(2) for POLLOUT up to the deadline. Returns true when all of <paramref name="data"/> went
    /// out (<paramref name="fds"/> attached to its first byte), false when the deadline passed first.
    /// A message is never left half sent on a live stream: if the kernel had taken part of it when the
    /// deadline passed, the socket is shut down (both directions) before returning false, so the peer sees
    /// the stream end inside that message and can never read a fragment as the start of a message. When
    /// nothing was taken the socket is left as it was. Throws <see cref="IOException"/> when the peer is
    /// gone (EPIPE, ECONNRESET) or on any other error.
    /// </summary>
    public bool TrySend(ReadOnlySpan<byte> data, ReadOnlySpan<int> fds, int timeoutMs)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(timeoutMs);
        return SendCore(data, fds, timeoutMs);
    }

    /// <summary>timeoutMs &lt; 0: blocking sends until done; otherwise the bounded send of <see cref="TrySend"/>.</summary>
    private bool SendCore(ReadOnlySpan<byte> data, ReadOnlySpan<int> fds, int timeoutMs)
    {
        if (fds.Length > MaxFdsPerMessage)
        {
            throw new ArgumentException($"at most {MaxFdsPerMessage} descriptors per message");
        }
        int space = fds.Length == 0 ? 0 : LibcSocket.CmsgSpace(fds.Length * 4);
        ulong* control = stackalloc ulong[(space / 8) + 1];
        if (fds.Length > 0)
        {
            var h = (LibcSocket.CmsgHdr*)control;
            h->Len = (nuint)LibcSocket.CmsgLen(fds.Length * 4);
            h->Level = LibcSocket.SOL_SOCKET;
            h->Type = LibcSocket.SCM_RIGHTS;
            int* d = (int*)((byte*)control + 16);
            for (int i = 0; i < fds.Length; i++)
            {
                d[i] = fds[i];
            }
        }
        bool bounded = timeoutMs >= 0;
        int flags = LibcSocket.MSG_NOSIGNAL | (bounded ? LibcSocket.MSG_DONTWAIT : 0);
        long deadline = bounded ? Environment.TickCount64 + timeoutMs : 0;
        int sent = 0;
        fixed (byte* p = data)
        {
            do
            {
                var iov = new LibcSocket.IoVec { Base = p + sent, Length = (nuint)(data.Length - sent) };
                var msg = new LibcSocket.MsgHdr { Iov = &iov, IovLen = 1 };
                if (sent == 0 && space > 0)
                {
                    msg.Control = control;
                    msg.ControlLen = (nuint)space;
                }
                nint n = LibcSocket.sendmsg(_fd.Fd, &msg, flags);
                if (n >= 0)
                {
                    sent += (int)n;
                    continue;
                }
                int e = Errno.Last;
                if (e == Libc.EINTR)
                {
                    continue;
                }
                if (!bounded || e != Libc.EAGAIN)
                {
                    throw Errno.Exception("sendmsg");
                }
                long left = deadline - Environment.TickCount64;
                if (left <= 0 || !WaitWritable((int)left))
                {
                    if (sent > 0)
                    {
                        // Part of the message is in the peer's buffer: end the stream rather than let the
                        // next message follow a fragment.
                        LibcSocket.shutdown(_fd.Fd, LibcSocket.SHUT_RDWR);
                    }
                    return false;
                }
            }
            while (sent < data.Length);
        }
        return true;
    }

    /// <summary>poll(2) for POLLOUT up to <paramref name="timeoutMs"/>; true when writable or broken (the next send reports which).</summary>
    private bool WaitWritable(int timeoutMs) => Poll.Wait(_fd.Fd, LibcSocket.POLLOUT, timeoutMs) != 0;

    /// <summary>The peer's process and user (SO_PEERCRED).</summary>
    public (int Pid, uint Uid, uint Gid) PeerCredentials
    {
        get
        {
            LibcSocket.UCred c;
            uint len = (uint)sizeof(LibcSocket.UCred);
            if (LibcSocket.getsockopt(_fd.Fd, LibcSocket.SOL_SOCKET, LibcSocket.SO_PEERCRED, &c, &len) != 0)
            {
                throw Errno.Exception("getsockopt(SO_PEERCRED)");
            }
            return (c.Pid, c.Uid, c.Gid);
        }
    }

    /// <summary>True when the peer hung up or the socket has an error (poll without waiting).</summary>
    public bool HasHangup() => (Poll.Wait(_fd.Fd, Libc.POLLIN, 0) & Poll.Broken) != 0;

    /// <summary>Shuts both directions down: a thread blocked in a receive on this socket returns.</summary>
    public void Shutdown() => LibcSocket.shutdown(_fd.Fd, LibcSocket.SHUT_RDWR);

    public void Dispose()
    {
        _fd.Dispose();
        if (_boundPath is not null)
        {
            try
            {
                File.Delete(_boundPath);
            }
            catch (IOException)
            {
                // Already gone or replaced: nothing to clean up.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
    }

    /// <summary>Throws <see cref="ArgumentException"/> if <paramref name="path"/> cannot be a socket address.</summary>
    public static void CheckPath(string path) => MakeAddress(path);

    private static SafeFd NewSocket()
    {
        int fd = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_STREAM | LibcSocket.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            throw Errno.Exception("socket(AF_UNIX)");
        }
        return new SafeFd(fd);
    }

    private static LibcSocket.SockaddrUn MakeAddress(string path)
    {
        int len = Encoding.UTF8.GetByteCount(path);
        if (len == 0 || len >= LibcSocket.SunPathLength)
        {
            throw new ArgumentException($"socket path must be 1..{LibcSocket.SunPathLength - 1} bytes: {path}");
        }
        var a = new LibcSocket.SockaddrUn { Family = LibcSocket.AF_UNIX };
        Encoding.UTF8.GetBytes(path, new Span<byte>(a.Path, LibcSocket.SunPathLength));
        return a;
    }

    private static void CollectFds(byte* control, int length, List<SafeFd> fds)
    {
        int off = 0;
        while (off + 16 <= length)
        {
            var h = (LibcSocket.CmsgHdr*)(control + off);
            int len = (int)h->Len;
            if (len < 16 || off + len > length)
            {
                break;
            }
            if (h->Level == LibcSocket.SOL_SOCKET && h->Type == LibcSocket.SCM_RIGHTS)
            {
                int n = (len - 16) / 4;
                int* d = (int*)(control + off + 16);
                for (int i = 0; i < n; i++)
                {
                    fds.Add(new SafeFd(d[i]));
                }
            }
            off += LibcSocket.CmsgAlign(len);
        }
    }
}
