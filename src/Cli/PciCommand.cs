using System.Globalization;
using IfcVdpa.Vfio;

namespace IfcVdpa.Cli;

/// <summary>
/// `ifcvf pci list | bind BDF | unbind BDF | show BDF`: the host's virtio/IFC functions, binding them to
/// vfio-pci (remembering and restoring the previous driver) and what VFIO sees of a bound one.
/// IFCVF_SYSFS and IFCVF_STATE_DIR override /sys and /run/ifcvf (tests use a fake tree).
/// </summary>
public static class PciCommand
{
    internal static PciSysfs Sysfs() =>
        new(Environment.GetEnvironmentVariable("IFCVF_SYSFS") is { Length: > 0 } s ? s : "/sys",
            Environment.GetEnvironmentVariable("IFCVF_STATE_DIR") is { Length: > 0 } d ? d : "/run/ifcvf");

    public static int Run(string verb, Keywords kv, bool json, TextWriter stdout)
    {
        try
        {
            return verb switch
            {
                "list" or "" => List(kv, json, stdout),
                "bind" => Bind(kv, json, stdout),
                "unbind" => Unbind(kv, json, stdout),
                "show" => Show(kv, json, stdout),
                _ => throw new CliException($"unknown command \"pci {verb}\"; try \"ifcvf help\""),
            };
        }
        catch (VfioException e)
        {
            throw new CliException(e.Message);
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
    }

    private static string Address(Keywords kv)
    {
        string a = kv.Positional() ?? throw new CliException("a PCI address is needed (e.g. 0000:00:03.0)");
        kv.EnsureAllUsed();
        return PciSysfs.NormalizeAddress(a);
    }

    private static int List(Keywords kv, bool json, TextWriter stdout)
    {
        bool all = kv.Flag("all");
        kv.EnsureAllUsed();
        var devices = Sysfs().List(virtioOnly: !all);
        if (json)
        {
            var w = new JsonText();
            w.Begin();
            w.BeginArray("functions");
            foreach (var d in devices)
            {
                w.BeginObject();
                w.Str("address", d.Address);
                w.Str("kind", d.Kind);
                w.Str("vendor", $"{d.Vendor:x4}");
                w.Str("device", $"{d.Device:x4}");
                w.Str("subsystem_vendor", $"{d.SubsystemVendor:x4}");
                w.Str("subsystem_device", $"{d.SubsystemDevice:x4}");
                w.Str("driver", d.Driver ?? "");
                if (d.IommuGroup is int g)
                {
                    w.Num("iommu_group", g);
                }
                w.Bool("ifc", d.IsIfcVf);
                w.EndObject();
            }
            w.EndArray();
            w.End();
            stdout.WriteLine(w.ToString());
            return 0;
        }
        if (devices.Count == 0)
        {
            stdout.WriteLine("no virtio or IFC functions found");
            return 0;
        }
        stdout.WriteLine($"{"ADDRESS",-13} {"ID",-10} {"SUBSYSTEM",-10} {"DRIVER",-12} {"GROUP",-6} KIND");
        foreach (var d in devices)
        {
            string group = d.IommuGroup?.ToString(CultureInfo.InvariantCulture) ?? "-";
            string id = $"{d.Vendor:x4}:{d.Device:x4}";
            string sub = $"{d.SubsystemVendor:x4}:{d.SubsystemDevice:x4}";
            stdout.WriteLine($"{d.Address,-13} {id,-10} {sub,-10} {d.Driver ?? "-",-12} {group,-6} {d.Kind}");
        }
        return 0;
    }

    private static int Bind(Keywords kv, bool json, TextWriter stdout)
    {
        var r = Sysfs().BindVfio(Address(kv));
        if (json)
        {
            var w = new JsonText();
            w.Begin();
            w.Str("address", r.Address);
            w.Str("driver", PciSysfs.VfioDriver);
            w.Str("previous_driver", r.PreviousDriver ?? "");
            w.Num("iommu_group", r.IommuGroup);
            w.Bool("already_bound", r.AlreadyBound);
            w.End();
            stdout.WriteLine(w.ToString());
        }
        else if (r.AlreadyBound)
        {
            stdout.WriteLine($"{r.Address}: already bound to vfio-pci (IOMMU group {r.IommuGroup}, /dev/vfio/{r.IommuGroup})");
        }
        else
        {
            stdout.WriteLine($"{r.Address}: bound to vfio-pci (was {r.PreviousDriver ?? "unbound"}; IOMMU group {r.IommuGroup}, /dev/vfio/{r.IommuGroup})");
        }
        return 0;
    }

    private static int Unbind(Keywords kv, bool json, TextWriter stdout)
    {
        string a = Address(kv);
        string? now = Sysfs().Unbind(a);
        if (json)
        {
            var w = new JsonText();
            w.Begin();
            w.Str("address", a);
            w.Str("driver", now ?? "");
            w.End();
            stdout.WriteLine(w.ToString());
        }
        else
        {
            stdout.WriteLine(now is null ? $"{a}: released from vfio-pci (left unbound, as it was before)" : $"{a}: released from vfio-pci, back on {now}");
        }
        return 0;
    }

    private static int Show(Keywords kv, bool json, TextWriter stdout)
    {
        string a = Address(kv);
        var sysfs = Sysfs();
        using var f = VfioPciFunction.Open(a, new VfioOptions { SysRoot = sysfs.SysRoot, EnableBusMaster = false });
        var mapped = f.MappedBars.ToHashSet();
        if (json)
        {
            var w = new JsonText();
            w.Begin();
            w.Str("address", f.Address);
            w.Num("iommu_group", f.IommuGroup);
            w.Num("iommu_type", f.IommuType);
            w.Num("config_size", f.ConfigSize);
            w.Num("msix_vectors", f.MsixVectorCount);
            w.Bool("reset", f.CanReset);
            w.BeginArray("bars");
            foreach (var b in f.Bars)
            {
                w.BeginObject();
                w.Num("index", b.Index);
                w.Num("size", (long)b.Size);
                w.Bool("64bit", b.Is64Bit);
                w.Bool("mmap", mapped.Contains(b.Index));
                w.EndObject();
            }
            w.EndArray();
            w.End();
            stdout.WriteLine(w.ToString());
            return 0;
        }
        stdout.WriteLine($"{f.Address}: IOMMU group {f.IommuGroup} (type{(f.IommuType == 3 ? "1v2" : "1")}), config space {f.ConfigSize} bytes, {f.MsixVectorCount} MSI-X vectors, reset {(f.CanReset ? "yes" : "no")}");
        foreach (var b in f.Bars)
        {
            stdout.WriteLine($"  BAR{b.Index}: {b.Size} bytes{(b.Is64Bit ? ", 64-bit" : "")}{(b.Prefetchable ? ", prefetchable" : "")}, {(mapped.Contains(b.Index) ? "mmap" : "pread/pwrite")}");
        }
        return 0;
    }
}
