namespace IfcVdpa.Pci;

/// <summary>Counters a function keeps per virtqueue (the software IFC VF; real hardware has none).</summary>
public readonly record struct QueueCounters(long Packets, long Bytes, long Kicks, long Interrupts, long Errors, long Drops)
{
    /// <summary>Guest pages this queue's buffers marked in the dirty log (bits it found clear; 0 without logging).</summary>
    public long DirtyPages { get; init; }
}

/// <summary>Optional capability of an <see cref="IPciFunction"/>: per-queue datapath statistics (vendor vq stats).</summary>
public interface IQueueStatsSource
{
    QueueCounters GetQueueCounters(int queue);

    /// <summary>Times the function entered NEEDS_RESET (a device error it reported to its driver); 0 when it keeps no count.</summary>
    long NeedsResetEvents => 0;
}

/// <summary>
/// Optional capability of an <see cref="IPciFunction"/>: transmitting a frame on the function's network side
/// as if its driver had sent it (the software IFC VF, for a RARP announce after a migration). A real VF has
/// no such register, so a VFIO function never implements it.
/// </summary>
public interface IPciFrameInjection
{
    /// <summary>Whether a frame can be sent now (the software VF: a virtio-net datapath is attached).</summary>
    bool CanInjectFrames { get; }

    /// <summary>Queues an Ethernet frame (no virtio-net header) for transmission on queue pair 0's wire; false if it cannot.</summary>
    bool InjectFrame(ReadOnlySpan<byte> frame);

    /// <summary>Sets the carrier of the function's wire (the software VF's TAP); false when it has none to set.</summary>
    bool SetWireCarrier(bool up);
}
