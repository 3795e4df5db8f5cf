using IfcVdpa.Interop.Native;
using IfcVdpa.Interop.Primitives;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.Vduse.Tests;

/// <summary>The VDUSE ABI numbers, the message codec, the feature filter and the IOTLB region checks.</summary>
public class VduseProtocolTests
{
    [Fact]
    public void IoctlNumbersMatchTheKernelHeader()
    {
        // _IOC(dir, 0x81, nr, size) with the sizes of include/uapi/linux/vduse.h on x86-64
        Assert.Equal(0x80088100u, VduseAbi.VDUSE_GET_API_VERSION);
        Assert.Equal(0x40088101u, VduseAbi.VDUSE_SET_API_VERSION);
        Assert.Equal(0x41508102u, VduseAbi.VDUSE_CREATE_DEV);      // struct vduse_dev_config: 336 bytes
        Assert.Equal(0x41008103u, VduseAbi.VDUSE_DESTROY_DEV);     // char[256]
        Assert.Equal(0xC0208110u, VduseAbi.VDUSE_IOTLB_GET_FD);    // struct vduse_iotlb_entry: 32
        Assert.Equal(0x80088111u, VduseAbi.VDUSE_DEV_GET_FEATURES);
        Assert.Equal(0x40088112u, VduseAbi.VDUSE_DEV_SET_CONFIG);  // struct vduse_config_data header: 8
        Assert.Equal(0x8113u, VduseAbi.VDUSE_DEV_INJECT_CONFIG_IRQ);
        Assert.Equal(0x40208114u, VduseAbi.VDUSE_VQ_SETUP);        // struct vduse_vq_config: 32
        Assert.Equal(0xC0308115u, VduseAbi.VDUSE_VQ_GET_INFO);     // struct vduse_vq_info: 48
        Assert.Equal(0x40088116u, VduseAbi.VDUSE_VQ_SETUP_KICKFD);
        Assert.Equal(0x40048117u, VduseAbi.VDUSE_VQ_INJECT_IRQ);
        Assert.Equal(152, VduseIoctl.MessageSize);
        Assert.Equal(VduseMessages.Size, VduseIoctl.MessageSize);
    }

    [Fact]
    public void RequestsDecodeTheirUnionMember()
    {
        var m = new byte[VduseMessages.Size];
        var u = new byte[16];
        BitConverter.TryWriteBytes(u.AsSpan(0, 8), 0x1000UL);
        BitConverter.TryWriteBytes(u.AsSpan(8, 8), 0x1fffUL);
        VduseMessages.EncodeRequest(m, VduseRequestType.UpdateIotlb, 7, u);
        Assert.True(VduseMessages.TryDecode(m, out var r, out var err));
        Assert.Null(err);
        Assert.Equal((uint)VduseRequestType.UpdateIotlb, r.Type);
        Assert.Equal(7u, r.RequestId);
        Assert.Equal(0x1000UL, r.IovaStart);
        Assert.Equal(0x1fffUL, r.IovaLast);

        VduseMessages.EncodeRequest(m, VduseRequestType.SetStatus, 8, [0x0f]);
        Assert.True(VduseMessages.TryDecode(m, out r, out _));
        Assert.Equal(0x0f, r.Status);
    }

    [Fact]
    public void ShortOrLongRequestsAreRefused()
    {
        Assert.False(VduseMessages.TryDecode(new byte[151], out _, out var e1));
        Assert.Contains("151 bytes", e1, StringComparison.Ordinal);
        Assert.False(VduseMessages.TryDecode(new byte[153], out _, out _));
    }

