using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser.Frontend;

/// <summary>
/// The driver's DMA mappings as the back-end's memory table (GPA = IOVA, UVA = host address, passed by
/// memfd): ADD_MEM_REG / REM_MEM_REG with CONFIGURE_MEM_SLOTS, otherwise the whole table with
/// SET_MEM_TABLE. Tracks whether the back-end's copy is current (RESET_DEVICE or a failed update make it
/// stale; it is sent again before the next start). The caller serialises every call.
/// </summary>
internal sealed class FrontendMemory : IDisposable
{
    /// <summary>One DMA mapping: the driver's IOVA range, where it lives here, and the memfd behind it.</summary>
    private sealed record DmaRegion(ulong Iova, ulong Size, ulong UserAddress, ulong FileOffset, SafeFd Fd)
    {
        public MemoryRegionDesc Desc => new(Iova, Size, UserAddress, FileOffset);

        public ulong Last => Iova + Size - 1;
    }

    private readonly VhostUserClient _client;
    private readonly List<DmaRegion> _regions = [];

    /// <summary>True while the back-end's memory table equals <see cref="_regions"/>.</summary>
    private bool _atBackend = true;

    public FrontendMemory(VhostUserClient client) => _client = client;

    public int Count => _regions.Count;

    /// <summary>First IOVA above every mapping (0 without any): what a dirty log must cover.</summary>
    public ulong End => _regions.Count == 0 ? 0 : _regions.Max(r => r.Iova + r.Size);

    private string Name => _client.Name;

    private bool MemSlots => _client.HasProtocol(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS);

    /// <summary>The back-end forgot its table (RESET_DEVICE): it is sent again before the next start.</summary>
    public void BackendReset() => _atBackend = _regions.Count == 0;

    /// <summary>Adds [iova, iova + memory.Length) backed by <paramref name="memory"/> (memfd-backed shared memory) and tells the back-end.</summary>
    public void Map(ulong iova, MemorySlice memory)
    {
        ulong size = memory.Length;
        if (iova + size - 1 < iova)
        {
            throw new VdpaException($"{Name}: DMA map [0x{iova:x}, +0x{size:x}) wraps around");
        }
        foreach (var x in _regions)
        {
            if (iova <= x.Last && x.Iova <= iova + size - 1)
            {
                throw new VdpaException($"{Name}: DMA map [0x{iova:x}, +0x{size:x}) overlaps [0x{x.Iova:x}, +0x{x.Size:x})");
            }
        }
        int limit = MemSlots ? _client.MaxMemSlots : VhostUserWire.MaxMemTableRegions;
        if (_regions.Count >= limit)
        {
            throw new VdpaException($"{Name}: all {limit} vhost-user memory regions are in use");
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
            _client.ThrowIfBroken();
            if (!_atBackend)
            {
                EnsureAtBackend();
            }
            else if (MemSlots)
            {
                _client.SendRegion(VhostUserRequest.ADD_MEM_REG, r.Desc, r.Fd);
            }
            else
            {
                SendTable();
            }
        }
        catch
        {
            _regions.Remove(r);
            fd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Removes the mapping made with exactly this IOVA and size: REM_MEM_REG, or SET_MEM_TABLE with the rest
    /// (the last region cannot be removed that way: the back-end keeps it until the table is sent again).
    /// Back-end errors are logged, not thrown (the back-end holds its own mapping of the memfd).
    /// </summary>
    public void Unmap(ulong iova, ulong size, Action<string> log)
    {
        var r = _regions.Find(x => x.Iova == iova && x.Size == size)
            ?? throw new ArgumentException($"{Name}: no DMA mapping [0x{iova:x}, +0x{size:x})");
        _regions.Remove(r);
        try
        {
            if (_client.IsBroken || !_atBackend)
            {
                return;
            }
            if (MemSlots)
            {
                _client.SendRegion(VhostUserRequest.REM_MEM_REG, r.Desc, r.Fd);
            }
            else if (_regions.Count > 0)
            {
                SendTable();
            }
            else
            {
                _atBackend = false;
            }
        }
        catch (Exception e) when (e is IOException or InvalidOperationException)
        {
            _atBackend = false;
            log($"DMA unmap of [0x{iova:x}, +0x{size:x}): {e.Message}");
        }
        finally
        {
            r.Fd.Dispose();
        }
    }

    /// <summary>Sends the whole table when the back-end's copy is stale (after RESET_DEVICE or a failed update).</summary>
    public void EnsureAtBackend()
    {
        if (_atBackend || _regions.Count == 0)
        {
            return;
        }
        if (!MemSlots)
        {
            SendTable();
            return;
        }
        foreach (var r in _regions)
        {
            _client.SendRegion(VhostUserRequest.ADD_MEM_REG, r.Desc, r.Fd);
        }
        _atBackend = true;
    }

    /// <summary>SET_MEM_TABLE with every region; the back-end's copy counts as stale until it is acked.</summary>
    private void SendTable()
    {
        _atBackend = false;
        _client.SetMemTable([.. _regions.Select(r => (r.Desc, r.Fd))]);
        _atBackend = true;
    }

    /// <summary>A ring part's IOVA -> this process's address (what vhost-user ring addresses are); it must lie inside one mapping.</summary>
    public ulong Translate(int q, ulong iova, ulong length, string what)
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

    public void Dispose()
    {
        foreach (var r in _regions)
        {
            r.Fd.Dispose();
        }
        _regions.Clear();
    }
}
