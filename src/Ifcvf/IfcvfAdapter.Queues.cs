using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.Ifcvf;

/// <summary>The virtqueue ops (set_vq_num/address/ready/state, kick_vq, get_vq_notification) and the MQ register.</summary>
public sealed partial class IfcvfAdapter
{
    // ---- virtqueues ----------------------------------------------------------------------------

    /// <summary>The largest non-zero queue_size any queue reported after reset.</summary>
    public ushort GetVqNumMax() => _maxVqNum;

    public ushort GetVqNumMin() => Math.Min(MinVqSize, _maxVqNum);

    /// <summary>The queue's current size register (0 for a queue that does not exist).</summary>
    public ushort GetVqSize(int qid)
    {
        if ((uint)qid >= (uint)NumVqs)
        {
            return 0;
        }
        lock (_ctl)
        {
            ThrowIfRemoved();
            return _hw.GetVqNum(qid);
        }
    }

    public void SetVqNum(int qid, uint num)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            CheckQueue(qid);
            if (num == 0 || num > _maxSize[qid] || (num & (num - 1)) != 0)
            {
                throw new VdpaException($"{Name}: queue {qid} size {num} must be a power of two in 1..{_maxSize[qid]}");
            }
            RequireDisabled(qid, "change its size");
            _hw.SetVqNum(qid, (ushort)num);
        }
    }

    public void SetVqAddress(int qid, ulong descArea, ulong driverArea, ulong deviceArea)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            CheckQueue(qid);
            RequireDisabled(qid, "change its ring addresses");
            _hw.SetVqAddress(qid, descArea, driverArea, deviceArea);
        }
    }

    /// <summary>
    /// set_vq_ready: true writes queue_enable 1 and checks the device took it; false disables the queue
    /// and waits (bounded) until the device reports it stopped, its ring state then being in BAR4.
    /// </summary>
    public void SetVqReady(int qid, bool ready)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            CheckQueue(qid);
            _suspended[qid] = false; // an explicit ready/stop replaces what Suspend did
            if (ready)
            {
                if (_softStopped[qid])
                {
                    throw new IfcvfDeviceException($"{Name}: queue {qid} was stopped on a plain virtio function, which can restart a queue only after a device reset");
                }
                if (!_hw.GetVqReady(qid))
                {
                    // The vector is a queue field: set before queue_enable (VIRTIO 1.2 §4.1.4.3.2), not at DRIVER_OK.
                    ushort v = VqVectorAtEnable(qid);
                    if (_pci.MsixVectorCount > 0 && _hw.SetVqVector(qid, v) != v)
                    {
                        throw new IfcvfDeviceException($"{Name}: device refused vector {v} for queue {qid}");
                    }
                }
                _hw.SetVqReady(qid, true);
                if (!_hw.GetVqReady(qid))
                {
                    throw new IfcvfDeviceException($"{Name}: queue {qid} did not enable (size {_hw.GetVqNum(qid)} refused?)");
                }
                RingDeferredKick(qid);
            }
            else if (!_useLm)
            {
                // A plain virtio 1.x function: the driver must not write 0 to queue_enable (QEMU logs "wrong
                // value for queue_enable" and ignores it); only a device reset stops its queues. The queue
                // keeps running until Reset, as with vp_vdpa, and its state is not readable (GetVqState).
                _softStopped[qid] = true;
            }
            else if (_hw.GetVqReady(qid))
            {
                _hw.DisableVqAndWait(qid);
            }
            if (!ready)
            {
                Volatile.Write(ref _deferredKick[qid], 0); // a kick for a queue the front-end stops is moot
            }
        }
    }

    public bool GetVqReady(int qid)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            CheckQueue(qid);
            return _suspended[qid] || (!_softStopped[qid] && _hw.GetVqReady(qid));
        }
    }

    /// <summary>
    /// set_vq_state: writes the queue's ring-state word in BAR4 (queue must be disabled). The ring format is
    /// the negotiated one (RING_PACKED), so set the driver features first.
    /// </summary>
    public void SetVqState(int qid, VdpaVqState state)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            CheckQueue(qid);
            bool packed = Has(_hw.GetDriverFeatures(), F_RING_PACKED);
            if (!_useLm)
            {
                if (state == (packed ? VdpaVqState.PackedInitial : default))
                {
                    return; // the state every queue starts from after reset
                }
                RequireLiveMigrationBlock("set_vq_state");
            }
            RequireDisabled(qid, "set its state");
            var (avail, used) = packed
                ? (IfcLiveMigration.PackedMark(state.AvailIndex, state.AvailWrapCounter), IfcLiveMigration.PackedMark(state.UsedIndex, state.UsedWrapCounter))
                : (state.AvailIndex, state.UsedIndex);
            _hw.SetVqState(qid, avail, used);
        }
    }

    /// <summary>get_vq_state: the queue's ring state from BAR4 (call before reset: reset loses it).</summary>
    public VdpaVqState GetVqState(int qid)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            CheckQueue(qid);
            RequireLiveMigrationBlock("get_vq_state");
            var (avail, used) = _hw.GetVqRingState(qid);
            if (!Has(_hw.GetDriverFeatures(), F_RING_PACKED))
            {
                return VdpaVqState.Split(avail, used);
            }
            var (a, aw) = IfcLiveMigration.UnpackMark(avail);
            var (u, uw) = IfcLiveMigration.UnpackMark(used);
            return VdpaVqState.Packed(a, aw, u, uw);
        }
    }

    /// <summary>kick_vq: the 16-bit doorbell write. No lock: callable from a kick relay thread.</summary>
    public void KickVq(int qid)
    {
        if ((uint)qid >= (uint)NumVqs)
        {
            ThrowBadQueue(qid);
        }
        Interlocked.Increment(ref _kicks[qid]);
        Interlocked.Increment(ref _kicksInFlight);
        try
        {
            if (Volatile.Read(ref _kickGate) == 0)
            {
                // No DRIVER_OK (before the start, or a reset/stop under way): DRIVER_OK rings it (OpenKickGate).
                Volatile.Write(ref _deferredKick[qid], 1);
                return;
            }
            if (Volatile.Read(ref _suspended[qid]))
            {
                // Suspend disabled the queue: a doorbell now would be a notification for a queue that is not
                // enabled (VIRTIO 1.2 §4.1.5.2). Resume rings it once the queue runs again.
                Volatile.Write(ref _deferredKick[qid], 1);
                if (Volatile.Read(ref _suspended[qid]) || Interlocked.Exchange(ref _deferredKick[qid], 0) == 0)
                {
                    return;
                }
                // Resume re-enabled the queue meanwhile and may have looked before this kick was recorded.
            }
            _hw.NotifyQueue(qid);
        }
        finally
        {
            Interlocked.Decrement(ref _kicksInFlight);
        }
    }

    /// <summary>Rings the doorbell a kick deferred while the queue was suspended (control lock held, queue enabled).</summary>
    private void RingDeferredKick(int qid)
    {
        if (Interlocked.Exchange(ref _deferredKick[qid], 0) != 0)
        {
            _hw.NotifyQueue(qid);
        }
    }

    /// <summary>
    /// get_vq_notification. When the function lets a peer mmap the notify BAR (VFIO), the descriptor and
    /// the doorbell's file offset are filled in (DPDK ifc: get_vfio_device_fd + get_notify_area); whether
    /// a doorbell page may be handed out (alignment, one queue per page) is the consumer's decision.
    /// </summary>
    public VdpaNotificationArea GetVqNotification(int qid)
    {
        CheckQueue(qid);
        var (bar, offset, size) = _hw.GetVqNotification(qid);
        var area = new VdpaNotificationArea(bar, offset, size);
        if (_pci.GetBarMapping(bar) is { } m && offset < m.Size && m.Size - offset >= sizeof(ushort))
        {
            area = area with { MapFd = m.Fd, MapOffset = m.FileOffset + offset };
        }
        return area;
    }

    private void CheckQueue(int qid)
    {
        if ((uint)qid >= (uint)NumVqs)
        {
            ThrowBadQueue(qid);
        }
    }

    private void ThrowBadQueue(int qid) =>
        throw new ArgumentOutOfRangeException(nameof(qid), $"{Name}: queue {qid} does not exist (device has {NumVqs})");

    private void RequireDisabled(int qid, string what)
    {
        if (_hw.GetVqReady(qid))
        {
            throw new VdpaException($"{Name}: queue {qid} is enabled; disable it before you {what}");
        }
    }
}