    [Fact]
    public void RepliesCarryTheIdAndZeroReservedFields()
    {
        var r = Enumerable.Repeat((byte)0xAA, VduseMessages.Size).ToArray();
        VduseMessages.EncodeSplitState(r, 42, 1, 0x1234);
        Assert.Equal(42u, BitConverter.ToUInt32(r, 0));
        Assert.Equal(VduseMessages.ResultOk, BitConverter.ToUInt32(r, 4));
        Assert.All(r.AsSpan(8, 16).ToArray(), b => Assert.Equal(0, b)); // the kernel refuses non-zero reserved[4]
        Assert.Equal(1u, BitConverter.ToUInt32(r, 24));
        Assert.Equal(0x1234, BitConverter.ToUInt16(r, 28));
        VduseMessages.EncodePackedState(r, 43, 0, true, 5, false, 3);
        Assert.Equal(1, BitConverter.ToUInt16(r, 28));
        Assert.Equal(5, BitConverter.ToUInt16(r, 30));
        Assert.Equal(0, BitConverter.ToUInt16(r, 32));
        Assert.Equal(3, BitConverter.ToUInt16(r, 34));
        VduseMessages.EncodeResult(r, 44, ok: false);
        Assert.Equal(VduseMessages.ResultFailed, BitConverter.ToUInt32(r, 4));
        Assert.All(r.AsSpan(8).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void NetFeaturesLoseTheControlQueueFamilyAndGainAccessPlatform()
    {
        ulong dev = Bit(F_VERSION_1) | Bit(NET_F_MAC) | Bit(NET_F_MTU) | Bit(NET_F_STATUS) | Bit(NET_F_MRG_RXBUF)
            | Bit(NET_F_CTRL_VQ) | Bit(NET_F_MQ) | Bit(NET_F_CTRL_RX) | Bit(NET_F_CTRL_MAC_ADDR) | Bit(NET_F_GUEST_ANNOUNCE)
            | Bit(F_RING_EVENT_IDX) | Bit(F_NOTIFICATION_DATA) | Bit(F_ANY_LAYOUT) | Bit(F_RING_PACKED);
        ulong f = VduseFeatures.Filter(VduseFeatures.DeviceIdNet, dev, out var dropped);
        Assert.Equal(Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(NET_F_MAC) | Bit(NET_F_MTU) | Bit(NET_F_STATUS)
            | Bit(NET_F_MRG_RXBUF) | Bit(F_RING_EVENT_IDX) | Bit(F_RING_PACKED), f);
        Assert.Equal(2, dropped.Count);
        Assert.Contains(dropped, d => d.Contains("CTRL_VQ", StringComparison.Ordinal) && d.Contains("MQ", StringComparison.Ordinal));
        Assert.Contains(dropped, d => d.Contains("NOTIFICATION_DATA", StringComparison.Ordinal));
        Assert.Equal(2, VduseFeatures.QueueCount(VduseFeatures.DeviceIdNet, 3, f, new byte[12]));
    }

    [Fact]
    public void NetWithoutVersion1IsRefusedBeforeTheKernelSeesIt()
    {
        var e = Assert.Throws<ArgumentException>(() => VduseFeatures.Filter(VduseFeatures.DeviceIdNet, Bit(NET_F_MAC), out _));
        Assert.Contains("VERSION_1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void BlockFeaturesLoseWritableConfig()
    {
        ulong f = VduseFeatures.Filter(VduseFeatures.DeviceIdBlock, Bit(F_VERSION_1) | (1UL << 11) | (1UL << 9), out var dropped);
        Assert.Equal(Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | (1UL << 9), f);
        Assert.Single(dropped);
    }

    [Fact]
    public void IotlbRegionsAreCheckedBeforeMapping()
    {
        using var fd = SafeFd.Dup(0);
        VduseIotlbRegion R(ulong off, ulong s, ulong l, byte p) => new(fd, off, s, l, p);
        Assert.Null(VduseIotlb.Check(R(0, 0, 0xfff, 3), 0, ulong.MaxValue));
        Assert.Null(VduseIotlb.Check(R(0x2000, 0x1000, 0x1fff, 1), 0x1800, 0x1800));
        Assert.Contains("ends before", VduseIotlb.Check(R(0, 0x2000, 0x1000, 3), 0, ulong.MaxValue), StringComparison.Ordinal);
        Assert.Contains("does not overlap", VduseIotlb.Check(R(0, 0, 0xfff, 3), 0x1000, 0x2000), StringComparison.Ordinal);
        Assert.Contains("page-aligned", VduseIotlb.Check(R(0x10, 0, 0xfff, 3), 0, ulong.MaxValue), StringComparison.Ordinal);
        Assert.Contains("larger than", VduseIotlb.Check(R(0, 0, ulong.MaxValue, 3), 0, ulong.MaxValue), StringComparison.Ordinal);
        Assert.Contains("access 2", VduseIotlb.Check(R(0, 0, 0xfff, 2), 0, ulong.MaxValue), StringComparison.Ordinal);
        Assert.Contains("access 0", VduseIotlb.Check(R(0, 0, 0xfff, 0), 0, ulong.MaxValue), StringComparison.Ordinal);
    }

    [Fact]
    public void DeviceNamesFollowWhatTheKernelAndTheVdpaToolTake()
    {
        Assert.True(VduseDevice.IsValidName("vduse0"));
        Assert.True(VduseDevice.IsValidName("net_a.1-b"));
        Assert.False(VduseDevice.IsValidName(""));
        Assert.False(VduseDevice.IsValidName("../x"));
        Assert.False(VduseDevice.IsValidName("-x"));
        Assert.False(VduseDevice.IsValidName(new string('a', 64)));
        Assert.False(VduseDevice.IsValidName("a b"));
    }

    [Fact]
    public void MissingControlDeviceNamesTheModuleAndTheKernel()
    {
        using var vf = new IfcvfModel.SoftIfcVf(new IfcvfModel.SoftIfcVfOptions { QueuePairs = 1 });
        using var a = Ifcvf.IfcvfAdapter.Probe(vf);
        string dir = Path.Combine(Path.GetTempPath(), $"no-vduse-{Environment.ProcessId}");
        var e = Assert.Throws<Vdpa.VdpaException>(() => VduseDevice.Create(a, new VduseOptions { Name = "vduse0", DevDirectory = dir }));
        Assert.Contains($"{dir}/control is missing", e.Message, StringComparison.Ordinal);
        Assert.Contains("modprobe vduse", e.Message, StringComparison.Ordinal);
        Assert.Contains("6.7", e.Message, StringComparison.Ordinal);
    }
}
