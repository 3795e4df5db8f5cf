using IfcVdpa.Pci;

namespace IfcVdpa.IfcvfModel;

/// <summary>Hooks between the register file and the datapath engine (additive; see Datapath/).</summary>
public sealed partial class SoftIfcVf : IQueueStatsSource, INetDevice, IPciFrameInjection
{
    private long _needsResetEvents;

    /// <summary>Times the device set NEEDS_RESET since it was created (a reset clears the bit, not this count).</summary>
    public long NeedsResetEvents => Volatile.Read(ref _needsResetEvents);

    /// <summary>Per-queue datapath counters from the attached engine (kicks only when it keeps none).</summary>
    public QueueCounters GetQueueCounters(int queue)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(queue);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(queue, NumQueues);
        IVirtqueueEngine? engine;
        lock (_regs)
        {
            engine = _engine;
        }
        return engine is IQueueStatsSource s
            ? s.GetQueueCounters(queue)
            : new QueueCounters(0, 0, DoorbellCount(queue), 0, 0, 0);
    }

    /// <summary>
    /// For the datapath worker: tries to take the register lock without blocking. A worker must never
    /// block on it, because the control path holds it while it waits in <see cref="IVirtqueueEngine.StopQueue"/>.
    /// </summary>
    bool IVirtqueueDevice.TryEnterRegisters() => _regs.TryEnter();

    void IVirtqueueDevice.ExitRegisters() => _regs.Exit();

    int INetDevice.QueuePairs => _options.QueuePairs;

    bool INetDevice.HasControlQueue => _options.ControlQueue;

    /// <summary>
    /// For the datapath: the dirty log as programmed (bitmap IOVA range), read without the register lock.
    /// A driver programs base and end before it sets the control word, so a reader that sees logging
    /// enabled sees the range too.
    /// </summary>
    bool IVirtqueueDevice.TryGetDirtyLog(out ulong logBase, out ulong logEnd)
    {
        bool on = Volatile.Read(ref _lmCtrl) == IfcVdpa.Virtio.IfcLiveMigration.LoggingEnableVf;
        logBase = Volatile.Read(ref _lmBase);
        logEnd = Volatile.Read(ref _lmEnd);
        return on;
    }

    /// <summary>Whether a virtio-net datapath is attached that can send a frame on the driver's behalf.</summary>
    public bool CanInjectFrames
    {
        get { lock (_regs) { return _engine is Datapath.VirtioNetEngine; } }
    }

    /// <summary>
    /// Sends an Ethernet frame out of the VF's wire from queue pair 0, as if the driver had transmitted it
    /// (the vhost back-end's RARP announce). Not a register of the real VF: the model's test hook that the
    /// driver reaches through <see cref="IPciFrameInjection"/>.
    /// </summary>
    public bool InjectFrame(ReadOnlySpan<byte> frame)
    {
        IVirtqueueEngine? engine;
        lock (_regs)
        {
            engine = _engine;
        }
        return engine is Datapath.VirtioNetEngine net && net.InjectFrame(frame);
    }

    /// <summary>
    /// Sets the carrier of the VF's wire where the backend has one (a TAP: off, a bridge forgets the MACs it
    /// learned on that port and floods them elsewhere). Not a register of the real VF: the model's hook for a
    /// vhost back-end whose guest migrated away (<see cref="IPciFrameInjection.SetWireCarrier"/>).
    /// </summary>
    public bool SetWireCarrier(bool up)
    {
        IVirtqueueEngine? engine;
        lock (_regs)
        {
            engine = _engine;
        }
        return engine is Datapath.VirtioNetEngine net && net.SetWireCarrier(up);
    }
}
