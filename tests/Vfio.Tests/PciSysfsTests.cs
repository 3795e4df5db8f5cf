namespace IfcVdpa.Vfio.Tests;

public sealed class PciSysfsTests : IDisposable
{
    private const string Net = "0000:00:03.0";
    private const string Ifc = "0000:3b:00.1";
    private const string Other = "0000:00:1f.2";
    private readonly FakeSysfs _fs = new();

    public PciSysfsTests()
    {
        _fs.AddDevice(Net, 0x1af4, 0x1041, 0x1af4, 0x1100, "virtio-pci", 1);
        _fs.AddDevice(Ifc, 0x1af4, 0x1041, 0x8086, 0x001a, null, 7);
        _fs.AddDevice(Other, 0x8086, 0x2922, 0x1af4, 0x1100, "ahci", null, 0x010601);
        _fs.AddDriver(PciSysfs.VfioDriver);
    }

    public void Dispose() => _fs.Dispose();

    [Theory]
    [InlineData("0000:00:03.0", "0000:00:03.0")]
    [InlineData("00:03.0", "0000:00:03.0")]
    [InlineData("0000:3B:00.7", "0000:3b:00.7")]
    [InlineData("pci/0000:3b:00.1", "0000:3b:00.1")]
    public void NormalizeAddress_accepts_pci_addresses(string input, string expected) =>
        Assert.Equal(expected, PciSysfs.NormalizeAddress(input));

