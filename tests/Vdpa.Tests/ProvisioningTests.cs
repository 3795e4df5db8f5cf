using IfcVdpa.Interop.Primitives;
using IfcVdpa.Daemon;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>`dev add` provisioning and the management devices' add/del lifecycle.</summary>
public class ProvisioningTests
{
    private static DeviceRegistry NewRegistry() => new(new DaemonLog(TextWriter.Null));

    [Fact]
    public void DeviceFeaturesSubsetIsOfferedAndLimitsTheDriver()
    {
        using var vf = new SoftIfcVf();
        ulong want = AdapterTests.BaseFeatures;
        using var a = IfcvfAdapter.Probe(vf, new IfcvfAdapterOptions { DeviceFeatures = want });
        Assert.Equal(want, a.GetDeviceFeatures());
        Assert.Equal(vf.DeviceFeatures, a.HardwareFeatures);
        var e = Assert.Throws<VdpaException>(() => a.SetDriverFeatures(want | Bit(NET_F_MRG_RXBUF)));
        Assert.Contains("MRG_RXBUF", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DeviceFeaturesOutsideTheVfAreRefused()
    {
        using var vf = new SoftIfcVf();
        var e = Assert.Throws<VdpaException>(() => IfcvfAdapter.Probe(vf, new IfcvfAdapterOptions { DeviceFeatures = AdapterTests.BaseFeatures | Bit(F_RING_PACKED) | Bit(NET_F_HOST_TSO4) }));
        Assert.Contains("not a subset", e.Message, StringComparison.Ordinal);
        Assert.Contains("RING_PACKED", e.Message, StringComparison.Ordinal);
        Assert.Contains("HOST_TSO4", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<VdpaException>(() => IfcvfAdapter.Probe(vf, new IfcvfAdapterOptions { DeviceFeatures = Bit(NET_F_MAC) }));
        Assert.Contains("VERSION_1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MacMtuAndMaxVqpShowInTheConfigSpace()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        byte[] mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        using var a = IfcvfAdapter.Probe(vf, new IfcvfAdapterOptions { Mac = mac, Mtu = 1400, MaxVqPairs = 2 });
        var cfg = new byte[24];
        a.GetConfig(0, cfg);
        Assert.Equal(mac, cfg[..6]);
        Assert.Equal(mac, vf.Mac); // written into the VF: its datapath agrees
        Assert.Equal(1400, BitConverter.ToUInt16(cfg, VirtioNetConfig.Mtu));
        Assert.Equal(2, BitConverter.ToUInt16(cfg, VirtioNetConfig.MaxVirtqueuePairs));
        var two = new byte[2];
        a.GetConfig(VirtioNetConfig.Mtu + 1, two.AsSpan(0, 1));
        Assert.Equal(1400 >> 8, two[0]); // a partial read sees the provisioned value too
    }

    [Theory]
    [InlineData(null, (ushort)40, null, "mtu 40")]
    [InlineData(null, (ushort)9000, null, "mtu 9000")]
    [InlineData(null, null, (ushort)3, "max_vqp 3")]
    [InlineData(null, null, (ushort)1, "control queue")]
    [InlineData("01:00:5e:00:00:01", null, null, "unicast")]
    [InlineData("00:00:00:00:00:00", null, null, "unicast")]
    public void ImpossibleProvisioningIsRefused(string? mac, ushort? mtu, ushort? maxVqp, string expected)
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        var e = Assert.Throws<VdpaException>(() => IfcvfAdapter.Probe(vf, new IfcvfAdapterOptions
        {
            Mac = mac is null ? (ReadOnlyMemory<byte>?)null : MacAddress.TryParse(mac)!,
            Mtu = mtu,
            MaxVqPairs = maxVqp,
        }));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MtuNeedsTheMtuFeature()
    {
        using var vf = new SoftIfcVf();
        var e = Assert.Throws<VdpaException>(() => IfcvfAdapter.Probe(vf, new IfcvfAdapterOptions { DeviceFeatures = AdapterTests.BaseFeatures, Mtu = 1400 }));
        Assert.Contains("lack MTU", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void SoftwareVfsGetNamesOnTheirOwnBus()
    {
        using var reg = NewRegistry();
        var added = reg.AddSoftwareVfs(3, MacAddress.TryParse("02:00:00:00:00:fe"), 2);
        Assert.Equal(["sim/ifcvf0", "sim/ifcvf1", "sim/ifcvf2"], added.Select(m => m.Name));
        Assert.Equal("sim:00:02.0", added[1].Function.Address);
        Assert.Equal(5, added[0].MaxSupportedVqs);
        Assert.Equal(new byte[] { 2, 0, 0, 0, 1, 0 }, ((SoftIfcVf)added[2].Function).Mac);
        reg.RemoveManagementDevice("sim/ifcvf1");
        Assert.Equal("sim/ifcvf1", reg.AddSoftwareVfs(1, null, 1)[0].Name); // lowest free number
        Assert.Same(added[2], reg.FindManagementDevice("ifcvf2"));
    }

    [Fact]
    public void SoftwareVfsTakeTheirWorkerCpuRoundRobinAndForbiddenCpusAreRefused()
    {
        using var reg = NewRegistry();
        int[] allowed = CpuAffinity.Allowed(Environment.ProcessId)!;
        int[] cpus = [allowed[^1], allowed[0]];
        var added = reg.AddSoftwareVfs(3, null, 1, cpus: cpus);
        Assert.Equal(new int?[] { cpus[0], cpus[1], cpus[0] }, added.Select(m => m.DatapathCpu));
        Assert.Null(reg.AddSoftwareVfs(1, null, 1)[0].DatapathCpu); // not given: not pinned
        var e = Assert.Throws<RegistryException>(() => reg.AddSoftwareVfs(1, null, 1, cpus: [allowed[^1] + 1]));
        Assert.Contains("is not among the CPUs this process may run on", e.Message, StringComparison.Ordinal);
        Assert.Equal(4, reg.ManagementDevices.Count); // a refused add creates nothing
    }

    [Fact]
    public void OneDevicePerVfAndUniqueValidNames()
    {
        using var reg = NewRegistry();
        reg.AddSoftwareVfs(2, null, 1);
        reg.AddDevice("sim/ifcvf0", new VdpaProvisioning("vdpa0"));
        Assert.Contains("one device per VF", Assert.Throws<RegistryException>(() => reg.AddDevice("sim/ifcvf0", new VdpaProvisioning("vdpa1"))).Message, StringComparison.Ordinal);
        Assert.Contains("already exists", Assert.Throws<RegistryException>(() => reg.AddDevice("sim/ifcvf1", new VdpaProvisioning("vdpa0"))).Message, StringComparison.Ordinal);
        Assert.Contains("invalid", Assert.Throws<RegistryException>(() => reg.AddDevice("sim/ifcvf1", new VdpaProvisioning("../x"))).Message, StringComparison.Ordinal);
        Assert.Contains("not found", Assert.Throws<RegistryException>(() => reg.AddDevice("pci/0000:00:05.0", new VdpaProvisioning("vdpa2"))).Message, StringComparison.Ordinal);
        var e = Assert.Throws<RegistryException>(() => reg.AddDevice("sim/ifcvf1", new VdpaProvisioning("vdpa1", DeviceFeatures: Bit(F_VERSION_1) | Bit(F_RING_PACKED))));
        Assert.StartsWith("sim/ifcvf1: device_features", e.Message, StringComparison.Ordinal);
        Assert.Null(reg.FindManagementDevice("sim/ifcvf1")!.Device); // a refused add leaves nothing behind
        Assert.Contains("not found", Assert.Throws<RegistryException>(() => reg.DeleteDevice("vdpa9")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddAndDeleteManyTimesLeaksNoVectorsOrMaps()
    {
        using var reg = NewRegistry();
        var md = reg.AddSoftwareVfs(1, null, 2)[0];
        var vf = (SoftIfcVf)md.Function;
        int removing = 0;
        reg.DeviceRemoving += _ => removing++;
        // The rings BringUp lays out (0x10_0000 * (q + 1), 3 queue pairs + control queue) lie in the first map, so no
        // worker ever finds a ring outside its memory and marks the device NEEDS_RESET while the test looks.
        var mem = MappedMemory.Allocate(0x60_0000);
        try
        {
            for (int i = 0; i < 200; i++)
            {
                var dev = reg.AddDevice(md.Name, new VdpaProvisioning($"vdpa{i % 3}", MaxVqPairs: 2));
                dev.DmaMap(0x10_0000, mem.Slice(0, 0x50_0000), true);
                dev.DmaMap(0x8000_0000, mem.Slice(0x50_0000, 0x10_0000), true);
                AdapterTests.BringUp(dev, AdapterTests.BaseFeatures | Bit(NET_F_CTRL_VQ) | Bit(NET_F_MQ));
                Assert.True(vf.MsixEnabled);
                Assert.True(vf.IsQueueRunning(3));
                Assert.Equal(2, vf.DmaMapCount);
                reg.DeleteDevice(dev.Name);
                Assert.False(vf.MsixEnabled);
                Assert.Equal(0, vf.DmaMapCount);
                Assert.Equal(0, vf.Status);
                Assert.False(vf.IsQueueRunning(3));
                Assert.Null(md.Device);
            }
        }
        finally
        {
            mem.Dispose();
        }
        Assert.Equal(200, removing);
        Assert.Equal(0, vf.RegisterErrors);
    }

    [Fact]
    public void RemovingAVfDeletesItsDeviceAndDisposingTheRegistryCleansUp()
    {
        var reg = NewRegistry();
        var mds = reg.AddSoftwareVfs(2, null, 1);
        var d0 = reg.AddDevice("sim/ifcvf0", new VdpaProvisioning("a"));
        AdapterTests.BringUp(d0, AdapterTests.BaseFeatures);
        reg.RemoveManagementDevice("sim/ifcvf0");
        Assert.Null(reg.FindDevice("a"));
        Assert.Throws<ObjectDisposedException>(() => d0.GetStatus());
        var d1 = reg.AddDevice("sim/ifcvf1", new VdpaProvisioning("b"));
        AdapterTests.BringUp(d1, AdapterTests.BaseFeatures);
        var vf1 = (SoftIfcVf)mds[1].Function;
        reg.Dispose();
        Assert.False(vf1.MsixEnabled);
        Assert.Empty(reg.ManagementDevices);
    }

    [Fact]
    public void SoftwareVfLimitsAreEnforced()
    {
        using var reg = NewRegistry();
        Assert.Throws<RegistryException>(() => reg.AddSoftwareVfs(0, null, 1));
        Assert.Throws<RegistryException>(() => reg.AddSoftwareVfs(65, null, 1));
        Assert.Throws<RegistryException>(() => reg.AddSoftwareVfs(1, null, 33));
        Assert.Throws<RegistryException>(() => reg.AddSoftwareVfs(1, new byte[] { 1, 0, 0, 0, 0, 1 }, 1));
        reg.AddSoftwareVfs(60, null, 1);
        Assert.Contains("limit", Assert.Throws<RegistryException>(() => reg.AddSoftwareVfs(5, null, 1)).Message, StringComparison.Ordinal);
    }
}
