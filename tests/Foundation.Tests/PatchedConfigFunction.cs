using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;

namespace IfcVdpa.Foundation.Tests;

/// <summary>
/// A "bad device": the software VF with some config-space bytes overridden, to feed the driver's
/// capability walk hostile lists (loops, wild pointers, bad BAR indices).
/// </summary>
public sealed class PatchedConfigFunction(SoftIfcVf inner) : IPciFunction
{
    private readonly Dictionary<int, byte> _patch = [];

    public SoftIfcVf Inner => inner;

    public PatchedConfigFunction Set8(int offset, byte value)
    {
        _patch[offset] = value;
        return this;
    }

    public PatchedConfigFunction Set32(int offset, uint value)
    {
        for (int i = 0; i < 4; i++)
        {
            _patch[offset + i] = (byte)(value >> (8 * i));
        }
        return this;
    }

    private uint Read(int offset, int size)
    {
        uint v = size switch
        {
            1 => inner.ReadConfig8(offset),
            2 => inner.ReadConfig16(offset),
            _ => inner.ReadConfig32(offset),
        };
        for (int i = 0; i < size; i++)
        {
            if (_patch.TryGetValue(offset + i, out byte b))
            {
                v = (v & ~(0xFFu << (8 * i))) | ((uint)b << (8 * i));
            }
        }
        return v;
    }

    public string Address => inner.Address;
    public int ConfigSize => inner.ConfigSize;
    public byte ReadConfig8(int offset) => (byte)Read(offset, 1);
    public ushort ReadConfig16(int offset) => (ushort)Read(offset, 2);
    public uint ReadConfig32(int offset) => Read(offset, 4);
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
    public void Dispose() => inner.Dispose();
}
