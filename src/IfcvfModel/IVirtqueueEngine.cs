namespace IfcVdpa.IfcvfModel;

/// <summary>
/// Where a queue's datapath stands: the next avail entry to consume and the next used entry to fill. For
/// packed rings (VIRTIO 1.2 §2.8) the indices are ring positions and each side has its wrap counter; split
/// rings use free-running indices and ignore the wrap counters (false).
/// </summary>
public readonly record struct RingIndices(ushort LastAvail, bool AvailWrap, ushort LastUsed, bool UsedWrap)
{
    /// <summary>Split-ring indices (no wrap counters).</summary>
    public static RingIndices Split(ushort lastAvail, ushort lastUsed) => new(lastAvail, false, lastUsed, false);
}

/// <summary>What the device hands its datapath when a queue starts running.</summary>
public readonly record struct QueueStart(int Queue, ushort Size, ulong Desc, ulong Avail, ulong Used, RingIndices Base, ulong Features);

/// <summary>
/// The datapath behind the register file. The register model calls these with its register lock held,
/// on the control path only; the engine never calls back into register handlers. A queue runs while it
/// is enabled, the device is DRIVER_OK and neither FAILED nor NEEDS_RESET.
/// </summary>
public interface IVirtqueueEngine
{
    void StartQueue(IVirtqueueDevice device, in QueueStart start);

    /// <summary>Stops processing the queue; when it returns, the engine touches the rings no more.</summary>
    RingIndices StopQueue(int queue);

    /// <summary>A live snapshot of a running queue's indices.</summary>
    RingIndices PeekQueue(int queue);

    /// <summary>A doorbell write for the queue (called without the register lock, from the writer's thread).</summary>
    void Notify(int queue);
}