    [Theory]
    [InlineData("../../../etc")]
    [InlineData("0000:00:03.0/../../x")]
    [InlineData("0000:00:03.8")]
    [InlineData("0000:00:20.0")]
    [InlineData("0000:0g:03.0")]
    [InlineData("")]
    [InlineData("0000-00-03.0")]
    public void NormalizeAddress_refuses_anything_else(string input)
    {
        var e = Assert.Throws<ArgumentException>(() => PciSysfs.NormalizeAddress(input));
        Assert.Contains("is not a PCI address", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void List_returns_virtio_functions_with_driver_and_group()
    {
        var list = _fs.Sysfs().List();
        Assert.Equal([Net, Ifc], list.Select(d => d.Address));
        var net = list[0];
        Assert.Equal((ushort)0x1041, net.Device);
        Assert.Equal((ushort)0x1100, net.SubsystemDevice);
        Assert.Equal("virtio-pci", net.Driver);
        Assert.Equal(1, net.IommuGroup);
        Assert.Null(net.DriverOverride);
        Assert.False(net.IsIfcVf);
        Assert.Equal("virtio-net (modern)", net.Kind);
        var ifc = list[1];
        Assert.True(ifc.IsIfcVf);
        Assert.Equal("ifc-vf", ifc.Kind);
        Assert.Null(ifc.Driver);
        Assert.Equal(7, ifc.IommuGroup);
    }

    [Fact]
    public void List_all_includes_other_vendors_and_a_function_without_group()
    {
        var all = _fs.Sysfs().List(virtioOnly: false);
        var other = Assert.Single(all, d => d.Address == Other);
        Assert.Null(other.IommuGroup);
        Assert.Equal("ahci", other.Driver);
        Assert.Equal(0x010601u, other.ClassCode);
    }

    [Fact]
    public void Get_reports_a_garbled_identity_file()
    {
        File.WriteAllText(Path.Combine(_fs.DeviceDir(Net), "vendor"), "zz\n");
        var e = Assert.Throws<VfioException>(() => _fs.Sysfs().Get(Net));
        Assert.Contains("not a hex number", e.Message, StringComparison.Ordinal);
        // a garbled function does not break the listing of the others
        Assert.Equal([Ifc], _fs.Sysfs().List().Select(d => d.Address));
    }

    [Fact]
    public void Get_of_a_missing_function_says_so()
    {
        var e = Assert.Throws<VfioException>(() => _fs.Sysfs().Get("0000:00:09.0"));
        Assert.Contains("no such PCI function", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void GroupMembers_lists_the_group()
    {
        Assert.Equal([Net], _fs.Sysfs().GroupMembers(1));
        Assert.Empty(_fs.Sysfs().GroupMembers(99));
    }

    [Fact]
    public void Bind_moves_the_function_to_vfio_and_remembers_the_previous_driver()
    {
        _fs.StartKernel();
        var sysfs = _fs.Sysfs();
        var r = sysfs.BindVfio("00:03.0");
        Assert.Equal(Net, r.Address);
        Assert.Equal("virtio-pci", r.PreviousDriver);
        Assert.Equal(1, r.IommuGroup);
        Assert.False(r.AlreadyBound);
        Assert.Equal(PciSysfs.VfioDriver, _fs.DriverOf(Net));
        Assert.Equal("vfio-pci", _fs.Override(Net));
        Assert.Equal("virtio-pci", sysfs.ReadState(Net));
        Assert.Equal([$"unbind virtio-pci {Net}", $"probe {Net} -> vfio-pci"], _fs.KernelLog);

        var again = sysfs.BindVfio(Net);
        Assert.True(again.AlreadyBound);
        Assert.Equal("virtio-pci", again.PreviousDriver);
        Assert.Equal(2, _fs.KernelLog.Count);
    }

    [Fact]
    public void Unbind_restores_the_previous_driver_and_clears_the_override()
    {
        _fs.StartKernel();
        var sysfs = _fs.Sysfs();
        sysfs.BindVfio(Net);
        string? now = sysfs.Unbind(Net);
        Assert.Equal("virtio-pci", now);
        Assert.Equal("virtio-pci", _fs.DriverOf(Net));
        Assert.Equal("\n", _fs.Override(Net));
        Assert.Null(sysfs.ReadState(Net));
        Assert.Null(sysfs.Get(Net).DriverOverride);
        Assert.Equal($"probe {Net} -> virtio-pci", _fs.KernelLog[^1]);
    }

    [Fact]
    public void Unbind_of_a_function_that_had_no_driver_leaves_it_unbound()
    {
        _fs.StartKernel();
        var sysfs = _fs.Sysfs();
        var r = sysfs.BindVfio(Ifc);
        Assert.Null(r.PreviousDriver);
        Assert.Equal(PciSysfs.VfioDriver, _fs.DriverOf(Ifc));
        Assert.Null(sysfs.Unbind(Ifc));
        Assert.Null(_fs.DriverOf(Ifc));
        Assert.Null(sysfs.Get(Ifc).DriverOverride);
    }

    [Fact]
    public void Unbind_refuses_a_function_on_another_driver()
    {
        var e = Assert.Throws<VfioException>(() => _fs.Sysfs().Unbind(Net));
        Assert.Contains("bound to virtio-pci, not vfio-pci", e.Message, StringComparison.Ordinal);
        Assert.Equal("virtio-pci", _fs.DriverOf(Net));
    }

    [Fact]
    public void A_hostile_state_file_is_not_used_as_a_driver_name()
    {
        Directory.CreateDirectory(_fs.StateDir);
        File.WriteAllText(Path.Combine(_fs.StateDir, $"pci-{Net}.driver"), "../../../bin/sh\n");
        Assert.Null(_fs.Sysfs().ReadState(Net));
    }

    [Fact]
    public void Bind_without_an_iommu_group_explains_the_iommu()
    {
        var e = Assert.Throws<VfioException>(() => _fs.Sysfs().BindVfio(Other));
        Assert.Contains("has no IOMMU group", e.Message, StringComparison.Ordinal);
        Assert.Contains("intel_iommu=on", e.Message, StringComparison.Ordinal);
        Assert.Equal("ahci", _fs.DriverOf(Other));
    }

    [Fact]
    public void Bind_without_the_vfio_pci_driver_says_to_load_it()
    {
        Directory.Delete(Path.Combine(_fs.Sys, "bus", "pci", "drivers", PciSysfs.VfioDriver), recursive: true);
        var e = Assert.Throws<VfioException>(() => _fs.Sysfs().BindVfio(Net));
        Assert.Contains("modprobe vfio-pci", e.Message, StringComparison.Ordinal);
        Assert.Equal("virtio-pci", _fs.DriverOf(Net)); // nothing was touched
        Assert.Equal("(null)\n", _fs.Override(Net));
    }

    [Fact]
    public void Bind_that_the_kernel_does_not_honour_fails_clearly()
    {
        // no fake kernel running: the driver link never changes
        var sysfs = new PciSysfs(_fs.Sys, _fs.StateDir) { BindTimeout = TimeSpan.FromMilliseconds(100) };
        var e = Assert.Throws<VfioException>(() => sysfs.BindVfio(Net));
        Assert.Contains("after drivers_probe the function is bound to virtio-pci, not vfio-pci", e.Message, StringComparison.Ordinal);
    }
}
