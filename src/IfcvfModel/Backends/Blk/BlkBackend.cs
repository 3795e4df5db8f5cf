using System.Globalization;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.IfcvfModel.Backends.Blk;

/// <summary>
/// The storage behind a software block VF: a raw image file (<c>file:PATH</c>, optionally with O_DIRECT:
/// <c>file:PATH,direct</c>) or memory (<c>mem:SIZE</c>, e.g. <c>mem:64M</c>). One backend serves one
/// engine; disposing closes the file or frees the memory (the engine does it too).
/// </summary>
public abstract class BlkBackend : IDisposable
{
    private int _bound;

    private protected BlkBackend()
    {
    }

    /// <summary>Bytes in the image (a multiple of 512).</summary>
    public abstract long Capacity { get; }

    public abstract bool ReadOnly { get; }

    /// <summary>The spec it was made from, for logs and `dev show`.</summary>
    public abstract string Description { get; }

    /// <summary>Memory of <paramref name="bytes"/> zeroed bytes (a multiple of 512).</summary>
    public static BlkBackend Memory(long bytes, bool readOnly = false) => new MemBlkBackend(bytes, readOnly);

    /// <summary>An existing raw image (its size, rounded down to 512 bytes, is the capacity).</summary>
    public static BlkBackend File(string path, bool readOnly = false, bool direct = false) => new FileBlkBackend(path, readOnly, direct);

    /// <summary>Parses "file:PATH", "file:PATH,direct" or "mem:SIZE" (SIZE in bytes, or with K, M, G).</summary>
    /// <exception cref="ArgumentException">An unknown or malformed spec.</exception>
    /// <exception cref="IOException">The image cannot be opened.</exception>
    public static BlkBackend Parse(string spec, bool readOnly = false)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (spec.StartsWith("mem:", StringComparison.Ordinal))
        {
            return Memory(ParseSize(spec[4..]), readOnly);
        }
        if (spec.StartsWith("file:", StringComparison.Ordinal) && spec.Length > 5)
        {
            string path = spec[5..];
            bool direct = false;
            if (path.EndsWith(",direct", StringComparison.Ordinal))
            {
                direct = true;
                path = path[..^7];
            }
            return File(path, readOnly, direct);
        }
        throw new ArgumentException($"unknown block backend '{spec}' (file:PATH, file:PATH,direct, mem:SIZE)");
    }

    /// <summary>"65536", "64K", "64M", "2G" (powers of 1024).</summary>
    public static long ParseSize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        long mult = 1;
        string digits = text;
        if (text.Length > 0 && char.ToUpperInvariant(text[^1]) is 'K' or 'M' or 'G' or 'T')
        {
            mult = char.ToUpperInvariant(text[^1]) switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 1L << 40 };
            digits = text[..^1];
        }
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long n) || n <= 0 || n > long.MaxValue / mult)
        {
            throw new ArgumentException($"size '{text}' is not a positive number of bytes (K, M, G, T suffixes allowed)");
        }
        long bytes = n * mult;
        if (bytes % 512 != 0)
        {
            throw new ArgumentException($"size {bytes} is not a multiple of 512 bytes");
        }
        return bytes;
    }

    /// <summary>Binds the backend to the engine that will serve it (once).</summary>
    internal TResult Bind<TResult>(IBlkStoreUser<TResult> user)
    {
        if (Interlocked.Exchange(ref _bound, 1) != 0)
        {
            throw new ArgumentException("this backend already serves an engine");
        }
        return OpenStore(user);
    }

    private protected abstract TResult OpenStore<TResult>(IBlkStoreUser<TResult> user);

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected abstract void Dispose(bool disposing);
}

internal sealed class MemBlkBackend : BlkBackend
{
    private readonly MappedMemory _mem;
    private readonly bool _readOnly;

    public MemBlkBackend(long bytes, bool readOnly)
    {
        if (bytes <= 0 || bytes % 512 != 0)
        {
            throw new ArgumentException($"memory image of {bytes} bytes: must be a positive multiple of 512");
        }
        _mem = MappedMemory.Allocate((ulong)bytes);
        _readOnly = readOnly;
    }

    public override long Capacity => (long)_mem.Length;

    public override bool ReadOnly => _readOnly;

    public override string Description => $"mem:{Capacity}";

    /// <summary>The image bytes (tests look at what the device wrote).</summary>
    public Span<byte> Bytes(long offset, int length) => _mem.Span((ulong)offset, length);

    private protected override TResult OpenStore<TResult>(IBlkStoreUser<TResult> user) => user.Use(new MemStore(_mem, _readOnly));

    protected override void Dispose(bool disposing) => _mem.Dispose();
}

internal sealed class FileBlkBackend : BlkBackend
{
    private readonly ImageFile _file;

    public FileBlkBackend(string path, bool readOnly, bool direct)
    {
        _file = ImageFile.Open(path, readOnly, direct);
        if (_file.Length < 512)
        {
            _file.Dispose();
            throw new ArgumentException($"{path}: {_file.Length} bytes is smaller than one 512-byte sector");
        }
    }

    public override long Capacity => _file.Length & ~511L;

    public override bool ReadOnly => _file.ReadOnly;

    public override string Description => $"file:{_file.Path}{(_file.Direct ? ",direct" : "")}";

    private protected override TResult OpenStore<TResult>(IBlkStoreUser<TResult> user) => user.Use(new FileStore(_file, Capacity));

    protected override void Dispose(bool disposing) => _file.Dispose();
}
