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

    /// <summary>Maps every region the kernel has in [start, last] that is not mapped yet. Returns how many were added.</summary>
    public int MapRange(ulong start, ulong last)
    {
        int added = 0;
        ulong cursor = start;
        while (cursor <= last && _regions.Count < MaxRegions)
        {
            var r = kernel.GetIotlbFd(cursor, last);
            if (r is null)
            {
                break;
            }
            using (r.Fd)
            {
                string? bad = Check(r, cursor, last);
                if (bad is not null)
                {
                    LogOnce("bad-region", $"IOTLB: {bad}; not mapped");
                    if (r.Start > r.Last || r.Last < cursor)
                    {
                        break; // cannot step past it safely
                    }
                }
                else if (!IsMapped(r.Start, r.Last))
                {
                    Map(r);
                    added++;
                }
                if (r.Last == ulong.MaxValue)
                {
                    break;
                }
                cursor = r.Last + 1;
            }
        }
        return added;
    }

    private bool IsMapped(ulong start, ulong last)
    {
        foreach (var (s, l, _) in _regions)
        {
            if (s == start && l == last)
            {
                return true;
            }
        }
        return false;
    }

    private void Map(VduseIotlbRegion r)
    {
        ulong size = r.Last - r.Start + 1;
        Unmap(r.Start, r.Last); // a region that changed shape replaces the old one
        bool writable = r.Perm == 3;
        var mem = MappedMemory.MapFd(r.Fd.Fd, size, r.Offset, writable);
        try
        {
            device.DmaMap(r.Start, mem.All, writable);
        }
        catch
        {
            mem.Dispose();
            throw;
        }
        _regions.Add((r.Start, r.Last, mem));
    }

    /// <summary>Removes every mapped region overlapping [start, last] from the device and unmaps it.</summary>
    public int Unmap(ulong start, ulong last)
    {
        int removed = 0;
        for (int i = _regions.Count - 1; i >= 0; i--)
        {
            var (s, l, mem) = _regions[i];
            if (l < start || s > last)
            {
                continue;
            }
            _regions.RemoveAt(i);
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
