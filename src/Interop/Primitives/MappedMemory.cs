using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// A region created with mmap(2): anonymous shared memory, a fresh memfd, or a peer's fd (a vhost-user
/// memory region). Safety contract: <see cref="Address"/> is valid for <see cref="Length"/> bytes until
/// <see cref="Dispose"/>; every span handed out is bounds-checked against it. Whoever registers the
/// address in an <see cref="IovaMap"/> must unregister it before disposing.
///
/// Memory leaves Interop only as a <see cref="MemorySlice"/> (<see cref="Slice"/>): a device is pointed at
/// it by slice, never by address. A mapping that is pinned by a DMA map (<see cref="Pin"/>) outlives
/// <see cref="Dispose"/> until the last pin is released.
/// </summary>
public sealed unsafe class MappedMemory : IDisposable
{
    private readonly Lock _pinLock = new();
    private nint _address;
    private int _pins;
    private bool _disposeRequested;

    private MappedMemory(nint address, ulong length, SafeFd? fd)
    {
        _address = address;
        Length = length;
        Fd = fd;
    }

    /// <summary>The mapping's address: for the audited primitives only (others use <see cref="Slice"/>).</summary>
    internal nint Address => _address;

    public ulong Length { get; }

    /// <summary>The backing memfd, when the region was created with <see cref="CreateShared"/>: what a peer
    /// process maps to share the memory (a vhost-user memory region).</summary>
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
    /// every access here fault (SIGBUS).
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
        return new MappedMemory(p, length, safe);
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
    public static MappedMemory MapFd(int fd, ulong length, ulong offset) => MapFd(fd, length, offset, writable: true);

    /// <summary>
    /// Maps <paramref name="length"/> bytes of <paramref name="fd"/> from <paramref name="offset"/>, shared, read-only
    /// unless <paramref name="writable"/> (a descriptor opened read-only cannot be mapped writable).
    /// </summary>
    public static MappedMemory MapFd(int fd, ulong length, ulong offset, bool writable)
    {
        if (length == 0 || length > long.MaxValue || offset > long.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(length), "bad mapping size or offset");
        }
        nint p = Libc.mmap(0, (nuint)length, Libc.PROT_READ | (writable ? Libc.PROT_WRITE : 0), Libc.MAP_SHARED, fd, (long)offset);
        if (p == Libc.MAP_FAILED)
        {
            throw Errno.Exception($"mmap(fd {fd}, {length} bytes at {offset})");
        }
        return new MappedMemory(p, length, null);
    }

    /// <summary>
    /// Maps several shared file ranges back to back into one contiguous address range, so a device sees memory
    /// that is contiguous in its IOVA space (VDUSE hands out one region per hugepage of a DPDK process, and a
    /// ring may straddle two) as one mapping. Safety contract: an address range is reserved first (PROT_NONE,
    /// anonymous) and each part is placed into it with MAP_FIXED, so nothing else can be overwritten; every
    /// part but the last must be a whole number of pages; on any failure the whole range is unmapped.
    /// </summary>
    public static MappedMemory MapFdsContiguous(ReadOnlySpan<(int Fd, ulong Offset, ulong Length)> parts, bool writable)
    {
        ulong total = 0;
        for (int i = 0; i < parts.Length; i++)
        {
            var (_, off, len) = parts[i];
            if (len == 0 || off > long.MaxValue || (i < parts.Length - 1 && (len & 4095) != 0) || total + len < total)
            {
                throw new ArgumentOutOfRangeException(nameof(parts), $"part {i}: {len} bytes at {off} cannot be placed back to back");
            }
            total += len;
        }
        if (total == 0 || total > long.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(parts), "bad total mapping size");
        }
        nint p = Libc.mmap(0, (nuint)total, Libc.PROT_NONE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);
        if (p == Libc.MAP_FAILED)
        {
            throw Errno.Exception($"mmap(reserve {total} bytes)");
        }
        ulong at = 0;
        foreach (var (fd, off, len) in parts)
        {
            nint q = Libc.mmap(p + (nint)at, (nuint)len, Libc.PROT_READ | (writable ? Libc.PROT_WRITE : 0), Libc.MAP_SHARED | Libc.MAP_FIXED, fd, (long)off);
            if (q == Libc.MAP_FAILED)
            {
                var e = Errno.Exception($"mmap(fd {fd}, {len} bytes at {off}, fixed)");
                Libc.munmap(p, (nuint)total);
                throw e;
            }
            at += len;
        }
        return new MappedMemory(p, total, null);
    }

    /// <summary>The whole mapping as a <see cref="MemorySlice"/>.</summary>
    public MemorySlice All => Slice(0, Length);

    /// <summary>A bounds-checked window of the mapping, to hand to a device (DMA map).</summary>
    public MemorySlice Slice(ulong offset, ulong length)
    {
        ObjectDisposedException.ThrowIf(_address == 0, this);
        if (length == 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"[0x{offset:x}, +0x{length:x}) outside a 0x{Length:x}-byte region");
        }
        return new MemorySlice(this, offset, length);
    }

    /// <summary>
    /// Keeps the mapping alive for a DMA map: until the matching <see cref="Unpin"/>, <see cref="Dispose"/>
    /// does not unmap it. Fails on a disposed mapping.
    /// </summary>
    public void Pin()
    {
        lock (_pinLock)
        {
            ObjectDisposedException.ThrowIf(_disposeRequested || _address == 0, this);
            _pins++;
        }
    }

    /// <summary>Releases a <see cref="Pin"/>; the last one after <see cref="Dispose"/> unmaps.</summary>
    public void Unpin()
    {
        lock (_pinLock)
        {
            if (_pins == 0)
            {
                throw new InvalidOperationException("MappedMemory unpinned more often than pinned");
            }
            if (--_pins == 0 && _disposeRequested)
            {
                Unmap();
            }
        }
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

    /// <summary>Unmaps the region (at once, or when the last DMA pin is released) and closes its memfd.</summary>
    public void Dispose()
    {
        lock (_pinLock)
        {
            _disposeRequested = true;
            if (_pins == 0)
            {
                Unmap();
            }
        }
        Fd?.Dispose();
    }

    private void Unmap()
    {
        nint p = Interlocked.Exchange(ref _address, 0);
        if (p != 0)
        {
            Libc.munmap(p, (nuint)Length);
        }
    }
}
