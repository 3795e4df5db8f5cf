using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.IfcvfModel.Backends.Blk;

/// <summary>An image in anonymous memory: copies; flush has nothing to do.</summary>
internal readonly struct MemStore(MappedMemory memory, bool readOnly) : IBlkStore
{
    private const int EROFS = 30;

    public long Capacity => (long)memory.Length;

    public bool ReadOnly => readOnly;

    public bool NeedsBounce => false;

    public int Read(Span<byte> destination, long offset, Span<byte> bounce)
    {
        memory.Span((ulong)offset, destination.Length).CopyTo(destination);
        return 0;
    }

    public int Write(ReadOnlySpan<byte> source, long offset, Span<byte> bounce)
    {
        if (readOnly)
        {
            return EROFS;
        }
        source.CopyTo(memory.Span((ulong)offset, source.Length));
        return 0;
    }

    public int Flush() => 0;

    public int Discard(long offset, long length) => readOnly ? EROFS : Zero(offset, length);

    public int WriteZeroes(long offset, long length, bool unmap) => readOnly ? EROFS : Zero(offset, length);

    private int Zero(long offset, long length)
    {
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(length - done, 1 << 30);
            memory.Span((ulong)(offset + done), n).Clear();
            done += n;
        }
        return 0;
    }
}

/// <summary>
/// A raw image file: pread/pwrite between the file and guest memory (no copy unless O_DIRECT needs an aligned
/// bounce), fdatasync for FLUSH, fallocate for discard (punch hole) and write-zeroes (zero range), falling
/// back to writing zeroes where the file system has no fallocate mode.
/// </summary>
internal readonly struct FileStore(ImageFile file, long capacity) : IBlkStore
{
    private const int EOPNOTSUPP = 95;
    private const int EROFS = 30;
    private const int EIO = 5;

    public long Capacity => capacity;

    public bool ReadOnly => file.ReadOnly;

    public bool NeedsBounce => file.Direct;

    public int Read(Span<byte> destination, long offset, Span<byte> bounce) =>
        file.TryReadAt(destination, offset, bounce, out int e) ? 0 : (e != 0 ? e : EIO);

    public int Write(ReadOnlySpan<byte> source, long offset, Span<byte> bounce)
    {
        if (file.ReadOnly)
        {
            return EROFS;
        }
        return file.TryWriteAt(source, offset, bounce, out int e) ? 0 : (e != 0 ? e : EIO);
    }

    public int Flush() => file.TrySync(out int e) ? 0 : e;

    public int Discard(long offset, long length)
    {
        if (file.ReadOnly)
        {
            return EROFS;
        }
        // A discard is a hint: a file system that cannot punch holes just keeps the data.
        return file.TryDeallocate(offset, length, zeroRange: false, out int e) || e == EOPNOTSUPP ? 0 : e;
    }

    public int WriteZeroes(long offset, long length, bool unmap)
    {
        if (file.ReadOnly)
        {
            return EROFS;
        }
        if (file.TryDeallocate(offset, length, zeroRange: !unmap, out int e))
        {
            return 0;
        }
        if (e != EOPNOTSUPP && e != 22)
        {
            return e;
        }
        // No fallocate mode here (EINVAL on O_DIRECT for some file systems too): write zeroes.
        Span<byte> zeroes = stackalloc byte[4096];
        zeroes.Clear();
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(length - done, zeroes.Length);
            if (!file.TryWriteAt(zeroes[..n], offset + done, out e))
            {
                return e != 0 ? e : EIO;
            }
            done += n;
        }
        return 0;
    }
}
