using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// A raw disk image (a regular file or a block device) opened for positioned I/O: pread/pwrite straight
/// between the file and a caller's span (guest memory for the block VF), fdatasync, and the fallocate
/// modes behind discard and write-zeroes. With O_DIRECT the page cache is bypassed; the kernel then wants
/// buffer address, offset and length aligned to the device's logical block (<see cref="DirectAlignment"/>),
/// which the caller ensures (a bounce buffer from <see cref="MappedMemory"/> is page-aligned).
/// Safety: every call takes a span, so the kernel never reads or writes past it; a short transfer is retried
/// from where it stopped; EINTR is retried. Thread-safe (positioned I/O has no shared file offset).
/// </summary>
public sealed unsafe class ImageFile : IDisposable
{
    /// <summary>Alignment O_DIRECT transfers use here (4 KiB covers 512-byte and 4 KiB logical blocks).</summary>
    public const int DirectAlignment = 4096;

    private readonly SafeFd _fd;

    private ImageFile(SafeFd fd, long length, bool readOnly, bool direct, string path)
    {
        _fd = fd;
        Length = length;
        ReadOnly = readOnly;
        Direct = direct;
        Path = path;
    }

    public string Path { get; }

    /// <summary>Bytes in the image when it was opened.</summary>
    public long Length { get; }

    public bool ReadOnly { get; }

    public bool Direct { get; }

    /// <summary>Opens an existing image (read-only or read-write, optionally O_DIRECT).</summary>
    /// <exception cref="IOException">The file cannot be opened (the message names the path and errno).</exception>
    public static ImageFile Open(string path, bool readOnly, bool direct)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        int flags = (readOnly ? Libc.O_RDONLY : Libc.O_RDWR) | Libc.O_CLOEXEC | (direct ? Libc.O_DIRECT : 0);
        int fd = Libc.open_file(path, flags, 0);
        if (fd < 0)
        {
            throw Errno.Exception($"open {path}{(direct ? " with O_DIRECT" : "")}");
        }
        var safe = new SafeFd(fd);
        long len = Libc.lseek(fd, 0, Libc.SEEK_END);
        if (len < 0)
        {
            var e = Errno.Exception($"size of {path}");
            safe.Dispose();
            throw e;
        }
        return new ImageFile(safe, len, readOnly, direct, path);
    }

    /// <summary>Reads exactly <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; false (with errno) on an error or end of file.</summary>
    public bool TryReadAt(Span<byte> buffer, long offset, out int errno)
    {
        fixed (byte* p = buffer)
        {
            return Transfer(p, buffer.Length, offset, write: false, out errno);
        }
    }

    /// <summary>Writes exactly <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; false (with errno) on an error.</summary>
    public bool TryWriteAt(ReadOnlySpan<byte> buffer, long offset, out int errno)
    {
        fixed (byte* p = buffer)
        {
            return Transfer(p, buffer.Length, offset, write: true, out errno);
        }
    }

    /// <summary>
    /// pread/pwrite of exactly <paramref name="length"/> bytes, resumed after a short transfer and after EINTR.
    /// A transfer of 0 bytes before the end is a failure with errno 0 (end of file: the image shrank under us).
    /// </summary>
    private bool Transfer(byte* p, int length, long offset, bool write, out int errno)
    {
        errno = 0;
        for (int done = 0; done < length;)
        {
            nint n = write
                ? Libc.pwrite(_fd.Fd, p + done, (nuint)(length - done), offset + done)
                : Libc.pread(_fd.Fd, p + done, (nuint)(length - done), offset + done);
            if (n > 0)
            {
                done += (int)n;
                continue;
            }
            errno = n < 0 ? Errno.Last : 0;
            if (errno != Libc.EINTR)
            {
                return false;
            }
        }
        errno = 0;
        return true;
    }

    /// <summary>
    /// <see cref="TryReadAt(Span{byte}, long, out int)"/> that goes through <paramref name="bounce"/> (page-aligned,
    /// a multiple of 4 KiB) when O_DIRECT is on and <paramref name="buffer"/> is not aligned for it.
    /// </summary>
    public bool TryReadAt(Span<byte> buffer, long offset, Span<byte> bounce, out int errno)
    {
        if (!Direct || IsDirectAligned(buffer) || bounce.IsEmpty)
        {
            return TryReadAt(buffer, offset, out errno);
        }
        errno = 0;
        for (int done = 0; done < buffer.Length;)
        {
            int n = Math.Min(buffer.Length - done, bounce.Length);
            if (!TryReadAt(bounce[..n], offset + done, out errno))
            {
                return false;
            }
            bounce[..n].CopyTo(buffer[done..]);
            done += n;
        }
        return true;
    }

    /// <summary>The write counterpart of <see cref="TryReadAt(Span{byte}, long, Span{byte}, out int)"/>.</summary>
    public bool TryWriteAt(ReadOnlySpan<byte> buffer, long offset, Span<byte> bounce, out int errno)
    {
        if (!Direct || IsDirectAligned(buffer) || bounce.IsEmpty)
        {
            return TryWriteAt(buffer, offset, out errno);
        }
        errno = 0;
        for (int done = 0; done < buffer.Length;)
        {
            int n = Math.Min(buffer.Length - done, bounce.Length);
            buffer.Slice(done, n).CopyTo(bounce);
            if (!TryWriteAt(bounce[..n], offset + done, out errno))
            {
                return false;
            }
            done += n;
        }
        return true;
    }

    private static bool IsDirectAligned(ReadOnlySpan<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            return ((nint)p & (DirectAlignment - 1)) == 0 && buffer.Length % 512 == 0;
        }
    }

    /// <summary>fdatasync: data written so far is on stable storage when this returns true.</summary>
    public bool TrySync(out int errno)
    {
        while (Libc.fdatasync(_fd.Fd) != 0)
        {
            errno = Errno.Last;
            if (errno != Libc.EINTR)
            {
                return false;
            }
        }
        errno = 0;
        return true;
    }

    /// <summary>
    /// fallocate: punch a hole (<paramref name="zeroRange"/> false: discard) or zero a range (true), keeping
    /// the size. False with errno (EOPNOTSUPP on a file system without it: the caller falls back).
    /// </summary>
    public bool TryDeallocate(long offset, long length, bool zeroRange, out int errno)
    {
        int mode = Libc.FALLOC_FL_KEEP_SIZE | (zeroRange ? Libc.FALLOC_FL_ZERO_RANGE : Libc.FALLOC_FL_PUNCH_HOLE);
        while (Libc.fallocate(_fd.Fd, mode, offset, length) != 0)
        {
            errno = Errno.Last;
            if (errno != Libc.EINTR)
            {
                return false;
            }
        }
        errno = 0;
        return true;
    }

    public void Dispose() => _fd.Dispose();
}
