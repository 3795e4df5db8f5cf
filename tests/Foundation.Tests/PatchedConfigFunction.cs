using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;

namespace IfcVdpa.Foundation.Tests;

/// <summary>
/// A "bad device": the software VF with some config-space bytes overridden, to feed the driver's
/// capability walk hostile lists (loops, wild pointers, bad BAR indices).
/// </summary>
public sealed class PatchedConfigFunction(SoftIfcVf inner) : DelegatingPciFunction(inner, ownsInner: true)
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

    public override byte ReadConfig8(int offset) => (byte)Read(offset, 1);
    public override ushort ReadConfig16(int offset) => (ushort)Read(offset, 2);
    public override uint ReadConfig32(int offset) => Read(offset, 4);
}
