using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>
/// One front-end memory region mapped into this process: guest-physical range, the front-end's virtual
/// address of it, and where it lives here. The fd is mapped from its offset rounded down to the file's
/// block size (hugetlbfs needs huge-page-aligned offsets), and <see cref="Memory"/> starts at mmap_offset.
/// </summary>
public sealed class GuestMemoryRegion : IDisposable
{
    private readonly MappedMemory _mapping;
    private readonly ulong _skew;

    private GuestMemoryRegion(MemoryRegionDesc desc, MappedMemory mapping, ulong skew)
    {
        Desc = desc;
        _mapping = mapping;
        _skew = skew;
    }

    public MemoryRegionDesc Desc { get; }

    /// <summary>
    /// How many ADD_MEM_REG messages added this very region. QEMU keeps one vhost device per queue pair on
    /// the same connection and each adds every region, so with MQ the same region arrives several times;
    /// it is mapped once and removed when the last REM_MEM_REG for it arrives.
    /// </summary>
    public int References { get; set; } = 1;

    public ulong GuestPhysAddr => Desc.GuestPhysAddr;

    public ulong Size => Desc.Size;

    public ulong UserAddr => Desc.UserAddr;

    /// <summary>The region's bytes (guest-physical <see cref="GuestPhysAddr"/> onwards), to hand to a device.</summary>
    public MemorySlice Memory => _mapping.Slice(_skew, Size);

    /// <summary>A bounds-checked view of [gpa, gpa+length) when it lies inside this region.</summary>
    public Span<byte> Span(ulong offsetInRegion, int length) => _mapping.Span(_skew + offsetInRegion, length);

    /// <summary>Validates the region against its descriptor's file and maps it.</summary>
    public static GuestMemoryRegion Map(MemoryRegionDesc d, SafeFd fd)
    {
        if (d.Size == 0)
        {
            throw new VhostUserRequestException($"region at GPA 0x{d.GuestPhysAddr:x} has size 0");
        }
        if (d.GuestPhysAddr + d.Size - 1 < d.GuestPhysAddr || d.UserAddr + d.Size - 1 < d.UserAddr ||
            d.MmapOffset + d.Size - 1 < d.MmapOffset)
        {
            throw new VhostUserRequestException(
                $"region GPA 0x{d.GuestPhysAddr:x} VA 0x{d.UserAddr:x} offset 0x{d.MmapOffset:x} size 0x{d.Size:x} wraps around");
        }
        FileStatus st;
        try
        {
            st = FileStatus.OfFd(fd.Fd);
        }
        catch (IOException e)
        {
            throw new VhostUserRequestException($"region fd: {e.Message}");
        }
        if (!st.IsRegular)
        {
            throw new VhostUserRequestException($"region fd is not a memory file (mode 0x{st.Mode:x})");
        }
        if (d.MmapOffset + d.Size > st.Size)
        {
            throw new VhostUserRequestException(
                $"region [offset 0x{d.MmapOffset:x}, +0x{d.Size:x}) lies beyond its 0x{st.Size:x}-byte file");
        }
        ulong block = st.BlockSize is >= 4096 and <= (1u << 30) && (st.BlockSize & (st.BlockSize - 1)) == 0 ? st.BlockSize : 4096;
        ulong start = d.MmapOffset & ~(block - 1);
        ulong skew = d.MmapOffset - start;
        MappedMemory m;
        try
        {
            m = MappedMemory.MapFd(fd.Fd, d.Size + skew, start);
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new VhostUserRequestException($"cannot map region: {e.Message}");
        }
        return new GuestMemoryRegion(d, m, skew);
    }

    public void Dispose() => _mapping.Dispose();
}

/// <summary>
/// The front-end's memory table: regions in guest-physical space, each also known by the front-end's
/// virtual address. Ring addresses arrive as front-end VAs and are translated to guest-physical (the
/// IOVA the vDPA device uses); descriptors are already guest-physical.
/// </summary>
public sealed class GuestMemoryTable : IDisposable
{
    private readonly List<GuestMemoryRegion> _regions = [];

    public IReadOnlyList<GuestMemoryRegion> Regions => _regions;

    public int Count => _regions.Count;

    /// <summary>The region with exactly this GPA, VA, size and file offset, if one is mapped.</summary>
    public GuestMemoryRegion? FindIdentical(MemoryRegionDesc d) =>
        _regions.Find(x => x.Desc == d);

    /// <summary>Adds a region after checking it overlaps no other one (in GPA nor in VA space).</summary>
    public void Add(GuestMemoryRegion r)
    {
        foreach (var x in _regions)
        {
            if (Overlaps(r.GuestPhysAddr, r.Size, x.GuestPhysAddr, x.Size))
            {
                throw new VhostUserRequestException(
                    $"region GPA [0x{r.GuestPhysAddr:x}, +0x{r.Size:x}) overlaps [0x{x.GuestPhysAddr:x}, +0x{x.Size:x})");
            }
            if (Overlaps(r.UserAddr, r.Size, x.UserAddr, x.Size))
            {
                throw new VhostUserRequestException(
                    $"region VA [0x{r.UserAddr:x}, +0x{r.Size:x}) overlaps [0x{x.UserAddr:x}, +0x{x.Size:x})");
            }
        }
        _regions.Add(r);
    }

