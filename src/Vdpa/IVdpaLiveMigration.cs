namespace IfcVdpa.Vdpa;

/// <summary>
/// Optional vDPA ops for a device that logs the guest pages it writes (the IFC VF's LM block; DPDK's ifc
/// driver programs it from <c>set_features</c> when VHOST_F_LOG_ALL is negotiated, ifcvf_enable_logging).
/// Linux's <c>vdpa_config_ops</c> has no such op: vhost-vdpa migrates through suspend + get_vq_state and
/// leaves dirty tracking to the IOMMU, so a consumer checks for this interface and falls back (no logging,
/// or a software relay) when a device lacks it or <see cref="CanLogDirtyPages"/> is false.
/// </summary>
/// <remarks>
/// The log is the vhost-user bitmap: bit n set = the 4 KiB page at IOVA n·4096 was written (IOVA = guest
/// physical for the vhost consumer), set with an atomic OR. The caller DMA-maps the bitmap itself
/// (<see cref="IVdpaDevice.DmaMap"/>) at an IOVA outside guest memory before it enables the log. The device
/// marks the data buffers it writes; used rings are the consumer's to mark when it stops a queue (IFC
/// hardware does not log its used-ring writes).
/// </remarks>
public interface IVdpaDirtyLog
{
    /// <summary>Whether this device can keep a dirty log at all (the IFC VF: it has the LM block).</summary>
    bool CanLogDirtyPages { get; }

    /// <summary>Whether the log is on.</summary>
    bool DirtyLogEnabled { get; }

    /// <summary>Starts logging into the bitmap at IOVA [<paramref name="logIova"/>, +<paramref name="logSize"/>); again with another range moves the log.</summary>
    void EnableDirtyLog(ulong logIova, ulong logSize);

    /// <summary>Stops logging (idempotent).</summary>
    void DisableDirtyLog();
}

/// <summary>
/// Optional vDPA op for a network device that can transmit a frame on its driver's behalf, outside the
/// rings: what a vhost back-end needs for SEND_RARP (DPDK calls the vDPA driver's <c>migration_done</c>
/// and injects the RARP itself). A VFIO IFC VF cannot (nothing but its rings reaches its wire), so it
/// reports <see cref="CanInjectFrames"/> false.
/// </summary>
public interface IVdpaFrameInjection
{
    bool CanInjectFrames { get; }

    /// <summary>Queues one Ethernet frame (no virtio-net header) for transmission; a refusal is a <see cref="VdpaException"/>.</summary>
    void InjectFrame(ReadOnlySpan<byte> frame);

    /// <summary>
    /// Sets the carrier of the device's own wire (the software VF's TAP). Off at a migration's switch-over, a
    /// bridge stops sending the guest's frames to the stopped source and floods them, so the destination's
    /// port holds them until its device runs. False when the device has no such carrier.
    /// </summary>
    bool SetWireCarrier(bool up);
}
