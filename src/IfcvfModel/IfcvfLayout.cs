namespace IfcVdpa.IfcvfModel;

/// <summary>
/// Where the software IFC VF puts things. Only the device knows this: drivers find it through the
/// capability list. BAR0 holds common config, ISR, device config and the MSI-X table/PBA; BAR2 the
/// doorbells, one per 4 KiB page (notify_off_multiplier 4096, queue_notify_off = queue index) so
/// each queue's doorbell page can be mapped alone; BAR4 the live-migration block at offset 0.
/// </summary>
public static class IfcvfLayout
{
    public const int CommonBar = 0;
    public const ulong CommonOffset = 0x0000;
    public const ulong IsrOffset = 0x1000;
    public const uint IsrLength = 4;
    public const ulong DeviceCfgOffset = 0x2000;
    public const ulong MsixTableOffset = 0x3000;
    public const ulong MsixPbaOffset = 0x3800;
    public const ulong Bar0Size = 0x4000;

    public const int NotifyBar = 2;
    public const uint NotifyOffMultiplier = 0x1000;

    public const int LmBar = 4;

    // Capability list positions in config space.
    public const int CapMsix = 0x40;
    public const int CapCommon = 0x50;
    public const int CapNotify = 0x60;
    public const int CapIsr = 0x78;
    public const int CapDevice = 0x88;

    public static readonly ulong[] BusAddresses = [0xfe000000, 0, 0xfd000000, 0, 0xfc000000, 0];

    public static ulong RoundUpPow2(ulong v, ulong min)
    {
        ulong r = min;
        while (r < v)
        {
            r <<= 1;
        }
        return r;
    }
}
