using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Vdpa;

/// <summary>
/// Where a virtqueue's used-buffer (or a config-change) notification goes: an eventfd that is written
/// directly by the device's interrupt (a vhost-user call fd: no extra hop), or an in-process handler.
/// </summary>
public sealed class VdpaCallback
{
    private VdpaCallback(EventFd? eventFd, Action? handler)
    {
        EventFd = eventFd;
        Handler = handler;
    }

    public EventFd? EventFd { get; }

    public Action? Handler { get; }

    public static VdpaCallback ForEventFd(EventFd fd) => new(fd, null);

    public static VdpaCallback ForHandler(Action handler) => new(null, handler);

    public void Invoke()
    {
        if (EventFd is not null)
        {
            EventFd.Signal();
        }
        else
        {
            Handler?.Invoke();
        }
    }
}

/// <summary>
/// vdpa_vq_state: where a stopped virtqueue stands.
/// <list type="bullet">
/// <item>Split ring: <see cref="AvailIndex"/> is the next avail index the device will process (free-running
/// 16-bit), <see cref="UsedIndex"/> the next used index it will write (equal to it when nothing is in flight);
/// the wrap counters are unused (false).</item>
/// <item>Packed ring (vdpa_vq_state_packed): both indices are ring positions (0..size-1, 15 bits), each with
/// its wrap counter. A fresh packed ring is position 0 with both counters set (<see cref="PackedInitial"/>).</item>
/// </list>
/// No wire encoding travels here: a consumer whose protocol packs the wrap counter into bit 15 (vhost-user)
/// decodes it itself.
/// </summary>
public readonly record struct VdpaVqState(ushort AvailIndex, ushort UsedIndex)
{
    /// <summary>Packed ring only: the driver ring wrap counter that goes with <see cref="AvailIndex"/>.</summary>
    public bool AvailWrapCounter { get; init; }

    /// <summary>Packed ring only: the device ring wrap counter that goes with <see cref="UsedIndex"/>.</summary>
    public bool UsedWrapCounter { get; init; }

    /// <summary>A split ring's state.</summary>
    public static VdpaVqState Split(ushort availIndex, ushort usedIndex) => new(availIndex, usedIndex);

    /// <summary>A packed ring's state (positions below 0x8000).</summary>
    public static VdpaVqState Packed(ushort availIndex, bool availWrapCounter, ushort usedIndex, bool usedWrapCounter)
    {
        if (availIndex >= 0x8000 || usedIndex >= 0x8000)
        {
            throw new ArgumentOutOfRangeException(nameof(availIndex), $"packed ring positions are 15 bits (avail {availIndex}, used {usedIndex})");
        }
        return new(availIndex, usedIndex) { AvailWrapCounter = availWrapCounter, UsedWrapCounter = usedWrapCounter };
    }

    /// <summary>A packed ring nothing has used yet: position 0, both wrap counters 1.</summary>
    public static VdpaVqState PackedInitial => Packed(0, true, 0, true);

    public override string ToString() => AvailWrapCounter || UsedWrapCounter
        ? $"avail {AvailIndex} wrap {(AvailWrapCounter ? 1 : 0)}, used {UsedIndex} wrap {(UsedWrapCounter ? 1 : 0)}"
        : $"avail {AvailIndex}, used {UsedIndex}";
}

/// <summary>
/// Doorbell location for direct mapping (get_vq_notification): PCI BAR, offset in it, size of the
/// queue's notify area (the notify_off_multiplier). When another process can mmap the doorbell (a
/// function behind VFIO whose BAR region is mmappable), <see cref="MapFd"/> is the descriptor to map
/// and <see cref="MapOffset"/> the file offset of the doorbell in it (as DPDK's get_vfio_device_fd +
/// get_notify_area); otherwise <see cref="MapFd"/> is null.
/// </summary>
public readonly record struct VdpaNotificationArea(int Bar, ulong Offset, ulong Size)
{
    /// <summary>Descriptor to mmap (owned by the device, valid while it is open: never dispose it).</summary>
    public SafeFd? MapFd { get; init; }

    /// <summary>File offset of the doorbell in <see cref="MapFd"/>.</summary>
    public ulong MapOffset { get; init; }
}

/// <summary>Per-virtqueue counters (like `vdpa dev vstats`).</summary>
public readonly record struct VdpaVqStats(
    long Packets, long Bytes, long Kicks, long Interrupts, long Errors, long Drops)
{
    /// <summary>Guest pages the device marked in the dirty log for this queue's buffers (0 when it keeps no count).</summary>
    public long DirtyPages { get; init; }
}

/// <summary>
/// Optional driver-side facts a management tool prints beside the ops (`dev show`): how interrupts are wired
/// and how many DMA mappings the device holds.
/// </summary>
public interface IVdpaDeviceDiagnostics
{
    /// <summary>How used-buffer notifications are delivered (per-queue vectors, shared, config only, ...).</summary>
    string InterruptMode { get; }

    /// <summary>DMA mappings installed through the device and not yet removed.</summary>
    int DmaMapCount { get; }

    /// <summary>Times the device entered NEEDS_RESET (0 when the function keeps no such count, e.g. real hardware).</summary>
    long NeedsResetEvents => 0;
}

/// <summary>
/// A vDPA device: the operation set of Linux's <c>struct vdpa_config_ops</c>, with the same names in C#
/// form. Consumers (vhost-user back-end, in-process virtio-net driver) only ever see this interface.
/// Errors: a device refusal (an operation it does not support, a value it does not accept, a queue that
/// will not start) is a <see cref="VdpaException"/> with the reason, which consumers report; anything else
/// (an out-of-range queue index, a use after removal) is a caller's bug.
/// </summary>
public interface IVdpaDevice
{
    string Name { get; }

    /// <summary>Number of virtqueues (data queues plus control queue).</summary>
    int NumVqs { get; }

    // ---- device identity ----
    uint GetDeviceId();
    uint GetVendorId();
    uint GetVqAlign();

    // ---- features ----
    ulong GetDeviceFeatures();
    void SetDriverFeatures(ulong features);
    ulong GetDriverFeatures();

    // ---- status ----
    byte GetStatus();
    void SetStatus(byte status);
    void Reset();
    void Suspend();
    void Resume();

    // ---- virtqueues ----
    ushort GetVqNumMax();
    ushort GetVqNumMin();
    ushort GetVqSize(int qid);
    void SetVqNum(int qid, uint num);
    void SetVqAddress(int qid, ulong descArea, ulong driverArea, ulong deviceArea);
    void SetVqReady(int qid, bool ready);
    bool GetVqReady(int qid);
    void SetVqState(int qid, VdpaVqState state);
    VdpaVqState GetVqState(int qid);
    void SetVqCallback(int qid, VdpaCallback? callback);
    void KickVq(int qid);
    VdpaNotificationArea GetVqNotification(int qid);

    // ---- config space ----
    uint GetGeneration();
    uint GetConfigSize();
    void GetConfig(uint offset, Span<byte> buffer);
    void SetConfig(uint offset, ReadOnlySpan<byte> buffer);
    void SetConfigCallback(VdpaCallback? callback);

    // ---- DMA (the device's IOMMU domain: IOVA -> host memory) ----
    /// <summary>Maps [iova, iova + memory.Length) onto <paramref name="memory"/> (pinned until unmapped).</summary>
    void DmaMap(ulong iova, MemorySlice memory, bool writable);
    void DmaUnmap(ulong iova, ulong size);

    // ---- statistics ----
    VdpaVqStats GetVqStats(int qid);
}
