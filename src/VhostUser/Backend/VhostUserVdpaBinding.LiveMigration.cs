using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
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
        _log($"dirty log: 0x{size:x} bytes at offset 0x{offset:x} (covers GPA below 0x{log.Covers:x}){(Relaying ? ", software relay logging" : DeviceLogging ? ", device logging" : "")}");
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
        if (_hwLog is null)
        {
            UpdateRelayMode();
            return;
        }
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

    // ---- live migration: the software relay (a device without a dirty log) ----

    /// <summary>
    /// Switches the running rings between direct mode and the software relay: relayed exactly while the
    /// device runs with LOG_ALL acked and a log, on a device that cannot log itself. Each ring stops where it
    /// stands (its last used entries reach the guest) and restarts from that state on the other areas, so
    /// no buffer is lost or used twice. A new log while relaying is handed to the relay thread before the old
    /// one goes.
    /// </summary>
    private void UpdateRelayMode()
    {
        bool want = _configured && Acked(VirtioFeature.F_LOG_ALL) && _dirtyLog is not null && !Packed;
        if (want && _vringRelay is not null)
        {
            _vringRelay.SetLog(_dirtyLog!);
        }
        if (want == _relayOn)
        {
            return;
        }
        if (want && MemoryEnd(_memory) > VringRelay.IovaBase)
        {
            throw new VhostUserRequestException($"guest memory reaches 0x{MemoryEnd(_memory):x}, where the relay's rings would be mapped for the device (0x{VringRelay.IovaBase:x})");
        }
        int[] running = [.. Enumerable.Range(0, _rings.Length).Where(q => _rings[q].Running)];
        if (running.Length > 0 && PlainRings)
        {
            SwitchPlainDevice(want, running.Length);
            return;
        }
        foreach (int q in running)
        {
            StopQueue(q);
        }
        if (want)
        {
            _vringRelay ??= new VringRelay(_device, _rings.Length, _options.Name, _log);
            _vringRelay.SetMemory(_memory.Regions);
            _vringRelay.SetLog(_dirtyLog!);
        }
        _relayOn = want;
        foreach (int q in running)
        {
            StartQueue(q);
        }
        if (!want)
        {
            DisposeRelayThread();
        }
        UpdateRelay();
        _log(want
            ? $"device {_device.Name} keeps no dirty log: {running.Length} ring(s) switched to the software relay (mediated rings at IOVA 0x{VringRelay.IovaBase:x}; the relay marks the pages the device writes and the used rings)"
            : $"software relay off: {running.Length} ring(s) back on the guest's rings ({RelayedEntries} used entries relayed)");
    }

    /// <summary>
    /// True for a device that can neither stop one ring nor start a ring anywhere but position 0 (a plain
    /// virtio function through VFIO: no ring state to read or write, queue_enable cannot be cleared).
    /// </summary>
    private bool PlainRings
    {
        get
        {
            if (_plainRings is null)
            {
                try
                {
                    _device.GetVqState(0);
                    _plainRings = false;
                }
                catch (VdpaNotSupportedException)
                {
                    _plainRings = true;
                }
            }
            return _plainRings.Value;
        }
    }

    private bool? _plainRings;

    /// <summary>
    /// The relay switch on a plain virtio function. On: the whole device restarts (reset, then every ring
    /// starts relayed at the device's position 0, the relay translating to the guest's positions; the
    /// guest's outstanding buffers are offered again). Off: the rings stay on the relay, which stops marking,
    /// because the device cannot start a ring at the guest's position; direct mode returns at the next
    /// device start (a new front-end, or rings set up afresh).
    /// </summary>
    private void SwitchPlainDevice(bool on, int running)
    {
        if (!on)
        {
            _vringRelay?.SetLog(null);
            _log($"software relay stops marking: {running} ring(s) stay on the relay (device {_device.Name} is a plain virtio function, which cannot start a ring at the guest's position; direct mode at its next start)");
            return;
        }
        _log($"device {_device.Name} keeps no dirty log and cannot restart one ring (plain virtio function): resetting it to start its {running} ring(s) on the software relay");
        Deconfigure();
        Configure(); // UpdateDirtyLog -> UpdateRelayMode with no ring running: the rings then start relayed
    }

    /// <summary>Starts ring <paramref name="q"/> (size already set) on the relay's mediated areas.</summary>
    private void StartRelayedQueue(int q, (ulong Desc, ulong Avail, ulong Used) gpa)
    {
        var r = _rings[q];
        var relay = _vringRelay!;
        bool fromZero = PlainRings; // a plain function starts every ring at 0 after its reset
        var (availIova, usedIova, interrupt) = relay.Prepare(q, r, gpa, Acked(VirtioFeature.F_RING_EVENT_IDX), fromZero);
        try
        {
            _device.SetVqAddress(q, gpa.Desc, availIova, usedIova);
            _device.SetVqState(q, fromZero ? default : ResumeState(q, gpa.Used));
            _device.SetVqCallback(q, VdpaCallback.ForEventFd(interrupt));
            _device.SetVqReady(q, true);
        }
        catch
        {
            Teardown($"ring {q}: stop", () => _device.SetVqReady(q, false));
            Teardown($"ring {q}: callback", () => _device.SetVqCallback(q, null));
            RetireRelayInterrupt(relay.Release(q));
            throw;
        }
        r.Running = true;
        r.Relayed = true;
        relay.Attach(q); // kicks go to the relay: no host notifier, not in the kick relay
    }

    /// <summary>A relayed ring the device stopped: its last used entries to the guest, its mediated areas released.</summary>
    private void FinishRelayedQueue(int q)
    {
        _vringRelay!.Drain(q);
        RetireRelayInterrupt(_vringRelay.Release(q));
        _rings[q].Relayed = false;
    }

    /// <summary>After a device reset: every relayed ring's areas released, the relay thread gone.</summary>
    private void ReleaseRelay()
    {
        for (int q = 0; q < _rings.Length; q++)
        {
            if (_rings[q].Relayed)
            {
                _vringRelay?.Release(q)?.Dispose(); // the device is reset: nothing signals it any more
                _rings[q].Relayed = false;
            }
        }
        _relayOn = false;
        DisposeRelayThread();
    }

    private void DisposeRelayThread()
    {
        if (_vringRelay is { } relay)
        {
            _relayedBefore += relay.Relayed;
            relay.Dispose();
            _vringRelay = null;
        }
    }

    /// <summary>The device may still signal a relay interrupt it was given a moment ago: closed at the next device stop.</summary>
    private void RetireRelayInterrupt(EventFd? fd)
    {
        if (fd is not null)
        {
            _retiredCalls.Add(fd);
        }
    }

    // ---- the wire at the switch-over ----

    /// <summary>
    /// The device stops while QEMU logs: the migration's switch-over (QEMU stops the source's devices, then
    /// sends the rest of RAM and the device state). The device's wire (the software VF's TAP) drops its carrier,
    /// so a bridge forgets the guest's MAC on this port and floods the guest's frames to its other ports, where
    /// the destination's TAP holds them until its device runs (a ping sent in the stop is answered late, not
    /// lost); without it the bridge keeps sending them here, into a device that never runs them again, until the
    /// guest announces itself from the destination. On again when the device runs again (a migration that
    /// failed after the stop) or the front-end leaves.
    /// </summary>
    private void WireOffAtSwitchOver()
    {
        if (_inject is null || !LoggingRequested || _wireOff)
        {
            return;
        }
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        Teardown("carrier off", () =>
        {
            if (_inject.SetWireCarrier(false))
            {
                _wireOff = true;
                double ms = System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                _log(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                    $"device {_device.Name} stopped while logging (migration switch-over): carrier of its wire off (in {ms:0.00} ms), the guest's frames go to the other ports"));
            }
        });
    }

    /// <summary>The carrier back on after <see cref="WireOffAtSwitchOver"/> (device running again, or the front-end gone).</summary>
    private void WireOn()
    {
        if (!_wireOff || _inject is null)
        {
            return;
        }
        _wireOff = false;
        Teardown("carrier on", () =>
        {
            if (_inject.SetWireCarrier(true))
            {
                _log($"device {_device.Name}: carrier of its wire on again");
            }
        });
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
