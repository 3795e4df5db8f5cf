using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Native;

/// <summary>
/// The VFIO user ABI (include/uapi/linux/vfio.h). Every VFIO ioctl is <c>_IO(VFIO_TYPE, VFIO_BASE + n)</c>
/// with VFIO_TYPE = ';' (0x3b) and VFIO_BASE = 100: no size or direction is encoded, the structs carry
/// their own <c>argsz</c>. Public so the tests can check numbers and struct sizes against the header.
/// </summary>
public static class VfioAbi
{
    public const uint VFIO_TYPE = 0x3b; // ';'
    public const uint VFIO_BASE = 100;

    private static uint Io(uint nr) => (VFIO_TYPE << 8) | (VFIO_BASE + nr);

    public static readonly uint VFIO_GET_API_VERSION = Io(0);
    public static readonly uint VFIO_CHECK_EXTENSION = Io(1);
    public static readonly uint VFIO_SET_IOMMU = Io(2);
    public static readonly uint VFIO_GROUP_GET_STATUS = Io(3);
    public static readonly uint VFIO_GROUP_SET_CONTAINER = Io(4);
    public static readonly uint VFIO_GROUP_UNSET_CONTAINER = Io(5);
    public static readonly uint VFIO_GROUP_GET_DEVICE_FD = Io(6);
    public static readonly uint VFIO_DEVICE_GET_INFO = Io(7);
    public static readonly uint VFIO_DEVICE_GET_REGION_INFO = Io(8);
    public static readonly uint VFIO_DEVICE_GET_IRQ_INFO = Io(9);
    public static readonly uint VFIO_DEVICE_SET_IRQS = Io(10);
    public static readonly uint VFIO_DEVICE_RESET = Io(11);
    public static readonly uint VFIO_IOMMU_GET_INFO = Io(12);
    public static readonly uint VFIO_IOMMU_MAP_DMA = Io(13);
    public static readonly uint VFIO_IOMMU_UNMAP_DMA = Io(14);

    public const int VFIO_API_VERSION = 0;
    public const int VFIO_TYPE1_IOMMU = 1;
    public const int VFIO_TYPE1v2_IOMMU = 3;

    public const uint VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
    public const uint VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

    public const uint VFIO_DEVICE_FLAGS_RESET = 1 << 0;
    public const uint VFIO_DEVICE_FLAGS_PCI = 1 << 1;

    public const uint VFIO_REGION_INFO_FLAG_READ = 1 << 0;
    public const uint VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
    public const uint VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
    public const uint VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;

    // vfio-pci region and irq indexes
    public const int VFIO_PCI_BAR0_REGION_INDEX = 0;
    public const int VFIO_PCI_BAR5_REGION_INDEX = 5;
    public const int VFIO_PCI_ROM_REGION_INDEX = 6;
    public const int VFIO_PCI_CONFIG_REGION_INDEX = 7;
    public const int VFIO_PCI_INTX_IRQ_INDEX = 0;
    public const int VFIO_PCI_MSI_IRQ_INDEX = 1;
    public const int VFIO_PCI_MSIX_IRQ_INDEX = 2;

    public const uint VFIO_IRQ_INFO_EVENTFD = 1 << 0;
    public const uint VFIO_IRQ_SET_DATA_NONE = 1 << 0;
    public const uint VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
    public const uint VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
    public const uint VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
    public const uint VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
    public const uint VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;

    public const uint VFIO_DMA_MAP_FLAG_READ = 1 << 0;
    public const uint VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;

    /// <summary>sizeof(struct vfio_irq_set) without its flexible data[] (the eventfds follow it).</summary>
    public const int IrqSetHeaderSize = 20;
}

/// <summary>struct vfio_group_status (8 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VfioGroupStatus
{
    public uint Argsz;
    public uint Flags;
}

/// <summary>struct vfio_device_info up to num_irqs (16 bytes, the size every kernel accepts).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VfioDeviceInfo
{
    public uint Argsz;
    public uint Flags;
    public uint NumRegions;
    public uint NumIrqs;
}

/// <summary>struct vfio_region_info (32 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VfioRegionInfo
{
    public uint Argsz;
    public uint Flags;
    public uint Index;
    public uint CapOffset;
    public ulong Size;
    public ulong Offset;
}

/// <summary>struct vfio_irq_info (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VfioIrqInfo
{
    public uint Argsz;
    public uint Flags;
    public uint Index;
    public uint Count;
}

/// <summary>struct vfio_iommu_type1_dma_map (32 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VfioDmaMap
{
    public uint Argsz;
    public uint Flags;
    public ulong Vaddr;
    public ulong Iova;
    public ulong Size;
}

/// <summary>struct vfio_iommu_type1_dma_unmap without its flexible data[] (24 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VfioDmaUnmap
{
    public uint Argsz;
    public uint Flags;
    public ulong Iova;
    public ulong Size;
}
