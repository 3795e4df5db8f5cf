using System.Globalization;

namespace IfcVdpa.Vfio.Tests;

/// <summary>
/// A fake /sys in a temp dir: PCI function directories with identity files, driver and iommu_group
/// symlinks, driver_override, drivers_probe and per-driver unbind files. <see cref="StartKernel"/> runs a
/// tiny "kernel" that reacts to unbind / drivers_probe writes the way the PCI core does.
/// </summary>
public sealed class FakeSysfs : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private Task? _kernel;

    public FakeSysfs()
    {
        Root = Path.Combine(Path.GetTempPath(), "ifcvf-sysfs-" + Guid.NewGuid().ToString("n"));
        Directory.CreateDirectory(Path.Combine(Root, "sys", "bus", "pci", "devices"));
        Directory.CreateDirectory(Path.Combine(Root, "sys", "kernel", "iommu_groups"));
        File.WriteAllText(Path.Combine(Sys, "bus", "pci", "drivers_probe"), "");
        StateDir = Path.Combine(Root, "state");
        DevVfio = Path.Combine(Root, "dev-vfio");
        Directory.CreateDirectory(DevVfio);
    }

    public string Root { get; }

    public string Sys => Path.Combine(Root, "sys");

    public string StateDir { get; }

    public string DevVfio { get; }

    /// <summary>Driver the fake kernel binds on drivers_probe when no driver_override is set.</summary>
    public Dictionary<string, string> DefaultDriver { get; } = [];

    public PciSysfs Sysfs() => new(Sys, StateDir) { BindTimeout = TimeSpan.FromSeconds(3) };

    public string DeviceDir(string bdf) => Path.Combine(Sys, "bus", "pci", "devices", bdf);

    public void AddDriver(string name)
    {
        string d = Path.Combine(Sys, "bus", "pci", "drivers", name);
        Directory.CreateDirectory(d);
        File.WriteAllText(Path.Combine(d, "unbind"), "");
    }

    public void AddDevice(string bdf, ushort vendor, ushort device, ushort subVendor, ushort subDevice, string? driver, int? group, uint cls = 0x020000)
    {
        string d = DeviceDir(bdf);
        Directory.CreateDirectory(d);
        File.WriteAllText(Path.Combine(d, "vendor"), $"0x{vendor:x4}\n");
        File.WriteAllText(Path.Combine(d, "device"), $"0x{device:x4}\n");
        File.WriteAllText(Path.Combine(d, "subsystem_vendor"), $"0x{subVendor:x4}\n");
        File.WriteAllText(Path.Combine(d, "subsystem_device"), $"0x{subDevice:x4}\n");
        File.WriteAllText(Path.Combine(d, "class"), $"0x{cls:x6}\n");
        File.WriteAllText(Path.Combine(d, "driver_override"), "(null)\n");
        if (driver is not null)
        {
            AddDriver(driver);
            Link(bdf, driver);
            DefaultDriver[bdf] = driver;
        }
        if (group is int g)
        {
            string gd = Path.Combine(Sys, "kernel", "iommu_groups", g.ToString(CultureInfo.InvariantCulture), "devices");
            Directory.CreateDirectory(gd);
            File.CreateSymbolicLink(Path.Combine(gd, bdf), $"../../../../bus/pci/devices/{bdf}");
            File.CreateSymbolicLink(Path.Combine(d, "iommu_group"), $"../../../../kernel/iommu_groups/{g}");
        }
    }

    public void Link(string bdf, string? driver)
    {
        string link = Path.Combine(DeviceDir(bdf), "driver");
        if (new FileInfo(link).LinkTarget is not null)
        {
            File.Delete(link);
        }
        if (driver is not null)
        {
            File.CreateSymbolicLink(link, $"../../../../bus/pci/drivers/{driver}");
        }
    }

    public string? DriverOf(string bdf) => new FileInfo(Path.Combine(DeviceDir(bdf), "driver")).LinkTarget is { } t ? Path.GetFileName(t) : null;

    public string Override(string bdf) => File.ReadAllText(Path.Combine(DeviceDir(bdf), "driver_override"));

    /// <summary>Writes seen by the fake kernel, in order ("unbind virtio-pci 0000:..", "probe 0000:.. -> vfio-pci").</summary>
    public List<string> KernelLog { get; } = [];

    public void StartKernel() => _kernel = Task.Run(async () =>
    {
        while (!_stop.IsCancellationRequested)
        {
            Step();
            try
            {
                await Task.Delay(2, _stop.Token); // the fake kernel's poll interval (it reacts to file writes), not a barrier
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    });

    private void Step()
    {
        ProcessUnbinds();
        string probe = Path.Combine(Sys, "bus", "pci", "drivers_probe");
        string bdf = File.ReadAllText(probe).Trim();
        if (bdf.Length == 0)
        {
            return;
        }
        File.WriteAllText(probe, "");
        ProcessUnbinds(); // the writer unbinds before it probes
        if (!Directory.Exists(DeviceDir(bdf)) || DriverOf(bdf) is not null)
        {
            return;
        }
        string ov = Override(bdf).Trim();
        string? target = ov.Length > 0 && ov != "(null)" ? ov : DefaultDriver.GetValueOrDefault(bdf);
        if (target is not null && Directory.Exists(Path.Combine(Sys, "bus", "pci", "drivers", target)))
        {
            Link(bdf, target);
            lock (KernelLog)
            {
                KernelLog.Add($"probe {bdf} -> {target}");
            }
        }
    }

    private void ProcessUnbinds()
    {
        string drivers = Path.Combine(Sys, "bus", "pci", "drivers");
        if (!Directory.Exists(drivers))
        {
            return;
        }
        foreach (var d in Directory.GetDirectories(drivers))
        {
            string unbind = Path.Combine(d, "unbind");
            string bdf = File.Exists(unbind) ? File.ReadAllText(unbind).Trim() : "";
            if (bdf.Length == 0)
            {
                continue;
            }
            File.WriteAllText(unbind, "");
            if (DriverOf(bdf) == Path.GetFileName(d))
            {
                Link(bdf, null);
                lock (KernelLog)
                {
                    KernelLog.Add($"unbind {Path.GetFileName(d)} {bdf}");
                }
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _kernel?.Wait();
        _stop.Dispose();
        Directory.Delete(Root, recursive: true);
    }
}
