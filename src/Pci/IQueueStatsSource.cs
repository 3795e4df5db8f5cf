namespace IfcVdpa.Pci;

/// <summary>Counters a function keeps per virtqueue (the software IFC VF; real hardware has none).</summary>
public readonly record struct QueueCounters(long Packets, long Bytes, long Kicks, long Interrupts, long Errors, long Drops);

/// <summary>Optional capability of an <see cref="IPciFunction"/>: per-queue datapath statistics (vendor vq stats).</summary>
public interface IQueueStatsSource
{
    QueueCounters GetQueueCounters(int queue);
}
