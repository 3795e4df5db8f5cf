using System.Diagnostics.CodeAnalysis;
using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// A region created with mmap(2): anonymous shared memory, a fresh memfd, or a peer's fd (a vhost-user
/// memory region). Safety contract: <see cref="Address"/> is valid for <see cref="Length"/> bytes until
/// <see cref="Dispose"/>; every span handed out is bounds-checked against it. Whoever registers the
/// address in an <see cref="IovaMap"/> must unregister it before disposing.
///
/// Regions made with <see cref="CreateShared"/> are also listed in a process-wide registry until they are
/// disposed, so that code handed only an address (a vDPA DmaMap) can find the memfd and file offset behind
/// it (<see cref="TryFindShared"/>) and pass the memory to another process (a vhost-user back-end).
/// </summary>
public sealed unsafe class MappedMemory : IDisposable
{
    private static readonly Lock s_sharedLock = new();
    private static readonly List<MappedMemory> s_shared = [];

    private nint _address;

    private MappedMemory(nint address, ulong length, SafeFd? fd)
    {
        _address = address;
        Length = length;
        Fd = fd;
    }

    public nint Address => _address;

    public ulong Length { get; }

    /// <summary>The backing memfd, when the region was created with <see cref="CreateShared"/>.</summary>
    public SafeFd? Fd { get; }

    /// <summary>Anonymous private memory (zeroed).</summary>
    public static MappedMemory Allocate(ulong length)
    {
        nint p = Libc.mmap(0, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE,
            Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);
        if (p == Libc.MAP_FAILED)
        {
            throw Errno.Exception($"mmap(anonymous, {length})");
        }
        return new MappedMemory(p, length, null);
    }

    /// <summary>
    /// Memory backed by a new memfd, so it can be shared with another process by fd. The file is sealed
    /// against shrinking and growing: a peer that receives the fd cannot truncate it, which would make
    /// every access here fault (SIGBUS). Listed for <see cref="TryFindShared"/> until disposed.
    /// </summary>
    public static MappedMemory CreateShared(string name, ulong length)
    {
        if (length == 0 || length > long.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(length), $"shared memory of {length} bytes");
        }
        int fd = Libc.memfd_create(name, Libc.MFD_CLOEXEC | Libc.MFD_ALLOW_SEALING);
        if (fd < 0)
        {
            throw Errno.Exception("memfd_create");
        }
        var safe = new SafeFd(fd);
        if (Libc.ftruncate(fd, (long)length) != 0)
        {
            safe.Dispose();
            throw Errno.Exception("ftruncate");
        }
        if (Libc.fcntl(fd, Libc.F_ADD_SEALS, Libc.F_SEAL_SHRINK | Libc.F_SEAL_GROW | Libc.F_SEAL_SEAL) != 0)
        {
            safe.Dispose();
            throw Errno.Exception("fcntl(F_ADD_SEALS)");
        }
        nint p = Libc.mmap(0, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, fd, 0);
        if (p == Libc.MAP_FAILED)
        {
            safe.Dispose();
            throw Errno.Exception($"mmap(memfd, {length})");
        }
        var m = new MappedMemory(p, length, safe);
        lock (s_sharedLock)
        {
            s_shared.Add(m);
        }
        return m;
    }

    /// <summary>
    /// Finds the live <see cref="CreateShared"/> region that holds all of [address, address+length) and
    /// returns a duplicate of its memfd (owned by the caller, valid after the region is disposed) and the
    /// file offset of <paramref name="address"/>. False when no such region exists (private memory, a
    /// range that crosses a region's end, a disposed region).
    /// </summary>
    public static bool TryFindShared(nint address, ulong length, [NotNullWhen(true)] out SafeFd? fd, out ulong fileOffset)
    {
        fd = null;
        fileOffset = 0;
        if (address == 0 || length == 0)
        {
            return false;
        }
        ulong a = (ulong)address;
        lock (s_sharedLock)
        {
            foreach (var m in s_shared)
            {
                ulong start = (ulong)m._address;
                if (start == 0 || a < start)
                {
                    continue;
                }
                ulong off = a - start;
                if (off < m.Length && length <= m.Length - off)
                {
                    // Duplicated under the lock: Dispose unregisters under it before closing the fd.
                    fd = SafeFd.Dup(m.Fd!.Fd);
                    fileOffset = off;
                    return true;
                }
            }
        }
        return false;
    }

    /// <summary>
    /// True when the file behind <paramref name="fd"/> is sealed against shrinking (F_SEAL_SHRINK, as
    /// <see cref="CreateShared"/> seals): the peer that sent it cannot truncate it under a mapping made here,
    /// which would make the next access fault (SIGBUS). False for files that cannot be sealed.
    /// </summary>
    public static bool IsSealedAgainstShrinking(int fd)
    {
        int seals = Libc.fcntl(fd, Libc.F_GET_SEALS, 0);
        return seals >= 0 && (seals & Libc.F_SEAL_SHRINK) != 0;
    }

    /// <summary>Maps <paramref name="length"/> bytes of a peer's fd starting at <paramref name="offset"/>.</summary>
    public static MappedMemory MapFd(int fd, ulong length, ulong offset)
    {
        if (length == 0 || length > long.MaxValue || offset > long.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(length), "bad mapping size or offset");
        }
        nint p = Libc.mmap(0, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, fd, (long)offset);
        if (p == Libc.MAP_FAILED)
        {
            throw Errno.Exception($"mmap(fd {fd}, {length} bytes at {offset})");
        }
        return new MappedMemory(p, length, null);
    }

    /// <summary>A bounds-checked view of part of the region.</summary>
    public Span<byte> Span(ulong offset, int length)
    {
        ObjectDisposedException.ThrowIf(_address == 0, this);
        if (length < 0 || offset > Length || (ulong)length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{length}) outside a {Length}-byte region");
        }
        return new Span<byte>((byte*)_address + offset, length);
    }

    public void Dispose()
    {
        if (Fd is not null)
        {
            lock (s_sharedLock)
            {
                s_shared.Remove(this);
            }
        }
        nint p = Interlocked.Exchange(ref _address, 0);
        if (p != 0)
        {
            Libc.munmap(p, (nuint)Length);
        }
        Fd?.Dispose();
    }
}
