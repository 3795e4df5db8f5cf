using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Frontend;

public sealed partial class VhostUserFrontend
{
    /// <summary>Host-notifier areas larger than this many pages are refused (one doorbell needs one page).</summary>
    public const int MaxNotifierPages = 16;

    /// <summary>Replaced host-notifier mappings kept until the next reset before new ones are refused.</summary>
    private const int MaxRetiredNotifiers = 64;

    private readonly Lock _notifierLock = new();
    private readonly List<MappedMemory> _retiredNotifiers = [];
    private long _channelMessages;
    private long _channelErrors;

    /// <summary>Requests received on the back-end channel.</summary>
    public long BackendChannelMessages => Interlocked.Read(ref _channelMessages);

    /// <summary>Back-end channel requests that were refused (bad host-notifier areas, unknown requests).</summary>
    public long BackendChannelErrors => Interlocked.Read(ref _channelErrors);

    /// <summary>
    /// Serves the back-end channel (SET_BACKEND_REQ_FD): config changes and host notifiers, each acked when
    /// the back-end asked for it. A malformed message (bad header, truncated) closes the channel only; the
    /// main connection keeps working.
    /// </summary>
    private void ChannelLoop()
    {
        var conn = _channel!;
        var poll = new PollSet();
        poll.Reset([conn.Socket.Fd, _stop.Fd]);
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
                m = conn.Receive();
            }
            catch (VhostUserProtocolException e)
            {
                Log($"back-end channel: protocol error, closing the channel: {e.Message}");
                Interlocked.Increment(ref _channelErrors);
                conn.Socket.Shutdown();
                return;
            }
            catch (IOException e)
            {
                Log($"back-end channel: {e.Message}");
                return;
            }
            if (m is null)
            {
                Log("back-end channel closed by the back-end");
                return;
            }
            using (m)
            {
                if (!Handle(conn, m))
                {
                    return;
                }
            }
        }
    }

    /// <summary>Serves one request; false when the channel was closed because the back-end does not take its acks.</summary>
    private bool Handle(VhostUserConnection conn, VhostUserMessage m)
    {
        Interlocked.Increment(ref _channelMessages);
        uint code = (uint)m.Request;
        string? error;
        bool configChanged = false;
        switch ((VhostUserBackendRequest)code)
        {
            case VhostUserBackendRequest.CONFIG_CHANGE_MSG:
                error = m.Payload.Length != 0 ? $"CONFIG_CHANGE_MSG with a {m.Payload.Length}-byte payload (expected none)"
                    : m.Fds.Count != 0 ? $"CONFIG_CHANGE_MSG carries {m.Fds.Count} descriptor(s)"
                    : null;
                configChanged = error is null;
                break;
            case VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG:
                error = HostNotifier(m);
                break;
            case VhostUserBackendRequest.IOTLB_MSG:
                error = "IOTLB_MSG: no IOTLB here (ACCESS_PLATFORM is never negotiated with the back-end)";
                break;
            default:
                error = $"unknown back-end request {code}";
                break;
        }
        if (error is not null)
        {
            Interlocked.Increment(ref _channelErrors);
            Log($"back-end channel: refused: {error}");
        }
        // Answered whenever the back-end asks (as QEMU does): a back-end that set NEED_REPLY waits for it.
        if (m.NeedReply)
        {
            try
            {
                conn.ReplyU64(m.Request, error is null ? 0UL : 1UL);
            }
            catch (IOException e)
            {
                Log($"back-end channel: cannot ack: {e.Message}");
            }
            catch (VhostUserProtocolException e)
            {
                // The ack could not go out within the timeout: the back-end asks for acks but does not read
                // them. Stop serving it (the main connection is not affected).
                Log($"back-end channel: the back-end does not read its acks ({e.Message}); closing the channel");
                Interlocked.Increment(ref _channelErrors);
                conn.Socket.Shutdown();
                return false;
            }
        }
        if (configChanged)
        {
            ConfigChanged();
        }
        return true;
    }

    /// <summary>VRING_HOST_NOTIFIER_MSG: validate the area, map it, install it as the queue's doorbell (or remove it).</summary>
    private string? HostNotifier(VhostUserMessage m)
    {
        if (!HasProtocol(VhostUserProtocolFeature.HOST_NOTIFIER))
        {
            return "VRING_HOST_NOTIFIER_MSG without the HOST_NOTIFIER protocol feature";
        }
        if (m.Payload.Length != VringArea.WireSize)
        {
            return $"VRING_HOST_NOTIFIER_MSG payload is {m.Payload.Length} bytes, expected {VringArea.WireSize}";
        }
        var a = VringArea.Read(m.Payload);
        if ((a.IndexFlags & ~(VhostUserWire.VringIndexMask | VhostUserWire.VringNoFdMask)) != 0)
        {
            return $"host notifier index/flags 0x{a.IndexFlags:x} has unknown bits";
        }
        int q = a.Index;
        if (q >= _vqs.Length)
        {
            return $"host notifier for queue {q}: the device has {_vqs.Length} queues";
        }
        if (a.NoFd)
        {
            if (m.Fds.Count != 0)
            {
                return $"host notifier removal for queue {q} carries {m.Fds.Count} descriptor(s)";
            }
            if (Replace(q, null) is { } busy)
            {
                return busy;
            }
            Log($"queue {q}: host notifier removed, kicks go to the eventfd");
            return null;
        }
        if (m.Fds.Count != 1)
        {
            return $"host notifier for queue {q} carries {m.Fds.Count} descriptors, expected 1";
        }
        ulong page = (ulong)Environment.SystemPageSize;
        if (a.Size == 0 || a.Size % page != 0 || a.Size > MaxNotifierPages * page)
        {
            return $"host notifier for queue {q}: area size {a.Size} is not 1..{MaxNotifierPages} pages of {page} bytes";
        }
        if (a.Offset % page != 0 || a.Offset > long.MaxValue - a.Size)
        {
            return $"host notifier for queue {q}: offset 0x{a.Offset:x} is not page-aligned";
        }
        int fd = m.Fds[0].Fd;
        FileStatus st;
        try
        {
            st = FileStatus.OfFd(fd);
        }
        catch (IOException e)
        {
            return $"host notifier for queue {q}: {e.Message}";
        }
        // A regular file (memfd) shorter than the area would fault on the first kick (SIGBUS). Device fds
        // (VFIO) report no size: their mmap checks the region itself.
        if (st.IsRegular && a.Offset + a.Size > st.Size)
        {
            return $"host notifier for queue {q}: [0x{a.Offset:x}, +0x{a.Size:x}) lies beyond the 0x{st.Size:x}-byte file";
        }
        // Checked once, so the file must not be able to shrink afterwards either: a back-end that truncated
        // it under the mapping would make the next kick fault.
        if (st.IsRegular && !MappedMemory.IsSealedAgainstShrinking(fd))
        {
            return $"host notifier for queue {q}: the file is not sealed against shrinking (F_SEAL_SHRINK), so the back-end could truncate it under the mapping";
        }
        if (st.IsSocket)
        {
            return $"host notifier for queue {q}: the descriptor is a socket";
        }
        // Whatever else mmap accepts is no doorbell: /dev/zero maps at any offset and faults (SIGBUS) on the
        // first kick past its one page; /dev/mem would aim the kick at physical memory.
        if (!st.IsRegular && !IsVfioDevice(fd))
        {
            return $"host notifier for queue {q}: {FdKind.Target(fd) ?? "the descriptor"} is neither a sealed memfd nor a VFIO device";
        }
        MappedMemory map;
        try
        {
            map = MappedMemory.MapFd(fd, a.Size, a.Offset);
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            return $"host notifier for queue {q}: cannot map it: {e.Message}";
        }
        if (Replace(q, map) is { } error)
        {
            map.Dispose();
            return error;
        }
        Log($"queue {q}: host notifier installed ({a.Size} bytes at offset 0x{a.Offset:x} of {FdKind.Target(fd) ?? "fd"}): kicks write the doorbell");
        return null;
    }

    /// <summary>A VFIO device descriptor (group API: an anonymous inode; cdev API: /dev/vfio/devices/vfioN).</summary>
    private static bool IsVfioDevice(int fd) => FdKind.Target(fd) is { } t &&
        (t == "anon_inode:[vfio-device]" || t.StartsWith("/dev/vfio/devices/", StringComparison.Ordinal));

    /// <summary>
    /// Publishes <paramref name="map"/> as queue <paramref name="q"/>'s doorbell (null: back to the eventfd).
    /// The replaced mapping is not unmapped here: a concurrent <see cref="KickVq"/> may still be writing to
    /// it. It is unmapped at the next reset or at dispose.
    /// </summary>
    private string? Replace(int q, MappedMemory? map)
    {
        lock (_notifierLock)
        {
            if (_disposed)
            {
                return "the front-end is closing";
            }
            var v = _vqs[q];
            if (map is not null && _retiredNotifiers.Count >= MaxRetiredNotifiers)
            {
                return $"host notifier for queue {q}: {MaxRetiredNotifiers} replaced notifiers await the next reset; refusing more";
            }
            var old = Interlocked.Exchange(ref v.Notifier, map);
            if (old is not null)
            {
                _retiredNotifiers.Add(old);
            }
            return null;
        }
    }

    /// <summary>Unpublishes and unmaps every host notifier (reset, dispose: no kick may run concurrently).</summary>
    private void DropNotifiers()
    {
        lock (_notifierLock)
        {
            foreach (var v in _vqs)
            {
                Interlocked.Exchange(ref v.Notifier, null)?.Dispose();
            }
            foreach (var m in _retiredNotifiers)
            {
                m.Dispose();
            }
            _retiredNotifiers.Clear();
        }
    }
}
