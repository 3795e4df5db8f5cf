using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser;

/// <summary>Live migration in the binding: the dirty log (SET_LOG_BASE, LOG_ALL, the device's LM-block log, used rings marked at stop) and SEND_RARP.</summary>
public sealed partial class VhostUserVdpaBinding
{
    // ---- live migration: the dirty log ----

    /// <summary>
    /// SET_LOG_BASE: maps the front-end's log (validated against its file and against the guest memory it
    /// must cover). A new log while the device logs (QEMU resizes it) is mapped and programmed before the
    /// old one is released, so no window logs nowhere.
    /// </summary>
    public void SetLogBase(ulong size, ulong offset, SafeFd fd)
    {
        if (_hwLog is null)
        {
            throw new VhostUserRequestException($"device {_device.Name} keeps no dirty log (no LM block): logging not supported");
        }
        var log = DirtyLogRegion.Map(fd, size, offset);
        try
        {
            CheckLogCovers(log, _memory);
        }
        catch
        {
            log.Dispose();
            throw;
        }
        var old = _dirtyLog;
        _dirtyLog = log;
        try
        {
            UpdateDirtyLog();
        }
        catch
        {
            _dirtyLog = old;
            log.Dispose();
            throw;
        }
        old?.Dispose(); // still pinned while the device has it mapped (a failed switch): unmapped with it
        _log($"dirty log: 0x{size:x} bytes at offset 0x{offset:x} (covers GPA below 0x{log.Covers:x}){(DeviceLogging ? ", device logging" : "")}");
    }

    /// <summary>SET_LOG_FD: the eventfd to signal log syncs on (kept, unused: the log is shared memory).</summary>
    public void SetLogFd(SafeFd fd)
    {
        _logFd?.Dispose();
        _logFd = fd;
    }

    private static void CheckLogCovers(DirtyLogRegion log, GuestMemoryTable memory)
    {
        ulong end = MemoryEnd(memory);
        if (end > log.Covers)
        {
            throw new VhostUserRequestException(
                $"dirty log of 0x{log.Size:x} bytes covers GPA below 0x{log.Covers:x}, but guest memory reaches 0x{end:x} (needs 0x{(end + (DirtyLogRegion.PageSize * 8) - 1) / (DirtyLogRegion.PageSize * 8):x} bytes)");
        }
    }

    private static ulong MemoryEnd(GuestMemoryTable memory) => memory.Regions.Count == 0 ? 0 : memory.Regions.Max(r => r.GuestPhysAddr + r.Size);

    /// <summary>After every change of features, log, or device state: the device logs exactly while it runs with LOG_ALL and a log.</summary>
    private void UpdateDirtyLog()
    {
        var want = _configured && Acked(VirtioFeature.F_LOG_ALL) ? _dirtyLog : null;
        if (want is null)
        {
            StopDeviceLog();
            return;
        }
        if (ReferenceEquals(want, _deviceLog) || _hwLog is null)
        {
            return;
        }
        if (MemoryEnd(_memory) > LogIovaA)
        {
            throw new VhostUserRequestException($"guest memory reaches 0x{MemoryEnd(_memory):x}, where the dirty log would be mapped for the device (0x{LogIovaA:x})");
        }
        ulong iova = _deviceLog is not null && _deviceLogIova == LogIovaA ? LogIovaB : LogIovaA;
        _device.DmaMap(iova, want.Mapping, writable: true);
        try
        {
            _hwLog.EnableDirtyLog(iova + want.Skew, want.Size);
        }
        catch
        {
            Teardown($"DMA unmap of the dirty log at 0x{iova:x}", () => _device.DmaUnmap(iova, want.Mapping.Length));
            throw;
        }
        var (old, oldIova) = (_deviceLog, _deviceLogIova);
        _deviceLog = want;
        _deviceLogIova = iova;
        if (old is not null)
        {
            Teardown($"DMA unmap of the old dirty log at 0x{oldIova:x}", () => _device.DmaUnmap(oldIova, old.Mapping.Length));
        }
        _log($"device {_device.Name} logs dirty pages into 0x{want.Size:x} bytes at IOVA 0x{iova + want.Skew:x}");
    }

    private void StopDeviceLog()
    {
        if (_deviceLog is not { } log)
        {
            return;
        }
        _deviceLog = null;
        Teardown("dirty log off", () => _hwLog!.DisableDirtyLog());
        ulong iova = _deviceLogIova;
        Teardown($"DMA unmap of the dirty log at 0x{iova:x}", () => _device.DmaUnmap(iova, log.Mapping.Length));
        _log($"device {_device.Name} stopped logging");
    }

    /// <summary>
    /// Marks ring <paramref name="q"/>'s used side in the log when logging is requested: the split used ring
    /// at log_guest_addr (VHOST_VRING_F_LOG; else its translated address), or a packed ring's descriptor ring
    /// and device area (where a packed device writes). Called when the ring stops: the device wrote its last
    /// used entry before its queue read disabled.
    /// </summary>
    private void MarkUsedRing(int q)
    {
        var r = _rings[q];
        if (!LoggingRequested || r.Addr is not { } a || TranslateRing(q, a, r.Num, out var gpa) is not null)
        {
            return;
        }
        var log = _dirtyLog!;
        if (Packed)
        {
            log.Mark(gpa.Desc, 16UL * r.Num);
            log.Mark((a.Flags & VhostUserWire.VringFlagLog) != 0 ? a.Log : gpa.Used, 4);
            return;
        }
        ulong len = 4 + (8UL * r.Num) + (Acked(VirtioFeature.F_RING_EVENT_IDX) ? 2UL : 0);
        log.Mark((a.Flags & VhostUserWire.VringFlagLog) != 0 ? a.Log : gpa.Used, len);
    }

    // ---- SEND_RARP ----

    /// <summary>SEND_RARP: the device sends a RARP for <paramref name="mac"/> on the guest's behalf.</summary>
    public void SendRarp(ReadOnlySpan<byte> mac)
    {
        if (_inject is null)
        {
            throw new VhostUserRequestException($"device {_device.Name} cannot send a frame outside the guest's rings: no RARP for {MacAddress.Format(mac)}");
        }
        if (!Has(VhostUserProtocolFeature.RARP))
        {
            throw new VhostUserRequestException("not supported without RARP negotiated");
        }
        if (!_configured)
        {
            throw new VhostUserRequestException($"device {_device.Name} is not running: no RARP for {MacAddress.Format(mac)} (it would reach the wire later, or another front-end's guest)");
        }
        _inject.InjectFrame(RarpFrame.Build(mac));
        _log($"RARP sent for {MacAddress.Format(mac)}");
    }
}
