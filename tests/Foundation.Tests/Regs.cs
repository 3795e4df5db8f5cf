using IfcVdpa.IfcvfModel;
using IfcVdpa.Virtio;

namespace IfcVdpa.Foundation.Tests;

/// <summary>Direct register access to the model's common config (BAR0 offset 0), for spec-rule tests.</summary>
public static class Regs
{
    public static byte Status(this SoftIfcVf vf) => vf.ReadBar8(0, VirtioPci.DeviceStatus);
    public static void WriteStatus(this SoftIfcVf vf, byte s) => vf.WriteBar8(0, VirtioPci.DeviceStatus, s);
    public static void Select(this SoftIfcVf vf, int q) => vf.WriteBar16(0, VirtioPci.QueueSelect, (ushort)q);
    public static ushort Q16(this SoftIfcVf vf, int q, int off)
    {
        vf.Select(q);
        return vf.ReadBar16(0, (ulong)off);
    }
    public static void WQ16(this SoftIfcVf vf, int q, int off, ushort v)
    {
        vf.Select(q);
        vf.WriteBar16(0, (ulong)off, v);
    }
    public static void WriteDriverFeatures(this SoftIfcVf vf, ulong f)
    {
        vf.WriteBar32(0, VirtioPci.DriverFeatureSelect, 0);
        vf.WriteBar32(0, VirtioPci.DriverFeature, (uint)f);
        vf.WriteBar32(0, VirtioPci.DriverFeatureSelect, 1);
        vf.WriteBar32(0, VirtioPci.DriverFeature, (uint)(f >> 32));
    }
    public const byte AckDriver = VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER;
}
