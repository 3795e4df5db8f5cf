using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser.Frontend;

public sealed partial class VhostUserFrontend
{
    /// <summary>One DMA mapping: the driver's IOVA range, where it lives here, and the memfd behind it.</summary>
    private sealed record DmaRegion(ulong Iova, ulong Size, ulong UserAddress, ulong FileOffset, SafeFd Fd)
    {
        public MemoryRegionDesc Desc => new(Iova, Size, UserAddress, FileOffset);

        public ulong Last => Iova + Size - 1;
    }

    private readonly List<DmaRegion> _regions = [];

    /// <summary>True while the back-end's memory table equals <see cref="_regions"/>.</summary>
    private bool _memoryAtBackend = true;

    private bool MemSlots => HasProtocol(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS);

    /// <summary>DMA mappings known to this front-end.</summary>
    public int DmaRegionCount
    {
        get
        {
            lock (_ctl)
            {
                return _regions.Count;
            }
        }
    }

    /// <summary>
    /// Gives the back-end [iova, iova + memory.Length) as a memory region (GPA = IOVA, UVA = where this process
    /// sees it): the memory must be memfd-backed (<see cref="MappedMemory.CreateShared"/>), because vhost-user
    /// passes memory by file descriptor. The back-end can write every region (vhost-user has no read-only regions).
    /// </summary>
    public void DmaMap(ulong iova, MemorySlice memory, bool writable)
    {
        ulong size = memory.Length;
        lock (_ctl)
        {
            ThrowIfDisposed();
            if (size == 0 || iova + size - 1 < iova)
            {
                throw new ArgumentException($"{Name}: DMA map [0x{iova:x}, +0x{size:x}) is empty or wraps around");
            }
            foreach (var x in _regions)
            {
                if (iova <= x.Last && x.Iova <= iova + size - 1)
                {
                    throw new ArgumentException($"{Name}: DMA map [0x{iova:x}, +0x{size:x}) overlaps [0x{x.Iova:x}, +0x{x.Size:x})");
                }
            }
            int limit = MemSlots ? _maxMemSlots : VhostUserWire.MaxMemTableRegions;
            if (_regions.Count >= limit)
            {
                throw new InvalidOperationException($"{Name}: all {limit} vhost-user memory regions are in use");
            }
            if (memory.Memory.Fd is not { } shared)
            {
                throw new VdpaNotSupportedException(
                    $"{Name}: DMA map of {memory} is not memfd-backed shared memory; a vhost-user back-end " +
                    "can only be given memory by file descriptor (allocate it with MappedMemory.CreateShared)");
            }
            var fd = SafeFd.Dup(shared.Fd);
            var r = new DmaRegion(iova, size, memory.UserAddress, memory.Offset, fd);
            _regions.Add(r);
            try
            {
                ThrowIfBroken();
                if (!_memoryAtBackend)
                {
                    EnsureMemory();
                }
                else if (MemSlots)
                {
                    SendRegion(VhostUserRequest.ADD_MEM_REG, r);
                }
                else
                {
                    _memoryAtBackend = false;
                    SendMemTable();
                    _memoryAtBackend = true;
                }
            }
            catch
            {
                _regions.Remove(r);
                fd.Dispose();
                throw;
            }
        }
    }

    /// <summary>
    /// Removes the mapping made with exactly this IOVA and size: REM_MEM_REG, or SET_MEM_TABLE with the rest
    /// (the last region cannot be removed that way: the back-end keeps it until the table is sent again).
    /// Back-end errors are logged, not thrown (the back-end holds its own mapping of the memfd, so nothing
    /// here depends on it).
    /// </summary>
    public void DmaUnmap(ulong iova, ulong size)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            var r = _regions.Find(x => x.Iova == iova && x.Size == size)
                ?? throw new ArgumentException($"{Name}: no DMA mapping [0x{iova:x}, +0x{size:x})");
            _regions.Remove(r);
            try
            {
                if (_broken is not null || !_memoryAtBackend)
                {
                    return;
                }
                if (MemSlots)
                {
                    SendRegion(VhostUserRequest.REM_MEM_REG, r);
                }
                else if (_regions.Count > 0)
                {
                    _memoryAtBackend = false;
                    SendMemTable();
                    _memoryAtBackend = true;
                }
                else
                {
                    _memoryAtBackend = false;
                }
            }
            catch (Exception e) when (e is IOException or InvalidOperationException)
            {
                _memoryAtBackend = false;
                Log($"DMA unmap of [0x{iova:x}, +0x{size:x}): {e.Message}");
            }
            finally
            {
                r.Fd.Dispose();
            }
        }
    }

    /// <summary>Sends the whole table when the back-end's copy is stale (after RESET_DEVICE or a failed update).</summary>
    private void EnsureMemory()
    {
        if (_memoryAtBackend || _regions.Count == 0)
        {
            return;
        }
        if (MemSlots)
        {
            foreach (var r in _regions)
            {
                SendRegion(VhostUserRequest.ADD_MEM_REG, r);
            }
        }
        else
        {
            SendMemTable();
        }
        _memoryAtBackend = true;
    }

    private void SendRegion(VhostUserRequest request, DmaRegion r)
    {
        Span<byte> p = stackalloc byte[VhostUserWire.SingleRegionSize];
        p[..8].Clear();
        r.Desc.Write(p[8..]);
        Request(request, p, request == VhostUserRequest.ADD_MEM_REG ? [r.Fd.Fd] : default);
    }

    private void SendMemTable()
    {
        int n = _regions.Count;
        var p = new byte[8 + (n * VhostUserWire.RegionSize)];
        BinaryPrimitives.WriteUInt32LittleEndian(p, (uint)n);
        var fds = new int[n];
        for (int i = 0; i < n; i++)
        {
            _regions[i].Desc.Write(p.AsSpan(8 + (i * VhostUserWire.RegionSize)));
            fds[i] = _regions[i].Fd.Fd;
        }
        Request(VhostUserRequest.SET_MEM_TABLE, p, fds);
    }

    /// <summary>A ring part's IOVA -> this process's address (what vhost-user ring addresses are); it must lie inside one mapping.</summary>
    private ulong TranslateRing(int q, ulong iova, ulong length, string what)
    {
        foreach (var r in _regions)
        {
            ulong off = iova - r.Iova;
            if (iova >= r.Iova && off < r.Size && length <= r.Size - off)
            {
                return r.UserAddress + off;
            }
        }
        throw new InvalidOperationException($"{Name}: queue {q} {what} at IOVA 0x{iova:x} (+{length}) is not inside one DMA mapping");
    }
}