    /// <summary>The region with this GPA, VA and size (whatever its file offset), if one is mapped.</summary>
    public GuestMemoryRegion? Find(MemoryRegionDesc d) =>
        _regions.Find(x => x.GuestPhysAddr == d.GuestPhysAddr && x.UserAddr == d.UserAddr && x.Size == d.Size);

    /// <summary>Removes (without disposing) the region matching GPA, VA and size; null if none does.</summary>
    public GuestMemoryRegion? Remove(MemoryRegionDesc d)
    {
        var r = Find(d);
        if (r is not null)
        {
            _regions.Remove(r);
        }
        return r;
    }

    /// <summary>True when both tables describe the same layout (QEMU resends unchanged tables).</summary>
    public bool SameLayout(IReadOnlyList<MemoryRegionDesc> other) =>
        other.Count == _regions.Count && _regions.Select(r => r.Desc).Order(DescOrder.Instance).SequenceEqual(other.Order(DescOrder.Instance));

    /// <summary>
    /// Front-end VAs of ring <paramref name="q"/> with <paramref name="num"/> entries -> guest-physical; each
    /// part must lie wholly inside one region. Null when they do, otherwise why not.
    /// </summary>
    public string? TranslateRing(int q, VringAddr a, uint num, bool packed, bool eventIdx, out (ulong Desc, ulong Avail, ulong Used) gpa)
    {
        ulong descLen = 16UL * num;
        // Split: avail and used rings; packed: the 4-byte driver and device event suppression areas.
        ulong availLen = packed ? 4 : 4 + (2UL * num) + (eventIdx ? 2UL : 0);
        ulong usedLen = packed ? 4 : 4 + (8UL * num) + (eventIdx ? 2UL : 0);
        gpa = default;
        if (!TryVaToGpa(a.Desc, descLen, out ulong desc))
        {
            return $"ring {q} descriptor table VA 0x{a.Desc:x} (+{descLen}) is outside guest memory";
        }
        if (!TryVaToGpa(a.Avail, availLen, out ulong avail))
        {
            return $"ring {q} avail ring VA 0x{a.Avail:x} (+{availLen}) is outside guest memory";
        }
        if (!TryVaToGpa(a.Used, usedLen, out ulong used))
        {
            return $"ring {q} used ring VA 0x{a.Used:x} (+{usedLen}) is outside guest memory";
        }
        gpa = (desc, avail, used);
        return null;
    }

    /// <summary>used->idx of a split ring whose used area is at guest-physical <paramref name="usedGpa"/>.</summary>
    public bool TryReadUsedIdx(ulong usedGpa, out ushort idx)
    {
        idx = 0;
        if (!TryGpaSpan(usedGpa + 2, 2, out var span))
        {
            return false;
        }
        idx = SharedIndex.Load16(span, 0);
        return true;
    }

    /// <summary>Front-end VA range -> guest-physical address; the whole range must lie in one region.</summary>
    public bool TryVaToGpa(ulong va, ulong length, out ulong gpa)
    {
        foreach (var r in _regions)
        {
            if (va >= r.UserAddr && va - r.UserAddr < r.Size && length <= r.Size - (va - r.UserAddr))
            {
                gpa = r.GuestPhysAddr + (va - r.UserAddr);
                return true;
            }
        }
        gpa = 0;
        return false;
    }

    /// <summary>Guest-physical range -> a local span; the whole range must lie in one region.</summary>
    public bool TryGpaSpan(ulong gpa, int length, out Span<byte> span)
    {
        foreach (var r in _regions)
        {
            if (gpa >= r.GuestPhysAddr && gpa - r.GuestPhysAddr < r.Size && (ulong)length <= r.Size - (gpa - r.GuestPhysAddr))
            {
                span = r.Span(gpa - r.GuestPhysAddr, length);
                return true;
            }
        }
        span = default;
        return false;
    }

    public void Dispose()
    {
        foreach (var r in _regions)
        {
            r.Dispose();
        }
        _regions.Clear();
    }

    private static bool Overlaps(ulong a, ulong aSize, ulong b, ulong bSize) => a <= b + bSize - 1 && b <= a + aSize - 1;

    private sealed class DescOrder : IComparer<MemoryRegionDesc>
    {
        public static readonly DescOrder Instance = new();

        public int Compare(MemoryRegionDesc x, MemoryRegionDesc y) => x.GuestPhysAddr.CompareTo(y.GuestPhysAddr);
    }
}
