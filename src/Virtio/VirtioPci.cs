namespace IfcVdpa.Virtio;

/// <summary>Virtio PCI transport layout (VIRTIO 1.2 §4.1): capability types and register offsets.</summary>
public static class VirtioPci
{
    public const ushort VendorId = 0x1AF4;
    public const ushort ModernNetDeviceId = 0x1041;
    public const ushort TransitionalNetDeviceId = 0x1000;

    // struct virtio_pci_cap.cfg_type
    public const byte CAP_COMMON_CFG = 1;
    public const byte CAP_NOTIFY_CFG = 2;
    public const byte CAP_ISR_CFG = 3;
    public const byte CAP_DEVICE_CFG = 4;
    public const byte CAP_PCI_CFG = 5;

    // struct virtio_pci_cap field offsets
    public const int CapVndr = 0;
    public const int CapNext = 1;
    public const int CapLen = 2;
    public const int CapCfgType = 3;
    public const int CapBar = 4;
    public const int CapId = 5;
    public const int CapOffset = 8;
    public const int CapLength = 12;
    public const int NotifyOffMultiplier = 16;

    // struct virtio_pci_common_cfg
    public const int DeviceFeatureSelect = 0x00;
    public const int DeviceFeature = 0x04;
    public const int DriverFeatureSelect = 0x08;
    public const int DriverFeature = 0x0C;
    public const int MsixConfig = 0x10;
    public const int NumQueues = 0x12;
    public const int DeviceStatus = 0x14;
    public const int ConfigGeneration = 0x15;
    public const int QueueSelect = 0x16;
    public const int QueueSize = 0x18;
    public const int QueueMsixVector = 0x1A;
    public const int QueueEnable = 0x1C;
    public const int QueueNotifyOff = 0x1E;
    public const int QueueDescLo = 0x20;
    public const int QueueDescHi = 0x24;
    public const int QueueAvailLo = 0x28;
    public const int QueueAvailHi = 0x2C;
    public const int QueueUsedLo = 0x30;
    public const int QueueUsedHi = 0x34;
    public const int CommonCfgSize = 0x38;

    public const ushort NoVector = 0xFFFF; // VIRTIO_MSI_NO_VECTOR

    public const byte IsrQueue = 0x1;
    public const byte IsrConfig = 0x2;

    public static string CapTypeName(byte t) => t switch
    {
        CAP_COMMON_CFG => "CommonCfg",
        CAP_NOTIFY_CFG => "Notify",
        CAP_ISR_CFG => "ISR",
        CAP_DEVICE_CFG => "DeviceCfg",
        CAP_PCI_CFG => "PCICfg",
        _ => $"Unknown({t})",
    };
}

/// <summary>struct virtio_net_config offsets and status bits.</summary>
public static class VirtioNetConfig
{
    public const int Mac = 0;
    public const int Status = 6;
    public const int MaxVirtqueuePairs = 8;
    public const int Mtu = 10;
    public const int Speed = 12;
    public const int Duplex = 16;
    /// <summary>Bytes of config this project models (mac..duplex, padded like the uapi struct up to rss fields).</summary>
    public const int Size = 24;

    public const ushort S_LINK_UP = 1;
    public const ushort S_ANNOUNCE = 2;
}
