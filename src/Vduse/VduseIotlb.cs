using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.Vduse;

/// <summary>
/// The device's view of the VDUSE IOVA space: each region the kernel reports (VDUSE_IOTLB_GET_FD) is
/// validated, mmapped from the fd the kernel hands out and DMA-mapped into the vDPA device at its IOVA, so
/// the device reaches driver memory exactly as through an IOMMU. With virtio_vdpa the regions are the
/// kernel's bounce buffer (IOVA 0, 64 MiB by default) and its coherent allocations (the rings); with
/// vhost_vdpa they are the user process's memory, announced by UPDATE_IOTLB.
/// </summary>
public sealed class VduseIotlb(IVdpaDevice device, IVduseKernel kernel, Action<string> log) : IDisposable
{
    /// <summary>Largest region mapped (the VDUSE domain is 1 GiB + 128 MiB; vhost_vdpa maps process memory).</summary>
    public const ulong MaxRegionSize = 1UL << 40;

    /// <summary>Most regions held at once: a kernel that reports more is not followed further.</summary>
    public const int MaxRegions = 4096;

    private const ulong PageMask = 4095;

    private readonly List<(ulong Start, ulong Last, MappedMemory Memory)> _regions = [];
    private readonly HashSet<string> _logged = [];

    public int Count => _regions.Count;

    /// <summary>
    /// Checks a region the kernel reported for [start, last]: null when usable, else why not. The region must
    /// overlap what was asked, be well-formed, fit <see cref="MaxRegionSize"/>, start at a page-aligned file
    /// offset, and be readable (read-only or read-write; a write-only region cannot be mmapped).
    /// </summary>
    public static string? Check(VduseIotlbRegion r, ulong start, ulong last)
    {
        ArgumentNullException.ThrowIfNull(r);
        if (r.Start > r.Last)
        {
            return $"region [0x{r.Start:x}, 0x{r.Last:x}] ends before it starts";
        }
        if (r.Last < start || r.Start > last)
        {
            return $"region [0x{r.Start:x}, 0x{r.Last:x}] does not overlap the range asked [0x{start:x}, 0x{last:x}]";
        }
        ulong size = r.Last - r.Start + 1;
        if (size == 0 || size > MaxRegionSize)
        {
            return $"region [0x{r.Start:x}, 0x{r.Last:x}] is larger than {MaxRegionSize >> 30} GiB";
        }
        if ((r.Offset & PageMask) != 0 || r.Offset > long.MaxValue - size)
        {
            return $"region [0x{r.Start:x}, 0x{r.Last:x}] at file offset 0x{r.Offset:x} (must be page-aligned and in range)";
        }
        if (r.Perm is not (1 or 3))
        {
            return $"region [0x{r.Start:x}, 0x{r.Last:x}] with access {r.Perm} (only read-only 1 and read-write 3 can be mapped)";
        }
        return null;
    }

    /// <summary>
    /// Maps every region the kernel has in [start, last] that is not mapped yet. Regions that follow each other
    /// in IOVA with the same access (one per hugepage of a DPDK process behind vhost_vdpa) are placed back to
    /// back in one mapping, so a ring or buffer that crosses from one to the next is still one span for the
    /// device. Returns how many mappings were added.
    /// </summary>
    public int MapRange(ulong start, ulong last)
    {
        var found = new List<VduseIotlbRegion>();
        try
        {
            ulong cursor = start;
            while (cursor <= last && _regions.Count + found.Count < MaxRegions)
            {
                var r = kernel.GetIotlbFd(cursor, last);
                if (r is null)
                {
                    break;
                }
                string? bad = Check(r, cursor, last);
                bool stepPast = r.Start <= r.Last && r.Last >= cursor;
                if (bad is not null)
                {
                    LogOnce("bad-region", $"IOTLB: {bad}; not mapped");
                    r.Fd.Dispose();
                }
                else if (Contains(r.Start, r.Last))
                {
                    r.Fd.Dispose();
                }
                else
                {
                    found.Add(r);
                }
                if (!stepPast || r.Last == ulong.MaxValue)
                {
                    break; // cannot step past it safely, or the end of the IOVA space
                }
                cursor = r.Last + 1;
            }
            int added = 0;
            int i = 0;
            while (i < found.Count)
            {
                int j = i + 1;
                ulong size = found[i].Last - found[i].Start + 1;
                while (j < found.Count && found[j].Start == found[j - 1].Last + 1 && found[j].Perm == found[i].Perm
                       && ((found[j - 1].Last - found[j - 1].Start + 1) & PageMask) == 0
                       && size + (found[j].Last - found[j].Start + 1) <= MaxRegionSize)
                {
                    size += found[j].Last - found[j].Start + 1;
                    j++;
                }
                Map(found.GetRange(i, j - i));
                added++;
                i = j;
            }
            return added;
        }
        finally
        {
            foreach (var r in found)
            {
                r.Fd.Dispose();
            }
        }
    }

