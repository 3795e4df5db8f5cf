using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Frontend;

/// <summary>
/// The doorbell pages the back-end handed over (VRING_HOST_NOTIFIER_MSG), one slot per queue: each area
/// is validated before it is mapped (size, alignment, what the descriptor is), then published for
/// <see cref="Get"/>, which the kick path reads without a lock. A replaced mapping is not unmapped at
/// once (a concurrent kick may still write to it): it waits for <see cref="Drop"/> (reset, dispose).
/// </summary>
internal sealed class HostNotifierTable
{
    /// <summary>Host-notifier areas larger than this many pages are refused (one doorbell needs one page).</summary>
    public const int MaxPages = 16;

    /// <summary>Replaced host-notifier mappings kept until the next reset before new ones are refused.</summary>
    private const int MaxRetired = 64;

    private readonly MappedMemory?[] _slots;
    private readonly Lock _lock = new();
    private readonly List<MappedMemory> _retired = [];
    private bool _closed;

    public HostNotifierTable(int queues) => _slots = new MappedMemory?[queues];

    /// <summary>Queue <paramref name="q"/>'s doorbell page, or null (kicks go to the eventfd). No lock, no allocation.</summary>
    public MappedMemory? Get(int q) => Volatile.Read(ref _slots[q]);

    /// <summary>
    /// Installs (or, with NOFD, removes) the area a VRING_HOST_NOTIFIER_MSG describes; <paramref name="fds"/>
    /// are the message's descriptors (still owned by it). Returns why it was refused, or null.
    /// </summary>
    public string? Apply(VringArea a, IReadOnlyList<SafeFd> fds, Action<string> log)
    {
        if ((a.IndexFlags & ~(VhostUserWire.VringIndexMask | VhostUserWire.VringNoFdMask)) != 0)
        {
            return $"host notifier index/flags 0x{a.IndexFlags:x} has unknown bits";
        }
        int q = a.Index;
        if (q >= _slots.Length)
        {
            return $"host notifier for queue {q}: the device has {_slots.Length} queues";
        }
        if (a.NoFd)
        {
            if (fds.Count != 0)
            {
                return $"host notifier removal for queue {q} carries {fds.Count} descriptor(s)";
            }
            if (Replace(q, null) is { } busy)
            {
                return busy;
            }
            log($"queue {q}: host notifier removed, kicks go to the eventfd");
            return null;
        }
        if (fds.Count != 1)
        {
            return $"host notifier for queue {q} carries {fds.Count} descriptors, expected 1";
        }
        int fd = fds[0].Fd;
        if (Check(q, a, fd) is { } bad)
        {
            return bad;
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
        log($"queue {q}: host notifier installed ({a.Size} bytes at offset 0x{a.Offset:x} of {FdKind.Target(fd) ?? "fd"}): kicks write the doorbell");
        return null;
    }

    /// <summary>Why the area cannot be a doorbell (so mapping it could fault or aim kicks elsewhere), or null.</summary>
    private static string? Check(int q, VringArea a, int fd)
    {
        ulong page = (ulong)Environment.SystemPageSize;
        if (a.Size == 0 || a.Size % page != 0 || a.Size > MaxPages * page)
        {
            return $"host notifier for queue {q}: area size {a.Size} is not 1..{MaxPages} pages of {page} bytes";
        }
        if (a.Offset % page != 0 || a.Offset > long.MaxValue - a.Size)
        {
            return $"host notifier for queue {q}: offset 0x{a.Offset:x} is not page-aligned";
        }
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
        return null;
    }

    /// <summary>A VFIO device descriptor (group API: an anonymous inode; cdev API: /dev/vfio/devices/vfioN).</summary>
    private static bool IsVfioDevice(int fd) => FdKind.Target(fd) is { } t &&
        (t == "anon_inode:[vfio-device]" || t.StartsWith("/dev/vfio/devices/", StringComparison.Ordinal));

    /// <summary>Publishes <paramref name="map"/> as queue <paramref name="q"/>'s doorbell (null: back to the eventfd).</summary>
    private string? Replace(int q, MappedMemory? map)
    {
        lock (_lock)
        {
            if (_closed)
            {
                return "the front-end is closing";
            }
            if (map is not null && _retired.Count >= MaxRetired)
            {
                return $"host notifier for queue {q}: {MaxRetired} replaced notifiers await the next reset; refusing more";
            }
            var old = Interlocked.Exchange(ref _slots[q], map);
            if (old is not null)
            {
                _retired.Add(old);
            }
            return null;
        }
    }

    /// <summary>
    /// Unpublishes and unmaps every host notifier (reset, dispose: no kick may run concurrently);
    /// <paramref name="close"/> refuses any later one.
    /// </summary>
    public void Drop(bool close = false)
    {
        lock (_lock)
        {
            _closed |= close;
            for (int q = 0; q < _slots.Length; q++)
            {
                Interlocked.Exchange(ref _slots[q], null)?.Dispose();
            }
            foreach (var m in _retired)
            {
                m.Dispose();
            }
            _retired.Clear();
        }
    }
}
