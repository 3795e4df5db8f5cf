using System.Globalization;
using IfcVdpa.Virtio;

namespace IfcVdpa.Vfio;

/// <summary>One PCI function as sysfs describes it.</summary>
/// <param name="Address">Full PCI address, e.g. 0000:00:03.0.</param>
/// <param name="Vendor">Vendor ID.</param>
/// <param name="Device">Device ID.</param>
/// <param name="SubsystemVendor">Subsystem vendor ID.</param>
/// <param name="SubsystemDevice">Subsystem ID.</param>
/// <param name="ClassCode">Class code (base, sub, prog-if).</param>
/// <param name="Driver">Bound driver (null = none).</param>
/// <param name="IommuGroup">IOMMU group number (null = the function has none: no IOMMU).</param>
/// <param name="DriverOverride">Content of driver_override (null = none set).</param>
public sealed record PciDeviceInfo(string Address, ushort Vendor, ushort Device, ushort SubsystemVendor,
    ushort SubsystemDevice, uint ClassCode, string? Driver, int? IommuGroup, string? DriverOverride)
{
    /// <summary>Virtio vendor (1af4): every virtio function and the IFC VF.</summary>
    public bool IsVirtio => Vendor == 0x1AF4;

    /// <summary>An entry of the IFC VF PCI table (net or block).</summary>
    public bool IsIfcVf => IfcPciIds.Find(Vendor, Device, SubsystemVendor, SubsystemDevice) is not null;

    /// <summary>A short description: "ifc-vf", "virtio-net (modern)", "virtio-net (transitional)", "virtio 1af4:xxxx".</summary>
    public string Kind =>
        IsIfcVf ? "ifc-vf" :
        (Vendor, Device) switch
        {
            (0x1AF4, 0x1041) => "virtio-net (modern)",
            (0x1AF4, 0x1000) => "virtio-net (transitional)",
            _ => $"virtio {Vendor:x4}:{Device:x4}",
        };
}

/// <summary>What <see cref="PciSysfs.BindVfio"/> did.</summary>
/// <param name="Address">Full PCI address.</param>
/// <param name="IommuGroup">IOMMU group number.</param>
/// <param name="PreviousDriver">Driver the function had before (null = none); restored by unbind.</param>
/// <param name="AlreadyBound">The function was already on vfio-pci: nothing changed.</param>
public readonly record struct PciBindResult(string Address, string? PreviousDriver, int IommuGroup, bool AlreadyBound);

/// <summary>
/// The PCI part of sysfs (<c>/sys/bus/pci</c>, <c>/sys/kernel/iommu_groups</c>): identity files, the
/// driver and iommu_group links, and driver_override + drivers_probe binding. The root is a parameter
/// so the tests can run it against a fake tree. Every address is validated before it becomes a path.
/// </summary>
public sealed class PciSysfs(string sysRoot = "/sys", string stateDir = "/run/ifcvf")
{
    public const string VfioDriver = "vfio-pci";

    public string SysRoot { get; } = sysRoot;

    /// <summary>Where the driver a function had before <c>pci bind</c> is remembered (one file per function).</summary>
    public string StateDir { get; } = stateDir;

    /// <summary>How long bind/unbind wait for the kernel to show the new driver link.</summary>
    public TimeSpan BindTimeout { get; init; } = TimeSpan.FromSeconds(5);

    private string DevicesDir => Path.Combine(SysRoot, "bus", "pci", "devices");

    private string DeviceDir(string address) => Path.Combine(DevicesDir, address);

    /// <summary>
    /// Validates a PCI address and returns it in full form (domain:bus:dev.fn, lower case). A short form
    /// (bus:dev.fn) gets domain 0000. Anything else (a path, extra characters) is refused.
    /// </summary>
    public static string NormalizeAddress(string address)
    {
        ArgumentNullException.ThrowIfNull(address);
        string a = address.Trim().ToLowerInvariant();
        if (a.StartsWith("pci/", StringComparison.Ordinal))
        {
            a = a[4..];
        }
        if (a.Length == 7)
        {
            a = "0000:" + a;
        }
        if (a.Length != 12 || a[4] != ':' || a[7] != ':' || a[10] != '.' ||
            !IsHex(a.AsSpan(0, 4)) || !IsHex(a.AsSpan(5, 2)) || !IsHex(a.AsSpan(8, 2)) ||
            a[11] < '0' || a[11] > '7' || a[8] > '1')
        {
            throw new ArgumentException($"\"{address}\" is not a PCI address (expected DDDD:BB:DD.F, e.g. 0000:00:03.0)");
        }
        return a;
    }

