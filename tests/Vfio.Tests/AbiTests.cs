using System.Runtime.InteropServices;
using IfcVdpa.Interop.Native;

namespace IfcVdpa.Vfio.Tests;

/// <summary>
/// The VFIO ABI against include/uapi/linux/vfio.h: _IO(';', 100 + n) request numbers (decimal values as
/// the kernel computes them) and the struct layouts the kernel copies (sizes and field offsets).
/// </summary>
public sealed class AbiTests
{
    [Theory]
    [InlineData("GET_API_VERSION", 15204u)]
    [InlineData("CHECK_EXTENSION", 15205u)]
    [InlineData("SET_IOMMU", 15206u)]
    [InlineData("GROUP_GET_STATUS", 15207u)]
    [InlineData("GROUP_SET_CONTAINER", 15208u)]
    [InlineData("GROUP_UNSET_CONTAINER", 15209u)]
    [InlineData("GROUP_GET_DEVICE_FD", 15210u)]
    [InlineData("DEVICE_GET_INFO", 15211u)]
    [InlineData("DEVICE_GET_REGION_INFO", 15212u)]
    [InlineData("DEVICE_GET_IRQ_INFO", 15213u)]
    [InlineData("DEVICE_SET_IRQS", 15214u)]
    [InlineData("DEVICE_RESET", 15215u)]
    [InlineData("IOMMU_GET_INFO", 15216u)]
    [InlineData("IOMMU_MAP_DMA", 15217u)]
    [InlineData("IOMMU_UNMAP_DMA", 15218u)]
    public void Ioctl_numbers_match_the_header(string name, uint expected)
    {
        uint actual = name switch
        {
            "GET_API_VERSION" => VfioAbi.VFIO_GET_API_VERSION,
            "CHECK_EXTENSION" => VfioAbi.VFIO_CHECK_EXTENSION,
            "SET_IOMMU" => VfioAbi.VFIO_SET_IOMMU,
            "GROUP_GET_STATUS" => VfioAbi.VFIO_GROUP_GET_STATUS,
            "GROUP_SET_CONTAINER" => VfioAbi.VFIO_GROUP_SET_CONTAINER,
            "GROUP_UNSET_CONTAINER" => VfioAbi.VFIO_GROUP_UNSET_CONTAINER,
            "GROUP_GET_DEVICE_FD" => VfioAbi.VFIO_GROUP_GET_DEVICE_FD,
            "DEVICE_GET_INFO" => VfioAbi.VFIO_DEVICE_GET_INFO,
            "DEVICE_GET_REGION_INFO" => VfioAbi.VFIO_DEVICE_GET_REGION_INFO,
            "DEVICE_GET_IRQ_INFO" => VfioAbi.VFIO_DEVICE_GET_IRQ_INFO,
            "DEVICE_SET_IRQS" => VfioAbi.VFIO_DEVICE_SET_IRQS,
            "DEVICE_RESET" => VfioAbi.VFIO_DEVICE_RESET,
            "IOMMU_GET_INFO" => VfioAbi.VFIO_IOMMU_GET_INFO,
            "IOMMU_MAP_DMA" => VfioAbi.VFIO_IOMMU_MAP_DMA,
            "IOMMU_UNMAP_DMA" => VfioAbi.VFIO_IOMMU_UNMAP_DMA,
            _ => throw new ArgumentException(name),
        };
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void Struct_sizes_match_the_header()
    {
        Assert.Equal(8, Marshal.SizeOf<VfioGroupStatus>());
        Assert.Equal(16, Marshal.SizeOf<VfioDeviceInfo>());
        Assert.Equal(32, Marshal.SizeOf<VfioRegionInfo>());
        Assert.Equal(16, Marshal.SizeOf<VfioIrqInfo>());
        Assert.Equal(32, Marshal.SizeOf<VfioDmaMap>());
        Assert.Equal(24, Marshal.SizeOf<VfioDmaUnmap>());
        Assert.Equal(20, VfioAbi.IrqSetHeaderSize); // argsz, flags, index, start, count
    }

    [Fact]
    public void Field_offsets_match_the_header()
    {
        Assert.Equal(12, (int)Marshal.OffsetOf<VfioDeviceInfo>(nameof(VfioDeviceInfo.NumIrqs)));
        Assert.Equal(8, (int)Marshal.OffsetOf<VfioRegionInfo>(nameof(VfioRegionInfo.Index)));
        Assert.Equal(16, (int)Marshal.OffsetOf<VfioRegionInfo>(nameof(VfioRegionInfo.Size)));
        Assert.Equal(24, (int)Marshal.OffsetOf<VfioRegionInfo>(nameof(VfioRegionInfo.Offset)));
        Assert.Equal(12, (int)Marshal.OffsetOf<VfioIrqInfo>(nameof(VfioIrqInfo.Count)));
        Assert.Equal(8, (int)Marshal.OffsetOf<VfioDmaMap>(nameof(VfioDmaMap.Vaddr)));
        Assert.Equal(16, (int)Marshal.OffsetOf<VfioDmaMap>(nameof(VfioDmaMap.Iova)));
        Assert.Equal(24, (int)Marshal.OffsetOf<VfioDmaMap>(nameof(VfioDmaMap.Size)));
        Assert.Equal(8, (int)Marshal.OffsetOf<VfioDmaUnmap>(nameof(VfioDmaUnmap.Iova)));
        Assert.Equal(16, (int)Marshal.OffsetOf<VfioDmaUnmap>(nameof(VfioDmaUnmap.Size)));
    }

    [Fact]
    public void Flag_values_match_the_header()
    {
        Assert.Equal(7, VfioAbi.VFIO_PCI_CONFIG_REGION_INDEX);
        Assert.Equal(2, VfioAbi.VFIO_PCI_MSIX_IRQ_INDEX);
        Assert.Equal(1, VfioAbi.VFIO_TYPE1_IOMMU);
        Assert.Equal(3, VfioAbi.VFIO_TYPE1v2_IOMMU);
        Assert.Equal(0x24u, VfioAbi.VFIO_IRQ_SET_DATA_EVENTFD | VfioAbi.VFIO_IRQ_SET_ACTION_TRIGGER);
        Assert.Equal(0x21u, VfioAbi.VFIO_IRQ_SET_DATA_NONE | VfioAbi.VFIO_IRQ_SET_ACTION_TRIGGER);
        Assert.Equal(4u, VfioAbi.VFIO_REGION_INFO_FLAG_MMAP);
        Assert.Equal(3u, VfioAbi.VFIO_DMA_MAP_FLAG_READ | VfioAbi.VFIO_DMA_MAP_FLAG_WRITE);
    }
}
