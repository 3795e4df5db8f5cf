using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel;

/// <summary>
/// What a virtqueue engine needs from the device it runs for, whatever the device type: memory (the IOVA
/// map), interrupts, the error path (NEEDS_RESET + config interrupt), the dirty log and the register lock.
/// The engine calls <see cref="RaiseNeedsReset"/> and device-config setters only between a successful
/// <see cref="TryEnterRegisters"/> and <see cref="ExitRegisters"/>: the control path holds that lock while
/// it waits for the worker to leave a queue, so a worker never blocks on it.
/// </summary>
public interface IVirtqueueDevice
{
    /// <summary>A name for logs (the PCI address).</summary>
    string Address { get; }

    /// <summary>Everything the device may reach by DMA.</summary>
    IovaMap Dma { get; }

    int NumQueues { get; }

    /// <summary>Raises the queue's interrupt (its MSI-X vector, or INTx with the ISR bit).</summary>
    void RaiseQueueInterrupt(int queue);

    /// <summary>Sets NEEDS_RESET, stops every queue and raises the config interrupt.</summary>
    void RaiseNeedsReset(string reason);

    /// <summary>Takes the register lock if it is free; never blocks.</summary>
    bool TryEnterRegisters();

    void ExitRegisters();

    /// <summary>The dirty log as programmed (bitmap IOVA range), read without the register lock.</summary>
    bool TryGetDirtyLog(out ulong logBase, out ulong logEnd);

    /// <summary>
    /// Counts a driver's virtio spec violation the datapath found (and logs the first of its kind); lock-free.
    /// The datapath treats every ring violation as a ring error anyway (stop, NEEDS_RESET).
    /// </summary>
    bool ReportViolation(SpecRule rule, string detail) => false;
}

/// <summary>The virtio-net device side a net personality needs beyond <see cref="IVirtqueueDevice"/>: its config space.</summary>
public interface INetDevice : IVirtqueueDevice
{
    /// <summary>Queue pairs the device has (max_virtqueue_pairs).</summary>
    int QueuePairs { get; }

    /// <summary>Whether the last queue is the control queue (VIRTIO_NET_F_CTRL_VQ offered).</summary>
    bool HasControlQueue { get; }

    /// <summary>The MAC in the device config (a copy).</summary>
    byte[] Mac { get; }

    /// <summary>Register lock held: sets the MAC (VIRTIO_NET_CTRL_MAC_ADDR_SET).</summary>
    void SetMac(ReadOnlySpan<byte> mac);

    /// <summary>Register lock held: sets or clears VIRTIO_NET_S_ANNOUNCE.</summary>
    void SetAnnounce(bool on);

    /// <summary>Sets VIRTIO_NET_S_LINK_UP (takes the register lock itself: never from the worker).</summary>
    void SetLinkUp(bool up);
}
