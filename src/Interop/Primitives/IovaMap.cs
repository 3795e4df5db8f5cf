namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// The device's view of memory: IOVA ranges translated to host addresses, like an IOMMU domain.
/// A device model reads and writes guest memory only through <see cref="TryTranslate"/>, which
/// returns a span that lies entirely inside one mapped range or nothing at all.
///
/// Safety contract: memory comes in as a <see cref="MemorySlice"/>, which <see cref="Map"/> pins, so it stays
/// mapped until the matching <see cref="Unmap"/> or <see cref="Clear"/> (even if its owner disposes it
/// first); a caller guarantees that no device is processing queues through this map when it removes a range.
/// Readers never lock: updates publish a new immutable entry array.
/// </summary>
public sealed unsafe class IovaMap
{
    /// <summary>One mapped range: IOVA, size, access, and the memory behind it.</summary>
    public readonly record struct Entry(ulong Iova, ulong Size, bool Writable, MemorySlice Memory)
    {
        public ulong Last => Iova + Size - 1;

        internal nint Host { get; } = Memory.Address;
    }

    private readonly Lock _writeLock = new();
    private Entry[] _entries = [];

    /// <summary>Largest number of ranges accepted (vdpa_sim uses 2048 IOTLB entries).</summary>
    public const int MaxEntries = 2048;

    public int Count => Volatile.Read(ref _entries).Length;

    public IReadOnlyList<Entry> Entries => Volatile.Read(ref _entries);

    /// <summary>
    /// Maps [iova, iova + memory.Length) onto <paramref name="memory"/>. Wrap-around and overlap with an
    /// existing range are refused (<see cref="ArgumentException"/>), as is a full map.
    /// </summary>
    public void Map(ulong iova, MemorySlice memory, bool writable)
    {
        ArgumentNullException.ThrowIfNull(memory.Memory, nameof(memory));
        ulong size = memory.Length;
        if (iova + size - 1 < iova)
        {
            throw new ArgumentException($"DMA map [0x{iova:x}, +0x{size:x}) wraps around the IOVA space");
        }
        lock (_writeLock)
        {
            var old = _entries;
            if (old.Length >= MaxEntries)
            {
                throw new InvalidOperationException($"DMA map is full ({MaxEntries} ranges)");
            }
            var e = new Entry(iova, size, writable, memory);
            int at = 0;
            foreach (var x in old)
            {
                if (e.Iova <= x.Last && x.Iova <= e.Last)
                {
                    throw new ArgumentException($"DMA map [0x{iova:x}, +0x{size:x}) overlaps [0x{x.Iova:x}, +0x{x.Size:x})");
                }
                if (x.Iova < e.Iova)
                {
                    at++;
                }
            }
            memory.Memory.Pin();
            var next = new Entry[old.Length + 1];
            Array.Copy(old, next, at);
            next[at] = e;
            Array.Copy(old, at, next, at + 1, old.Length - at);
            Volatile.Write(ref _entries, next);
        }
    }

    /// <summary>Removes the range that was mapped with exactly this IOVA and size.</summary>
    public bool Unmap(ulong iova, ulong size)
    {
        lock (_writeLock)
        {
            var old = _entries;
            int i = Array.FindIndex(old, x => x.Iova == iova && x.Size == size);
            if (i < 0)
            {
                return false;
            }
            var next = new Entry[old.Length - 1];
            Array.Copy(old, next, i);
            Array.Copy(old, i + 1, next, i, old.Length - i - 1);
            Volatile.Write(ref _entries, next);
            old[i].Memory.Memory.Unpin();
            return true;
        }
    }

    /// <summary>Removes every range.</summary>
    public void Clear()
    {
        lock (_writeLock)
        {
            var old = _entries;
            Volatile.Write(ref _entries, []);
            foreach (var e in old)
            {
                e.Memory.Memory.Unpin();
            }
        }
    }

    /// <summary>
    /// Like <see cref="TryTranslate"/>, for an area translated again and again (a queue's ring areas, every
    /// burst): the last answer is kept in <paramref name="cache"/> and reused while the map has not changed
    /// since (the same immutable entry array: nothing was mapped or unmapped, so the memory is still pinned
    /// and mapped the same way) and the request is the same.
    /// </summary>
    public bool TryTranslateCached(ref TranslationCache cache, ulong iova, uint length, bool write, out Span<byte> span)
    {
        var entries = Volatile.Read(ref _entries);
        if (ReferenceEquals(cache.Entries, entries) && cache.Iova == iova && cache.Length == length && cache.Write == write)
        {
            span = new Span<byte>((byte*)cache.Host, (int)length);
            return true;
        }
        if (!Find(entries, iova, length, write, out nint host))
        {
            cache = default;
            span = default;
            return false;
        }
        cache = new TranslationCache(entries, iova, length, write, host);
        span = new Span<byte>((byte*)host, (int)length);
        return true;
    }

    /// <summary>
    /// Translates [iova, iova+length) to host memory. Fails (returns false) when the range is not wholly
    /// inside one mapped entry, when it wraps, or when <paramref name="write"/> is asked of a read-only entry.
    /// </summary>
    public bool TryTranslate(ulong iova, uint length, bool write, out Span<byte> span)
    {
        if (Find(Volatile.Read(ref _entries), iova, length, write, out nint host))
        {
            span = new Span<byte>((byte*)host, (int)length);
            return true;
        }
        span = default;
        return false;
    }

    /// <summary>The host address of [iova, iova+length) if it lies wholly inside one entry that allows the access.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static bool Find(Entry[] entries, ulong iova, uint length, bool write, out nint host)
    {
        // Few ranges in practice (guest RAM is 1-8 regions): a linear scan beats a binary search here.
        for (int i = 0; i < entries.Length; i++)
        {
            ref readonly var e = ref entries[i];
            ulong off = iova - e.Iova;
            if (iova >= e.Iova && off < e.Size && length <= e.Size - off)
            {
                if (write && !e.Writable)
                {
                    break;
                }
                host = e.Host + (nint)off;
                return true;
            }
        }
        host = 0;
        return false;
    }
}

/// <summary>
/// The last answer of <see cref="IovaMap.TryTranslateCached"/>
/// for one area, valid only for the map state (entry array) it was made from. Opaque outside Interop.
/// </summary>
public readonly struct TranslationCache
{
    internal TranslationCache(object entries, ulong iova, uint length, bool write, nint host)
    {
        Entries = entries;
        Iova = iova;
        Length = length;
        Write = write;
        Host = host;
    }

    internal object? Entries { get; }

    internal ulong Iova { get; }

    internal uint Length { get; }

    internal bool Write { get; }

    internal nint Host { get; }
}
