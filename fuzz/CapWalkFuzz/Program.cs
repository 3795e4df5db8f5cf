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
internal sealed class ConfigOverlay(SoftIfcVf inner, ReadOnlySpan<byte> overlay) : IPciFunction
{
    private readonly byte[] _overlay = overlay.ToArray();

    private byte B(int offset) => offset >= 0 && offset < _overlay.Length ? _overlay[offset] : inner.ReadConfig8(offset);

    public string Address => inner.Address;
    public int ConfigSize => inner.ConfigSize;
    public byte ReadConfig8(int offset) => B(offset);
    public ushort ReadConfig16(int offset) => (ushort)(B(offset) | (B(offset + 1) << 8));
    public uint ReadConfig32(int offset) => ReadConfig16(offset) | ((uint)ReadConfig16(offset + 2) << 16);
    public void WriteConfig8(int offset, byte value) => inner.WriteConfig8(offset, value);
    public void WriteConfig16(int offset, ushort value) => inner.WriteConfig16(offset, value);
    public void WriteConfig32(int offset, uint value) => inner.WriteConfig32(offset, value);
    public IReadOnlyList<PciBar> Bars => inner.Bars;
    public byte ReadBar8(int bar, ulong offset) => inner.ReadBar8(bar, offset);
    public ushort ReadBar16(int bar, ulong offset) => inner.ReadBar16(bar, offset);
    public uint ReadBar32(int bar, ulong offset) => inner.ReadBar32(bar, offset);
    public void WriteBar8(int bar, ulong offset, byte value) => inner.WriteBar8(bar, offset, value);
    public void WriteBar16(int bar, ulong offset, ushort value) => inner.WriteBar16(bar, offset, value);
    public void WriteBar32(int bar, ulong offset, uint value) => inner.WriteBar32(bar, offset, value);
    public int MsixVectorCount => inner.MsixVectorCount;
    public void EnableMsix(IReadOnlyList<IMsixSink?> sinks) => inner.EnableMsix(sinks);
    public void DisableMsix() => inner.DisableMsix();
    public void DmaMap(ulong iova, ulong size, nint host, bool writable) => inner.DmaMap(iova, size, host, writable);
    public void DmaUnmap(ulong iova, ulong size) => inner.DmaUnmap(iova, size);
    public int DmaMapCount => inner.DmaMapCount;
    public void Dispose() { }
}
