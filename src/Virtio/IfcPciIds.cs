namespace IfcVdpa.Virtio;

/// <summary>The device class an IFC VF presents.</summary>
public enum IfcDeviceClass
{
    Net,
    Block,
}

/// <summary>One entry of the IFC VF PCI ID table.</summary>
public readonly record struct IfcPciId(ushort Device, ushort SubsystemDevice, IfcDeviceClass Class, string Description)
{
    public ushort Vendor => VirtioPci.VendorId;

    public ushort SubsystemVendor => IfcPciIds.IntelVendor;
}

/// <summary>
/// The IFC VF PCI ID table (Linux ifcvf_pci_ids, DPDK pci_id_ifcvf_map), written once: the driver's probe,
/// the sysfs scan, the software VF's identity and the lspci formatter all read it.
/// </summary>
public static class IfcPciIds
{
    public const ushort IntelVendor = 0x8086;

    /// <summary>N3000 FPGA net VF: 1AF4:1041, subsystem 8086:001A.</summary>
    public static readonly IfcPciId N3000Net = new(VirtioPci.ModernNetDeviceId, 0x001A, IfcDeviceClass.Net, "IFC VF (N3000 FPGA 100G, vDPA)");

    /// <summary>C5000X-PL net VF with the transitional device ID: 1AF4:1000, subsystem 8086:0001 (driven in modern mode).</summary>
    public static readonly IfcPciId C5000XNet = new(VirtioPci.TransitionalNetDeviceId, 0x0001, IfcDeviceClass.Net, "IFC VF (C5000X-PL net, transitional ID)");

    /// <summary>C5000X-PL block VF, modern ID: 1AF4:1042, subsystem 8086:0002.</summary>
    public static readonly IfcPciId C5000XBlockModern = new(0x1042, 0x0002, IfcDeviceClass.Block, "IFC VF (C5000X-PL block)");

    /// <summary>C5000X-PL block VF, transitional ID: 1AF4:1001, subsystem 8086:0002.</summary>
    public static readonly IfcPciId C5000XBlock = new(0x1001, 0x0002, IfcDeviceClass.Block, "IFC VF (C5000X-PL block, transitional ID)");

    public static IReadOnlyList<IfcPciId> All { get; } = [N3000Net, C5000XNet, C5000XBlockModern, C5000XBlock];

    /// <summary>The table entry for a function's IDs, or null when it is not an IFC VF.</summary>
    public static IfcPciId? Find(ushort vendor, ushort device, ushort subsystemVendor, ushort subsystemDevice)
    {
        if (vendor != VirtioPci.VendorId || subsystemVendor != IntelVendor)
        {
            return null;
        }
        foreach (var id in All)
        {
            if (id.Device == device && id.SubsystemDevice == subsystemDevice)
            {
                return id;
            }
        }
        return null;
    }
}
