using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The front-end's dirty log (SET_LOG_BASE with LOG_SHMFD) mapped here: a bitmap of one bit per 4 KiB
/// guest-physical page (bit n of byte n/8, least significant first), which the front-end reads and clears
/// while we set bits. The file is mapped from its offset rounded down to a page, so the mapping can be
/// DMA-mapped for a device as it is and the bitmap starts <see cref="Skew"/> bytes into it.
/// </summary>
public sealed class DirtyLogRegion : IDisposable
{
    /// <summary>VHOST_LOG_PAGE: the granularity of the log.</summary>
    public const ulong PageSize = 4096;

    /// <summary>Largest log taken: 1 GiB of bitmap covers 32 TiB of guest memory.</summary>
    public const ulong MaxSize = 1UL << 30;

    private readonly MappedMemory _mapping;
    private long _marked;

    private DirtyLogRegion(MappedMemory mapping, ulong skew, ulong size, ulong offset)
    {
        _mapping = mapping;
        Skew = skew;
        Size = size;
        Offset = offset;
    }

    /// <summary>Bytes of bitmap (mmap_size).</summary>
    public ulong Size { get; }

    /// <summary>The bitmap's offset in the front-end's file (mmap_offset).</summary>
    public ulong Offset { get; }

    /// <summary>Where the bitmap starts inside <see cref="Mapping"/> (mmap_offset modulo the page size).</summary>
    public ulong Skew { get; }

    /// <summary>The page-aligned mapping that holds the bitmap, to DMA-map for a device.</summary>
    public MemorySlice Mapping => _mapping.All;

    /// <summary>Guest-physical bytes the bitmap covers: [0, Covers).</summary>
    public ulong Covers => Size * 8 * PageSize;

    /// <summary>Pages this process marked (bits it found clear).</summary>
    public long PagesMarked => Interlocked.Read(ref _marked);

    /// <summary>
    /// Validates the log against its file and maps it: a size of 1..<see cref="MaxSize"/> bytes, no
    /// wrap-around, the whole range inside the file (fstat), a memory file sealed against shrinking (else the
    /// front-end could truncate it under the device's writes: SIGBUS). Refusals are <see cref="VhostUserRequestException"/>.
    /// </summary>
    public static DirtyLogRegion Map(SafeFd fd, ulong size, ulong offset)
    {
        if (size == 0 || size > MaxSize)
        {
            throw new VhostUserRequestException($"dirty log of 0x{size:x} bytes (1..0x{MaxSize:x} allowed)");
        }
        _ = SharedMemoryFile.Check(fd, offset, size, "dirty log", "dirty log");
        ulong start = offset & ~(PageSize - 1);
        ulong skew = offset - start;
        ulong length = (skew + size + PageSize - 1) & ~(PageSize - 1); // the last page holds file bytes: no SIGBUS
        try
        {
            return new DirtyLogRegion(MappedMemory.MapFd(fd.Fd, length, start), skew, size, offset);
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new VhostUserRequestException($"cannot map the dirty log: {e.Message}");
        }
    }

    /// <summary>
    /// Marks every page of guest-physical [<paramref name="gpa"/>, +<paramref name="length"/>) with an atomic
    /// OR (a 32-bit word when it lies inside the bitmap, else a byte compare-and-swap). Pages beyond the
    /// bitmap are skipped: nothing outside it is written. Returns the pages whose bit was clear.
    /// </summary>
    public int Mark(ulong gpa, ulong length)
    {
        if (length == 0 || gpa + length - 1 < gpa)
        {
            return 0;
        }
        int marked = 0;
        ulong last = (gpa + length - 1) / PageSize;
        for (ulong page = gpa / PageSize; page <= last; page++)
        {
            ulong inLog = page >> 3;
            if (inLog >= Size)
            {
                break;
            }
            ulong at = Skew + inLog; // byte offset in the mapping
            ulong word = at & ~3UL;
            int bitInByte = (int)(page & 7);
            bool set;
            if (word >= Skew && word + 4 <= Skew + Size)
            {
                set = VhostLogBits.SetInWord(_mapping.Span(word, 4), (int)(((at - word) * 8) + (ulong)bitInByte));
            }
            else
            {
                set = VhostLogBits.SetInByte(ref _mapping.Span(at, 1)[0], (byte)(1 << bitInByte));
            }
            if (set)
            {
                marked++;
            }
        }
        Interlocked.Add(ref _marked, marked);
        return marked;
    }

    public void Dispose() => _mapping.Dispose();
}
