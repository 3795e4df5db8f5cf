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

/// <summary>vdpa_vq_state for split rings: the next avail index the device will process.</summary>
public readonly record struct VdpaVqState(ushort AvailIndex, ushort UsedIndex);

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
    long Packets, long Bytes, long Kicks, long Interrupts, long Errors, long Drops);

/// <summary>
/// A vDPA device: the operation set of Linux's <c>struct vdpa_config_ops</c>, with the same names in C#
/// form. Consumers (vhost-user back-end, in-process virtio-net driver) only ever see this interface.
/// Operations a device cannot do throw <see cref="NotSupportedException"/> with the reason.
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
    void DmaMap(ulong iova, ulong size, nint hostAddress, bool writable);
    void DmaUnmap(ulong iova, ulong size);

    // ---- statistics ----
    VdpaVqStats GetVqStats(int qid);
}
