using IfcVdpa.Pci;

namespace IfcVdpa.IfcvfModel;

/// <summary>Hooks between the register file and the datapath engine (additive; see Datapath/).</summary>
public sealed partial class SoftIfcVf : IQueueStatsSource
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
    internal bool TryEnterRegisters() => _regs.TryEnter();

    internal void ExitRegisters() => _regs.Exit();
}
