using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Pci;

/// <summary>
/// A function that forwards every access to another one. Subclasses override what they change: a config
/// space with patched bytes (bad devices for the capability walk), a hidden BAR, recorded interrupt steps.
/// Used by tests and fuzz harnesses; the driver never needs it.
/// </summary>
public abstract class DelegatingPciFunction(IPciFunction inner, bool ownsInner) : IPciFunction
{
    protected IPciFunction InnerFunction => inner;

    public virtual string Address => inner.Address;
    public virtual int ConfigSize => inner.ConfigSize;
    public virtual byte ReadConfig8(int offset) => inner.ReadConfig8(offset);
    public virtual ushort ReadConfig16(int offset) => inner.ReadConfig16(offset);
    public virtual uint ReadConfig32(int offset) => inner.ReadConfig32(offset);
    public virtual void WriteConfig8(int offset, byte value) => inner.WriteConfig8(offset, value);
    public virtual void WriteConfig16(int offset, ushort value) => inner.WriteConfig16(offset, value);
    public virtual void WriteConfig32(int offset, uint value) => inner.WriteConfig32(offset, value);
    public virtual IReadOnlyList<PciBar> Bars => inner.Bars;
    public virtual byte ReadBar8(int bar, ulong offset) => inner.ReadBar8(bar, offset);
    public virtual ushort ReadBar16(int bar, ulong offset) => inner.ReadBar16(bar, offset);
    public virtual uint ReadBar32(int bar, ulong offset) => inner.ReadBar32(bar, offset);
    public virtual void WriteBar8(int bar, ulong offset, byte value) => inner.WriteBar8(bar, offset, value);
    public virtual void WriteBar16(int bar, ulong offset, ushort value) => inner.WriteBar16(bar, offset, value);
    public virtual void WriteBar32(int bar, ulong offset, uint value) => inner.WriteBar32(bar, offset, value);
    public virtual int MsixVectorCount => inner.MsixVectorCount;
    public virtual void EnableMsix(IReadOnlyList<IMsixSink?> sinks) => inner.EnableMsix(sinks);
    public virtual void DisableMsix() => inner.DisableMsix();
    public virtual void DmaMap(ulong iova, MemorySlice memory, bool writable) => inner.DmaMap(iova, memory, writable);
    public virtual void DmaUnmap(ulong iova, ulong size) => inner.DmaUnmap(iova, size);
    public virtual int DmaMapCount => inner.DmaMapCount;
    public virtual PciBarMapping? GetBarMapping(int bar) => inner.GetBarMapping(bar);

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing && ownsInner)
        {
            inner.Dispose();
        }
    }
}
