using System.Text;
using IfcVdpa.Virtio;

namespace IfcVdpa.Pci;

/// <summary>Renders a function's identity, BARs and capability list the way `lspci -vv` does.</summary>
public static class LspciFormatter
{
    public static string Format(IPciFunction f)
    {
        var sb = new StringBuilder();
        ushort vendor = f.ReadConfig16(PciConfig.VendorId);
        ushort device = f.ReadConfig16(PciConfig.DeviceId);
        byte rev = f.ReadConfig8(PciConfig.RevisionId);
        ushort svid = f.ReadConfig16(PciConfig.SubsystemVendorId);
        ushort sid = f.ReadConfig16(PciConfig.SubsystemId);
        string name = device switch
        {
            VirtioPci.ModernNetDeviceId => "Virtio 1.0 network device",
            VirtioPci.TransitionalNetDeviceId => "Virtio network device",
            _ => $"Device {device:x4}",
        };
        string vname = vendor == VirtioPci.VendorId ? "Red Hat, Inc." : $"Vendor {vendor:x4}";
        sb.AppendLine($"{f.Address} Ethernet controller [0200]: {vname} {name} [{vendor:x4}:{device:x4}] (rev {rev:x2})");
        string sub = svid == 0x8086 ? "Intel Corporation" : $"Vendor {svid:x4}";
        string subName = IfcPciIds.Find(vendor, device, svid, sid)?.Description ?? $"Device {sid:x4}";
        sb.AppendLine($"\tSubsystem: {sub} {subName} [{svid:x4}:{sid:x4}]");
        ushort cmd = f.ReadConfig16(PciConfig.Command);
        sb.AppendLine($"\tControl: I/O- Mem{Pm(cmd & PciConfig.CommandMemory)} BusMaster{Pm(cmd & PciConfig.CommandBusMaster)} DisINTx{Pm(cmd & PciConfig.CommandIntxDisable)}");
        ushort st = f.ReadConfig16(PciConfig.Status);
        sb.AppendLine($"\tStatus: Cap{Pm(st & PciConfig.StatusCapList)}");
        foreach (var b in f.Bars)
        {
            string kind = b.Is64Bit ? "64-bit" : "32-bit";
            string pf = b.Prefetchable ? "prefetchable" : "non-prefetchable";
            sb.AppendLine($"\tRegion {b.Index}: Memory at {b.Address:x} ({kind}, {pf}) [size={Size(b.Size)}]");
        }
        int pos = f.ReadConfig8(PciConfig.CapabilitiesPointer);
        var seen = new HashSet<int>();
        while (pos != 0 && pos >= 0x40 && pos + 4 <= 256 && seen.Add(pos))
        {
            byte id = f.ReadConfig8(pos);
            int next = f.ReadConfig8(pos + 1);
            switch (id)
            {
                case PciConfig.CapIdMsix:
                {
                    ushort mc = f.ReadConfig16(pos + PciConfig.MsixMessageControl);
                    uint tbl = f.ReadConfig32(pos + PciConfig.MsixTable);
                    uint pba = f.ReadConfig32(pos + PciConfig.MsixPba);
                    sb.AppendLine($"\tCapabilities: [{pos:x2}] MSI-X: Enable{Pm(mc & PciConfig.MsixEnable)} Count={(mc & PciConfig.MsixTableSizeMask) + 1} Masked{Pm(mc & PciConfig.MsixFunctionMask)}");
                    sb.AppendLine($"\t\tVector table: BAR={tbl & 7} offset={tbl & ~7u:x8}");
                    sb.AppendLine($"\t\tPBA: BAR={pba & 7} offset={pba & ~7u:x8}");
                    break;
                }
                case PciConfig.CapIdVendor when pos + 16 <= 256:
                {
                    byte type = f.ReadConfig8(pos + VirtioPci.CapCfgType);
                    byte bar = f.ReadConfig8(pos + VirtioPci.CapBar);
                    uint off = f.ReadConfig32(pos + VirtioPci.CapOffset);
                    uint len = f.ReadConfig32(pos + VirtioPci.CapLength);
                    string extra = "";
                    if (type == VirtioPci.CAP_NOTIFY_CFG && pos + 20 <= 256)
                    {
                        extra = $" MultiplierOff={f.ReadConfig32(pos + VirtioPci.NotifyOffMultiplier)}";
                    }
                    sb.AppendLine($"\tCapabilities: [{pos:x2}] Vendor Specific Information: VirtIO: {VirtioPci.CapTypeName(type)}");
                    sb.AppendLine($"\t\tBAR={bar} offset={off:x8} size={len:x8}{extra}");
                    break;
                }
                default:
                    sb.AppendLine($"\tCapabilities: [{pos:x2}] Capability ID {id:x2}");
                    break;
            }
            pos = next;
        }
        return sb.ToString();
    }

    private static string Pm(int bit) => bit != 0 ? "+" : "-";

    private static string Size(ulong s) => s switch
    {
        >= 1UL << 30 when s % (1UL << 30) == 0 => $"{s >> 30}G",
        >= 1UL << 20 when s % (1UL << 20) == 0 => $"{s >> 20}M",
        >= 1UL << 10 when s % (1UL << 10) == 0 => $"{s >> 10}K",
        _ => s.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}
