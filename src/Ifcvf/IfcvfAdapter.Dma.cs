using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;
using IfcVdpa.Vdpa;

namespace IfcVdpa.Ifcvf;

/// <summary>DMA into the function's IOMMU domain, the LM block's dirty-page log, and vq statistics.</summary>
public sealed partial class IfcvfAdapter
{
    // ---- dirty page log (IFC vendor extension: the LM block's logging registers) ----------------

    /// <summary>
    /// Starts the VF's dirty-page log (DPDK's ifcvf_enable_logging): a bitmap of one bit per 4 KiB page, at
    /// IOVA [<paramref name="logIova"/>, +<paramref name="logSize"/>) of the device's DMA space (map it first,
    /// outside guest memory). The VF marks the pages of the buffers it writes; the used rings are the
    /// driver's to mark when the queues stop.
    /// </summary>
    public void EnableDirtyLog(ulong logIova, ulong logSize)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            RequireLiveMigrationBlock("a dirty-page log");
            if (!_hw.HasDirtyLog)
            {
                throw new VdpaNotSupportedException($"{Name}: this function's LM block has no dirty-log registers");
            }
            if (logSize == 0 || logIova + logSize < logIova)
            {
                throw new VdpaException($"{Name}: dirty log [0x{logIova:x}, +0x{logSize:x}) is empty or wraps around");
            }
            _hw.EnableDirtyLog(logIova, logSize);
            _dirtyLogOn = true;
        }
    }

    /// <summary>Whether this function can keep a dirty log (an IFC VF whose LM block has the dirty-log registers).</summary>
    public bool CanLogDirtyPages => _useLm && _hw.HasDirtyLog;

    /// <summary>Whether the dirty log is on (set by <see cref="EnableDirtyLog"/>; a reset turns it off).</summary>
    public bool DirtyLogEnabled
    {
        get { lock (_ctl) { return _dirtyLogOn; } }
    }

    // ---- frames sent on the driver's behalf (SEND_RARP) ----------------------------------------

    /// <summary>Only the software VF can: a real VF's wire is reached through its rings alone.</summary>
    public bool CanInjectFrames => _pci is IPciFrameInjection { CanInjectFrames: true };

    public void InjectFrame(ReadOnlySpan<byte> frame)
    {
        ThrowIfRemoved();
        if (_pci is not IPciFrameInjection inject || !inject.CanInjectFrames)
        {
            throw new VdpaNotSupportedException($"{Name}: {_pci.Address} cannot send a frame outside its rings (a real IFC VF has no such path)");
        }
        if (!inject.InjectFrame(frame))
        {
            throw new VdpaException($"{Name}: the VF did not take the {frame.Length}-byte frame (too many waiting, or not a frame)");
        }
    }

    /// <summary>The software VF's wire carrier (its TAP); false for a function without one (a real VF).</summary>
    public bool SetWireCarrier(bool up)
    {
        ThrowIfRemoved();
        return _pci is IPciFrameInjection inject && inject.SetWireCarrier(up);
    }

    /// <summary>Stops the dirty-page log (DPDK's ifcvf_disable_logging).</summary>
    public void DisableDirtyLog()
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            RequireLiveMigrationBlock("a dirty-page log");
            _hw.DisableDirtyLog();
            _dirtyLogOn = false;
        }
    }

    private void RequireLiveMigrationBlock(string what)
    {
        if (!_useLm)
        {
            throw new VdpaNotSupportedException($"{Name}: {what} needs the IFC live-migration block (BAR4), which this function does not have");
        }
    }

    // ---- DMA -----------------------------------------------------------------------------------

    /// <summary>dma_map into the function's IOMMU domain; a range the domain refuses (overlap, full, VFIO error) is a <see cref="VdpaException"/>.</summary>
    public void DmaMap(ulong iova, MemorySlice memory, bool writable)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            try
            {
                _pci.DmaMap(iova, memory, writable);
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException)
            {
                throw new IfcvfDeviceException($"{Name}: DMA map [0x{iova:x}, +0x{memory.Length:x}) refused: {e.Message}", e);
            }
            _dmaMaps[(iova, memory.Length)] = writable;
        }
    }

    public void DmaUnmap(ulong iova, ulong size)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            if (!_dmaMaps.Remove((iova, size)))
            {
                throw new VdpaException($"{Name}: no DMA mapping [0x{iova:x}, +0x{size:x})");
            }
            _pci.DmaUnmap(iova, size);
        }
    }

    string IVdpaDeviceDiagnostics.InterruptMode => IrqMode.ToString();

    /// <summary>NEEDS_RESET events the function counted (the software VF does; a VFIO function's reach the front-end's config eventfd, unseen here).</summary>
    long IVdpaDeviceDiagnostics.NeedsResetEvents => _pci is IQueueStatsSource s ? s.NeedsResetEvents : 0;

    /// <summary>DMA mappings installed through this device and not yet removed.</summary>
    public int DmaMapCount
    {
        get { lock (_ctl) { return _dmaMaps.Count; } }
    }

    // ---- statistics ----------------------------------------------------------------------------

    /// <summary>
    /// Vendor vq stats: the function's own datapath counters when it keeps them (<see cref="IQueueStatsSource"/>),
    /// else the kicks this adapter issued and the interrupts it handled in-process (an interrupt that goes
    /// straight to an eventfd is not seen, so it is not counted).
    /// </summary>
    public VdpaVqStats GetVqStats(int qid)
    {
        CheckQueue(qid);
        if (_pci is IQueueStatsSource source)
        {
            var c = source.GetQueueCounters(qid);
            return new VdpaVqStats(c.Packets, c.Bytes, c.Kicks, c.Interrupts, c.Errors, c.Drops) { DirtyPages = c.DirtyPages };
        }
        return new VdpaVqStats(0, 0, Interlocked.Read(ref _kicks[qid]), Interlocked.Read(ref _interrupts[qid]), 0, 0);
    }

    /// <summary>Kicks issued through <see cref="KickVq"/>.</summary>
    public long GetKickCount(int qid)
    {
        CheckQueue(qid);
        return Interlocked.Read(ref _kicks[qid]);
    }
}
