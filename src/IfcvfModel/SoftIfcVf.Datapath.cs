using IfcVdpa.Pci;

namespace IfcVdpa.IfcvfModel;

/// <summary>Hooks between the register file and the datapath engine (additive; see Datapath/).</summary>
public sealed partial class SoftIfcVf : IQueueStatsSource, INetDevice
{
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
}
