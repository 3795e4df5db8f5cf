using IfcVdpa.Fuzz;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;

// Target: the PCI capability walk and the probe behind it. The input replaces the first input.Length
// bytes (up to 256) of a software IFC VF's config space, as a hostile or broken device would present
// it; CapabilityWalk.Run must either describe regions inside implemented BARs or throw
// IfcvfProbeException, and when it succeeds IfcvfAdapter.Probe (reset, features, queue sizes) runs too.
return FuzzDriver.Run(args, CapWalkTarget.Run, CapWalkTarget.Seeds);

internal static class CapWalkTarget
{
    public static void Run(ReadOnlySpan<byte> input)
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { Address = "sim:fz.0" });
        var f = new ConfigOverlay(vf, input[..Math.Min(input.Length, 256)]);
        VirtioCapabilities caps;
        try
        {
            caps = CapabilityWalk.Run(f);
        }
        catch (IfcvfProbeException)
        {
            return;
        }
        foreach (var r in new[] { caps.Common, caps.Notify, caps.Isr, caps.Device })
        {
            var bar = f.FindBar(r.Bar) ?? throw new InvalidOperationException($"BUG: walk accepted region in missing BAR {r.Bar}");
            if ((ulong)r.Offset + r.Length > bar.Size)
            {
                throw new InvalidOperationException($"BUG: walk accepted region {r} beyond BAR {r.Bar} (0x{bar.Size:x})");
            }
        }
        try
        {
            using var adapter = IfcvfAdapter.Probe(f);
        }
        catch (Exception e) when (e is IfcvfProbeException or IfcvfDeviceException)
        {
            // a clear refusal
        }
    }

    public static IEnumerable<(string, byte[])> Seeds()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions());
        var real = new byte[256];
        for (int i = 0; i < 256; i++)
        {
            real[i] = vf.ReadConfig8(i);
        }
        yield return ("real", real);
        int cap = real[PciConfig.CapabilitiesPointer];
        yield return ("no-caplist", Patch(real, (PciConfig.Status, 0)));
        yield return ("ptr-ff", Patch(real, (PciConfig.CapabilitiesPointer, 0xFF)));
        yield return ("ptr-3c", Patch(real, (PciConfig.CapabilitiesPointer, 0x3C)));
        yield return ("self-loop", Patch(real, (cap + 1, (byte)cap)));
        yield return ("bar-7", Patch(real, (cap + 4, 7)));
        yield return ("tail-f8", Patch(real, (cap + 1, 0xF8), (0xF8, 9)));
        yield return ("short", real[..0x48]);
    }

    private static byte[] Patch(byte[] b, params (int Offset, byte Value)[] p)
    {
        var c = (byte[])b.Clone();
        foreach (var (o, v) in p)
        {
            c[o] = v;
        }
        return c;
    }
}

/// <summary>A device whose config space reads return the given bytes over the real ones (writes go through).</summary>
internal sealed class ConfigOverlay(SoftIfcVf inner, ReadOnlySpan<byte> overlay) : DelegatingPciFunction(inner, ownsInner: false)
{
    private readonly byte[] _overlay = overlay.ToArray();

    private byte B(int offset) => offset >= 0 && offset < _overlay.Length ? _overlay[offset] : InnerFunction.ReadConfig8(offset);

    public override byte ReadConfig8(int offset) => B(offset);
    public override ushort ReadConfig16(int offset) => (ushort)(B(offset) | (B(offset + 1) << 8));
    public override uint ReadConfig32(int offset) => ReadConfig16(offset) | ((uint)ReadConfig16(offset + 2) << 16);
}
