namespace IfcVdpa.IfcvfModel;

/// <summary>What the device hands its datapath when a queue starts running.</summary>
public readonly record struct QueueStart(
    int Queue, ushort Size, ulong Desc, ulong Avail, ulong Used, ushort LastAvail, ushort LastUsed, ulong Features);

/// <summary>Where a queue's datapath stands: next avail entry to consume, next used entry to fill.</summary>
public readonly record struct RingIndices(ushort LastAvail, ushort LastUsed);

/// <summary>
/// The datapath behind the register file. The register model calls these with its register lock held,
/// on the control path only; the engine never calls back into register handlers. A queue runs while it
/// is enabled, the device is DRIVER_OK and neither FAILED nor NEEDS_RESET.
/// </summary>
public interface IVirtqueueEngine
{
    void StartQueue(SoftIfcVf device, in QueueStart start);

    /// <summary>Stops processing the queue; when it returns, the engine touches the rings no more.</summary>
    RingIndices StopQueue(int queue);

    /// <summary>A live snapshot of a running queue's indices.</summary>
    RingIndices PeekQueue(int queue);

    /// <summary>A doorbell write for the queue (called without the register lock, from the writer's thread).</summary>
    void Notify(int queue);
}
