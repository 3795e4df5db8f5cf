using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// A region created with mmap(2): anonymous shared memory, a fresh memfd, or a peer's fd (a vhost-user
/// memory region). Safety contract: <see cref="Address"/> is valid for <see cref="Length"/> bytes until
/// <see cref="Dispose"/>; every span handed out is bounds-checked against it. Whoever registers the
/// address in an <see cref="IovaMap"/> must unregister it before disposing.
/// </summary>
public sealed unsafe class MappedMemory : IDisposable
{
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

    /// <summary>Memory backed by a new memfd, so it can be shared with another process by fd.</summary>
    public static MappedMemory CreateShared(string name, ulong length)
    {
        int fd = Libc.memfd_create(name, Libc.MFD_CLOEXEC);
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
        nint p = Libc.mmap(0, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, fd, 0);
        if (p == Libc.MAP_FAILED)
        {
            safe.Dispose();
            throw Errno.Exception($"mmap(memfd, {length})");
        }
        return new MappedMemory(p, length, safe);
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
        nint p = Interlocked.Exchange(ref _address, 0);
        if (p != 0)
        {
            Libc.munmap(p, (nuint)Length);
        }
        Fd?.Dispose();
    }
}