    private bool Contains(ulong start, ulong last)
    {
        foreach (var (s, l, _) in _regions)
        {
            if (s <= start && last <= l)
            {
                return true;
            }
        }
        return false;
    }

    private void Map(List<VduseIotlbRegion> run)
    {
        ulong first = run[0].Start;
        ulong lastIova = run[^1].Last;
        Unmap(first, lastIova); // regions that changed shape replace the old ones
        bool writable = run[0].Perm == 3;
        var mem = run.Count == 1
            ? MappedMemory.MapFd(run[0].Fd.Fd, lastIova - first + 1, run[0].Offset, writable)
            : MappedMemory.MapFdsContiguous(run.Select(r => (r.Fd.Fd, r.Offset, r.Last - r.Start + 1)).ToArray(), writable);
        try
        {
            device.DmaMap(first, mem.All, writable);
        }
        catch
        {
            mem.Dispose();
            throw;
        }
        _regions.Add((first, lastIova, mem));
    }

    /// <summary>Removes every mapped region overlapping [start, last] from the device and unmaps it.</summary>
    public int Unmap(ulong start, ulong last) => Unmap(start, last, out _, out _);

    /// <summary>As <see cref="Unmap(ulong, ulong)"/>, also giving the IOVA span the removed mappings covered (a
    /// mapping that joined several kernel regions goes whole, so the caller maps that span again).</summary>
    public int Unmap(ulong start, ulong last, out ulong spanStart, out ulong spanLast)
    {
        spanStart = start;
        spanLast = last;
        int removed = 0;
        for (int i = _regions.Count - 1; i >= 0; i--)
        {
            var (s, l, mem) = _regions[i];
            if (l < start || s > last)
            {
                continue;
            }
            _regions.RemoveAt(i);
            spanStart = Math.Min(spanStart, s);
            spanLast = Math.Max(spanLast, l);
            try
            {
                device.DmaUnmap(s, l - s + 1);
            }
            catch (VdpaException e)
            {
                log($"IOTLB: DMA unmap of [0x{s:x}, 0x{l:x}]: {e.Message}");
            }
            mem.Dispose();
            removed++;
        }
        return removed;
    }

    /// <summary>True when one mapped region holds all of [<paramref name="iova"/>, +<paramref name="length"/>).</summary>
    public bool CoversRange(ulong iova, ulong length)
    {
        ulong last = iova + length - 1;
        foreach (var (s, l, _) in _regions)
        {
            if (length != 0 && last >= iova && s <= iova && last <= l)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The mapped regions, for a log line ("[start, last] ..." in IOVA order, at most 16 listed).</summary>
    public string Describe()
    {
        var sorted = _regions.OrderBy(r => r.Start).ToList();
        string list = string.Join(' ', sorted.Take(16).Select(r => $"[0x{r.Start:x}, 0x{r.Last:x}]"));
        return sorted.Count > 16 ? $"{list} (+{sorted.Count - 16} more)" : list;
    }

    /// <summary>True when a mapped region contains <paramref name="iova"/>.</summary>
    public bool Covers(ulong iova)
    {
        foreach (var (s, l, _) in _regions)
        {
            if (s <= iova && iova <= l)
            {
                return true;
            }
        }
        return false;
    }

    public void Clear() => Unmap(0, ulong.MaxValue);

    private void LogOnce(string key, string message)
    {
        if (_logged.Add(key))
        {
            log(message + " (logged once)");
        }
    }

    public void Dispose() => Clear();
}
