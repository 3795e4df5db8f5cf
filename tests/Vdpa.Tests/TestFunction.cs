using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>
/// The software VF behind a pass-through wrapper that can patch config-space identity bytes (to look
/// like another device) and counts MSI-X enable/disable calls. It does NOT implement IQueueStatsSource,
/// so the adapter's own counters are what tests see.
/// </summary>
public class TestFunction(SoftIfcVf inner) : IPciFunction
{
    private readonly Dictionary<int, byte> _patch = [];

    public SoftIfcVf Inner => inner;

    public int EnableMsixCalls { get; private set; }

    public int DisableMsixCalls { get; private set; }

    public IReadOnlyList<IMsixSink?> LastSinks { get; private set; } = [];

    /// <summary>Order of the interrupt/reset steps: "novector" (a vector register set to 0xFFFF), "msix-off", "reset".</summary>
    public List<string> Events { get; } = [];

    public TestFunction Set16(int offset, ushort value)
    {
        _patch[offset] = (byte)value;
        _patch[offset + 1] = (byte)(value >> 8);
        return this;
    }

    public string Address => inner.Address;
    public int ConfigSize => inner.ConfigSize;

    public byte ReadConfig8(int offset) => _patch.TryGetValue(offset, out var b) ? b : inner.ReadConfig8(offset);
    public ushort ReadConfig16(int offset) => (ushort)(ReadConfig8(offset) | (ReadConfig8(offset + 1) << 8));
    public uint ReadConfig32(int offset) => ReadConfig16(offset) | ((uint)ReadConfig16(offset + 2) << 16);
    public void WriteConfig8(int offset, byte value) => inner.WriteConfig8(offset, value);
    public void WriteConfig16(int offset, ushort value) => inner.WriteConfig16(offset, value);
    public void WriteConfig32(int offset, uint value) => inner.WriteConfig32(offset, value);

    public IReadOnlyList<PciBar> Bars => inner.Bars;
    public byte ReadBar8(int bar, ulong offset) => inner.ReadBar8(bar, offset);
    public ushort ReadBar16(int bar, ulong offset) => inner.ReadBar16(bar, offset);
    public uint ReadBar32(int bar, ulong offset) => inner.ReadBar32(bar, offset);
    public void WriteBar8(int bar, ulong offset, byte value)
    {
        if (bar == 0 && offset == (ulong)Virtio.VirtioPci.DeviceStatus && value == 0)
        {
            Events.Add("reset");
        }
        inner.WriteBar8(bar, offset, value);
    }

    public void WriteBar16(int bar, ulong offset, ushort value)
    {
        if (bar == 0 && value == Virtio.VirtioPci.NoVector && offset is (ulong)Virtio.VirtioPci.MsixConfig or (ulong)Virtio.VirtioPci.QueueMsixVector)
        {
            Events.Add("novector");
        }
        inner.WriteBar16(bar, offset, value);
    }
    public void WriteBar32(int bar, ulong offset, uint value) => inner.WriteBar32(bar, offset, value);

    public int MsixVectorCount => inner.MsixVectorCount;

    public void EnableMsix(IReadOnlyList<IMsixSink?> sinks)
    {
        EnableMsixCalls++;
        LastSinks = sinks.ToArray();
        inner.EnableMsix(sinks);
    }

    public void DisableMsix()
    {
        DisableMsixCalls++;
        Events.Add("msix-off");
        inner.DisableMsix();
    }

    public void DmaMap(ulong iova, ulong size, nint host, bool writable) => inner.DmaMap(iova, size, host, writable);
    public void DmaUnmap(ulong iova, ulong size) => inner.DmaUnmap(iova, size);
    public int DmaMapCount => inner.DmaMapCount;

    public void Dispose()
    {
        inner.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>A function that also reports datapath counters (as the software VF's datapath will).</summary>
public sealed class StatsFunction(SoftIfcVf inner) : TestFunction(inner), IQueueStatsSource
{
    public QueueCounters GetQueueCounters(int queue) => new(100 + queue, 2000 + queue, 7, 8, 1, 2);
}