    private static bool IsHex(ReadOnlySpan<char> s)
    {
        foreach (char c in s)
        {
            if (!char.IsAsciiHexDigit(c))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Whether the function exists in sysfs.</summary>
    public bool Exists(string address) => Directory.Exists(DeviceDir(NormalizeAddress(address)));

    /// <summary>All functions, optionally only virtio-vendor ones (virtio and IFC VFs), sorted by address.</summary>
    public IReadOnlyList<PciDeviceInfo> List(bool virtioOnly = true)
    {
        var result = new List<PciDeviceInfo>();
        if (!Directory.Exists(DevicesDir))
        {
            throw new VfioException($"{DevicesDir} does not exist: no PCI bus in sysfs (is /sys mounted?)");
        }
        foreach (var dir in Directory.EnumerateFileSystemEntries(DevicesDir))
        {
            string name = Path.GetFileName(dir);
            string address;
            try
            {
                address = NormalizeAddress(name);
            }
            catch (ArgumentException)
            {
                continue; // not a function directory
            }
            PciDeviceInfo info;
            try
            {
                info = Get(address);
            }
            catch (VfioException)
            {
                continue; // vanished or unreadable while listing (hot unplug)
            }
            if (!virtioOnly || info.IsVirtio)
            {
                result.Add(info);
            }
        }
        result.Sort((x, y) => string.CompareOrdinal(x.Address, y.Address));
        return result;
    }

    /// <summary>Reads one function's identity, driver, IOMMU group and driver_override.</summary>
    public PciDeviceInfo Get(string address)
    {
        address = NormalizeAddress(address);
        string dir = DeviceDir(address);
        if (!Directory.Exists(dir))
        {
            throw new VfioException($"{address}: no such PCI function ({dir} does not exist)");
        }
        return new PciDeviceInfo(
            address,
            (ushort)ReadHex(dir, "vendor"),
            (ushort)ReadHex(dir, "device"),
            (ushort)ReadHex(dir, "subsystem_vendor"),
            (ushort)ReadHex(dir, "subsystem_device"),
            ReadHex(dir, "class"),
            LinkName(Path.Combine(dir, "driver")),
            GroupOf(dir),
            ReadOverride(dir));
    }

    /// <summary>The driver bound to the function, or null.</summary>
    public string? GetDriver(string address) => LinkName(Path.Combine(DeviceDir(NormalizeAddress(address)), "driver"));

    /// <summary>The IOMMU group of the function, or null when it has none.</summary>
    public int? GetIommuGroup(string address) => GroupOf(DeviceDir(NormalizeAddress(address)));

    /// <summary>Addresses of every function in an IOMMU group.</summary>
    public IReadOnlyList<string> GroupMembers(int group)
    {
        string dir = Path.Combine(SysRoot, "kernel", "iommu_groups", group.ToString(CultureInfo.InvariantCulture), "devices");
        if (!Directory.Exists(dir))
        {
            return [];
        }
        var list = Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).OfType<string>().ToList();
        list.Sort(StringComparer.Ordinal);
        return list;
    }

    /// <summary>
    /// Binds the function to vfio-pci: remembers the current driver in the state dir, sets driver_override,
    /// unbinds the current driver, writes drivers_probe and waits for the driver link to show vfio-pci.
    /// </summary>
    public PciBindResult BindVfio(string address)
    {
        var info = Get(address);
        address = info.Address;
        if (info.IommuGroup is not int group)
        {
            throw new VfioException($"{address} has no IOMMU group: the IOMMU is off or absent. Enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on) iommu=pt");
        }
        if (info.Driver == VfioDriver)
        {
            return new PciBindResult(address, ReadState(address), group, AlreadyBound: true);
        }
        if (!Directory.Exists(Path.Combine(SysRoot, "bus", "pci", "drivers", VfioDriver)))
        {
            throw new VfioException($"the {VfioDriver} driver is not loaded (run: modprobe vfio-pci)");
        }
        WriteState(address, info.Driver);
        string dir = DeviceDir(address);
        WriteSysfs(Path.Combine(dir, "driver_override"), VfioDriver);
        if (info.Driver is not null)
        {
            WriteSysfs(Path.Combine(dir, "driver", "unbind"), address);
        }
        WriteSysfs(Path.Combine(SysRoot, "bus", "pci", "drivers_probe"), address);
        string? now = WaitForDriver(address, VfioDriver);
        if (now != VfioDriver)
        {
            throw new VfioException($"{address}: after drivers_probe the function is bound to {now ?? "no driver"}, not {VfioDriver} (see dmesg)");
        }
        return new PciBindResult(address, info.Driver, group, AlreadyBound: false);
    }

    /// <summary>
    /// Releases the function from vfio-pci and gives it back to the driver it had before `pci bind` (or
    /// leaves it unbound if it had none). Returns the driver it has afterwards.
    /// </summary>
    public string? Unbind(string address)
    {
        var info = Get(address);
        address = info.Address;
        string? previous = ReadState(address);
        string dir = DeviceDir(address);
        if (info.Driver is not null && info.Driver != VfioDriver)
        {
            if (previous is not null && info.Driver == previous)
            {
                DeleteState(address);
                return info.Driver; // already given back
            }
            throw new VfioException($"{address} is bound to {info.Driver}, not {VfioDriver}: nothing to unbind");
        }
        if (info.Driver == VfioDriver)
        {
            WriteSysfs(Path.Combine(dir, "driver", "unbind"), address);
            if (WaitForDriver(address, null) is { } stuck)
            {
                throw new VfioException($"{address}: still bound to {stuck} after writing its unbind file (is the device in use? close every VFIO user first)");
            }
        }
        string? now = null;
        if (previous is not null)
        {
            WriteSysfs(Path.Combine(dir, "driver_override"), previous);
            WriteSysfs(Path.Combine(SysRoot, "bus", "pci", "drivers_probe"), address);
            now = WaitForDriver(address, previous);
            WriteSysfs(Path.Combine(dir, "driver_override"), "\n");
            if (now != previous)
            {
                throw new VfioException($"{address}: released from {VfioDriver}, but {previous} did not take it back (bound to {now ?? "no driver"}; see dmesg)");
            }
        }
        else
        {
            WriteSysfs(Path.Combine(dir, "driver_override"), "\n");
        }
        DeleteState(address);
        return now;
    }

    private string? WaitForDriver(string address, string? want)
    {
        var deadline = DateTime.UtcNow + BindTimeout;
        while (true)
        {
            string? d = GetDriver(address);
            if (d == want || DateTime.UtcNow >= deadline)
            {
                return d;
            }
            Thread.Sleep(10);
        }
    }

    // ---- state file: the driver a function had before `pci bind` -----------------------------------

    private string StatePath(string address) => Path.Combine(StateDir, $"pci-{address}.driver");

    /// <summary>The remembered previous driver (null = none remembered, or it had none).</summary>
    public string? ReadState(string address)
    {
        string p = StatePath(NormalizeAddress(address));
        if (!File.Exists(p))
        {
            return null;
        }
        string s = File.ReadAllText(p).Trim();
        // A driver name is a plain word; anything else in the file is not trusted.
        return s.Length > 0 && s.Length < 64 && s.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_') ? s : null;
    }

    private void WriteState(string address, string? driver)
    {
        try
        {
            Directory.CreateDirectory(StateDir);
            File.WriteAllText(StatePath(address), (driver ?? "") + "\n");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new VfioException($"cannot record the previous driver in {StateDir}: {e.Message}", e);
        }
    }

    private void DeleteState(string address)
    {
        try
        {
            File.Delete(StatePath(address));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // best effort: a stale state file only affects a later unbind's restore target
        }
    }

    // ---- sysfs access ----------------------------------------------------------------------------

    private static void WriteSysfs(string path, string value)
    {
        try
        {
            // O_TRUNC, like `echo VALUE > FILE`: sysfs stores the whole write as the new value
            using var h = File.OpenHandle(path, FileMode.Truncate, FileAccess.Write);
            RandomAccess.Write(h, System.Text.Encoding.ASCII.GetBytes(value), 0);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new VfioException($"permission denied writing {path}: binding drivers needs root (or CAP_SYS_ADMIN)", e);
        }
        catch (IOException e)
        {
            throw new VfioException($"writing \"{value.Trim()}\" to {path} failed: {e.Message}", e);
        }
    }

    private static uint ReadHex(string dir, string file)
    {
        string path = Path.Combine(dir, file);
        string s;
        try
        {
            s = File.ReadAllText(path).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new VfioException($"cannot read {path}: {e.Message}", e);
        }
        if (s.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
        {
            s = s[2..];
        }
        if (!uint.TryParse(s, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out uint v))
        {
            throw new VfioException($"{path} holds \"{s}\", not a hex number");
        }
        return v;
    }

    private static string? ReadOverride(string dir)
    {
        string path = Path.Combine(dir, "driver_override");
        try
        {
            string s = File.Exists(path) ? File.ReadAllText(path).Trim() : "";
            return s.Length == 0 || s == "(null)" ? null : s;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static int? GroupOf(string dir)
    {
        string? g = LinkName(Path.Combine(dir, "iommu_group"));
        return g is not null && int.TryParse(g, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : null;
    }

    /// <summary>The last path element of a symlink's target, or null when the link does not exist.</summary>
    private static string? LinkName(string link)
    {
        var fi = new FileInfo(link);
        string? target = fi.LinkTarget;
        if (target is null)
        {
            return null;
        }
        return Path.GetFileName(target.TrimEnd('/'));
    }
}
