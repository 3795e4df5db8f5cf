using System.Text.Json;
using IfcVdpa.Cli;

namespace IfcVdpa.Vfio.Tests;

/// <summary>`ifcvf pci list|bind|unbind` run in-process against a fake sysfs (IFCVF_SYSFS / IFCVF_STATE_DIR).</summary>
public sealed class PciCliTests : IDisposable
{
    private const string Net = "0000:00:03.0";
    private readonly FakeSysfs _fs = new();

    public PciCliTests()
    {
        _fs.AddDevice(Net, 0x1af4, 0x1041, 0x1af4, 0x1100, "virtio-pci", 1);
        _fs.AddDevice("0000:3b:00.1", 0x1af4, 0x1041, 0x8086, 0x001a, null, 7);
        _fs.AddDevice("0000:00:1f.2", 0x8086, 0x2922, 0x1af4, 0x1100, "ahci", null);
        _fs.AddDriver(PciSysfs.VfioDriver);
        Environment.SetEnvironmentVariable("IFCVF_SYSFS", _fs.Sys);
        Environment.SetEnvironmentVariable("IFCVF_STATE_DIR", _fs.StateDir);
    }

    public void Dispose()
    {
        Environment.SetEnvironmentVariable("IFCVF_SYSFS", null);
        Environment.SetEnvironmentVariable("IFCVF_STATE_DIR", null);
        _fs.Dispose();
    }

    private static async Task<(int Rc, string Out, string Err)> Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int rc = await CommandLine.RunAsync(args, o, e);
        return (rc, o.ToString(), e.ToString());
    }

    [Fact]
    public async Task Serve_vfio_on_a_function_it_cannot_open_fails_clearly_and_leaves_no_socket()
    {
        string sock = Path.Combine(_fs.StateDir, "serve.sock");
        var (rc, _, err) = await Run("serve", "--socket", sock, "--vfio", Net, "--generic");
        Assert.NotEqual(0, rc);
        Assert.StartsWith($"ifcvf: {Net} ", err, StringComparison.Ordinal);
        Assert.False(File.Exists(sock), "no socket may be left behind when the device cannot be opened");
    }

    [Fact]
    public async Task List_shows_driver_and_group()
    {
        var (rc, text, _) = await Run("pci", "list");
        Assert.Equal(0, rc);
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length); // header + the two virtio functions, not the SATA controller
        Assert.Matches(@"^0000:00:03\.0\s+1af4:1041\s+1af4:1100\s+virtio-pci\s+1\s+virtio-net \(modern\)$", lines[1]);
        Assert.Matches(@"^0000:3b:00\.1\s+1af4:1041\s+8086:001a\s+-\s+7\s+ifc-vf$", lines[2]);
    }

    [Fact]
    public async Task List_json_is_parseable()
    {
        var (rc, text, _) = await Run("-j", "pci", "list");
        Assert.Equal(0, rc);
        using var doc = JsonDocument.Parse(text);
        var fns = doc.RootElement.GetProperty("functions");
        Assert.Equal(2, fns.GetArrayLength());
        Assert.Equal("virtio-pci", fns[0].GetProperty("driver").GetString());
        Assert.Equal(1, fns[0].GetProperty("iommu_group").GetInt32());
        Assert.True(fns[1].GetProperty("ifc").GetBoolean());
        Assert.Equal("", fns[1].GetProperty("driver").GetString());
    }

    [Fact]
    public async Task Bind_then_unbind_round_trips_the_driver()
    {
        _fs.StartKernel();
        var (rc, text, err) = await Run("pci", "bind", "00:03.0");
        Assert.True(rc == 0, err);
        Assert.Contains("bound to vfio-pci (was virtio-pci; IOMMU group 1, /dev/vfio/1)", text, StringComparison.Ordinal);
        Assert.Equal("vfio-pci", _fs.DriverOf(Net));
        (rc, text, err) = await Run("-j", "pci", "unbind", Net);
        Assert.True(rc == 0, err);
        using var doc = JsonDocument.Parse(text);
        Assert.Equal("virtio-pci", doc.RootElement.GetProperty("driver").GetString());
        Assert.Equal("virtio-pci", _fs.DriverOf(Net));
    }

    [Fact]
    public async Task Errors_are_one_line_and_non_zero()
    {
        var (rc, _, err) = await Run("pci", "bind", "0000:00:1f.2");
        Assert.Equal(1, rc);
        Assert.StartsWith("ifcvf: 0000:00:1f.2 has no IOMMU group", err, StringComparison.Ordinal);
        (rc, _, err) = await Run("pci", "bind", "../../x");
        Assert.Equal(1, rc);
        Assert.Contains("is not a PCI address", err, StringComparison.Ordinal);
        (rc, _, err) = await Run("pci", "bind");
        Assert.Equal(1, rc);
        Assert.Contains("a PCI address is needed", err, StringComparison.Ordinal);
        (rc, _, err) = await Run("pci", "show", Net);
        Assert.Equal(1, rc);
        Assert.Contains("bound to virtio-pci, not vfio-pci", err, StringComparison.Ordinal);
    }
}
