using IfcVdpa.Pci;
using IfcVdpa.Virtio;

namespace IfcVdpa.Ifcvf;

/// <summary>Where one virtio structure lives.</summary>
public readonly record struct VirtioRegion(int Bar, uint Offset, uint Length);

/// <summary>Result of walking a function's capability list.</summary>
public sealed record VirtioCapabilities(
    VirtioRegion Common, VirtioRegion Notify, uint NotifyOffMultiplier, VirtioRegion Isr, VirtioRegion Device, bool HasMsix);

/// <summary>
/// Walks the PCI capability list for the four virtio vendor capabilities (VIRTIO 1.2 §4.1.4), as
/// ifcvf_init_hw does. Everything read here is device-controlled: the walk is bounded, each pointer is
/// checked to lie in config space, loops are detected, and every BAR index and range is validated.
/// </summary>
public static class CapabilityWalk
{
    /// <summary>First byte after the standard header: capabilities may not start below it.</summary>
    private const int FirstCapability = 0x40;

    public static VirtioCapabilities Run(IPciFunction pci)
    {
        int cfgSize = Math.Min(pci.ConfigSize, 256);
        if ((pci.ReadConfig16(PciConfig.Status) & PciConfig.StatusCapList) == 0)
        {
            throw new IfcvfProbeException($"{pci.Address}: no capability list (status bit 4 clear)");
        }
        VirtioRegion? common = null, notify = null, isr = null, device = null;
        uint multiplier = 0;
        bool msix = false;
        var rejected = new List<string>();
        var seen = new HashSet<int>();
        int pos = pci.ReadConfig8(PciConfig.CapabilitiesPointer);
        while (pos != 0)
        {
            if (pos < FirstCapability || pos + 4 > cfgSize)
            {
                throw new IfcvfProbeException($"{pci.Address}: capability pointer 0x{pos:x2} lies outside config space (0x40..0x{cfgSize - 4:x})");
            }
            if ((pos & 3) != 0)
            {
                throw new IfcvfProbeException($"{pci.Address}: capability pointer 0x{pos:x2} is not dword aligned");
            }
            if (!seen.Add(pos) || seen.Count > (cfgSize - FirstCapability) / 4)
            {
                throw new IfcvfProbeException($"{pci.Address}: capability list loops back to 0x{pos:x2}");
            }
            // Read the 16-byte header as four dword reads, like the C drivers.
            uint d0 = pci.ReadConfig32(pos);
            byte id = (byte)d0;
            int next = (byte)(d0 >> 8);
            if (id == PciConfig.CapIdMsix)
            {
                msix = true;
            }
            else if (id == PciConfig.CapIdVendor)
            {
                if (pos + 16 > cfgSize)
                {
                    throw new IfcvfProbeException($"{pci.Address}: vendor capability at 0x{pos:x2} extends beyond config space");
                }
                byte type = (byte)(d0 >> 24);
                uint d1 = pci.ReadConfig32(pos + 4);
                int bar = (byte)d1;
                uint offset = pci.ReadConfig32(pos + VirtioPci.CapOffset);
                uint length = pci.ReadConfig32(pos + VirtioPci.CapLength);
                var region = new VirtioRegion(bar, offset, length);
                string? problem = CheckRegion(pci, region);
                if (type is >= VirtioPci.CAP_COMMON_CFG and <= VirtioPci.CAP_DEVICE_CFG && problem is not null)
                {
                    rejected.Add($"{VirtioPci.CapTypeName(type)} capability at 0x{pos:x2}: {problem}");
                }
                else
                {
                    switch (type)
                    {
                        case VirtioPci.CAP_COMMON_CFG:
                            common = region;
                            break;
                        case VirtioPci.CAP_NOTIFY_CFG:
                            if (pos + 20 > cfgSize)
                            {
                                throw new IfcvfProbeException($"{pci.Address}: notify capability at 0x{pos:x2} extends beyond config space");
                            }
                            multiplier = pci.ReadConfig32(pos + VirtioPci.NotifyOffMultiplier);
                            notify = region;
                            break;
                        case VirtioPci.CAP_ISR_CFG:
                            isr = region;
                            break;
                        case VirtioPci.CAP_DEVICE_CFG:
                            device = region;
                            break;
                    }
                }
            }
            pos = next;
        }
        var missing = new List<string>();
        if (common is null) { missing.Add("common"); }
        if (notify is null) { missing.Add("notify"); }
        if (isr is null) { missing.Add("ISR"); }
        if (device is null) { missing.Add("device"); }
        if (missing.Count > 0)
        {
            string why = rejected.Count > 0 ? $" ({string.Join("; ", rejected)})" : "";
            throw new IfcvfProbeException($"{pci.Address}: incomplete PCI capabilities: no usable {string.Join(", ", missing)} config{why}");
        }
        if (common!.Value.Length < VirtioPci.CommonCfgSize)
        {
            throw new IfcvfProbeException($"{pci.Address}: common config is {common.Value.Length} bytes, needs {VirtioPci.CommonCfgSize}");
        }
        return new VirtioCapabilities(common.Value, notify!.Value, multiplier, isr!.Value, device!.Value, msix);
    }

    private static string? CheckRegion(IPciFunction pci, VirtioRegion r)
    {
        if (r.Bar >= 6)
        {
            return $"BAR index {r.Bar} is not a BAR (must be < 6)";
        }
        var bar = pci.FindBar(r.Bar);
        if (bar is null)
        {
            return $"BAR{r.Bar} is not implemented";
        }
        ulong end = (ulong)r.Offset + r.Length;
        if (end > bar.Value.Size)
        {
            return $"[0x{r.Offset:x}, +0x{r.Length:x}) exceeds BAR{r.Bar}'s 0x{bar.Value.Size:x} bytes";
        }
        return null;
    }
}
