namespace IfcVdpa.Ifcvf;

/// <summary>
/// How a vDPA device is created on an IFC VF: probe choices plus the `vdpa dev add` provisioning
/// attributes (name, mac, mtu, max_vqp, device_features).
/// </summary>
public sealed record IfcvfAdapterOptions
{
    /// <summary>vDPA device name (`vdpa0`); must be set by the management layer.</summary>
    public string Name { get; init; } = "vdpa0";

    /// <summary>
    /// Also accept a plain modern virtio-net function (1AF4:1041 with any subsystem), like DPDK's
    /// <c>vdpa=1</c> devarg. The IFC-only live-migration block (BAR4 ring state) is then never touched.
    /// </summary>
    public bool AcceptGenericVirtioNet { get; init; }

    /// <summary>
    /// Kernel-style interface (virtio_vdpa / vhost-vdpa): driver features must include ACCESS_PLATFORM.
    /// The vhost-user consumer turns this off (its rings use guest-physical addresses).
    /// </summary>
    public bool RequireAccessPlatform { get; init; } = true;

    /// <summary>Provisioned device features (must be a subset of what the VF offers); null = all of them.</summary>
    public ulong? DeviceFeatures { get; init; }

    /// <summary>Provisioned MAC, written into the VF's device config at creation; null = keep the VF's.</summary>
    public ReadOnlyMemory<byte>? Mac { get; init; }

    /// <summary>Provisioned MTU reported in the config space (68..VF MTU); null = the VF's.</summary>
    public ushort? Mtu { get; init; }

    /// <summary>Provisioned max_virtqueue_pairs (1..VF pairs); null = the VF's.</summary>
    public ushort? MaxVqPairs { get; init; }

    /// <summary>Register-level choices for the hardware layer.</summary>
    public IfcvfHwOptions Hw { get; init; } = new();
}

/// <summary>How the adapter spread the vqs and the config change over the MSI-X vectors it got (Linux ≥5.18).</summary>
public enum IfcvfIrqMode
{
    /// <summary>Interrupts not set up (device not DRIVER_OK).</summary>
    None,

    /// <summary>One vector per vq (vq i → vector i) plus one for config (vector nr_vring).</summary>
    PerVq,

    /// <summary>All vqs share vector 0 (every vq callback runs), config on vector 1.</summary>
    SharedVq,

    /// <summary>One vector for everything: the handler reads ISR for the config bit, then runs every vq callback.</summary>
    DeviceShared,
}
