using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>
/// The software VF behind a pass-through wrapper that can patch config-space identity bytes (to look
/// like another device) and counts MSI-X enable/disable calls. It does NOT implement IQueueStatsSource,
/// so the adapter's own counters are what tests see.
/// </summary>
public class TestFunction(SoftIfcVf inner) : DelegatingPciFunction(inner, ownsInner: true)
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

    public override byte ReadConfig8(int offset) => _patch.TryGetValue(offset, out var b) ? b : inner.ReadConfig8(offset);
    public override ushort ReadConfig16(int offset) => (ushort)(ReadConfig8(offset) | (ReadConfig8(offset + 1) << 8));
    public override uint ReadConfig32(int offset) => ReadConfig16(offset) | ((uint)ReadConfig16(offset + 2) << 16);

    public override void WriteBar8(int bar, ulong offset, byte value)
    {
        if (bar == 0 && offset == (ulong)Virtio.VirtioPci.DeviceStatus && value == 0)
        {
            Events.Add("reset");
        }
        inner.WriteBar8(bar, offset, value);
    }

    public override void WriteBar16(int bar, ulong offset, ushort value)
    {
        if (bar == 0 && value == Virtio.VirtioPci.NoVector && offset is (ulong)Virtio.VirtioPci.MsixConfig or (ulong)Virtio.VirtioPci.QueueMsixVector)
        {
            Events.Add("novector");
        }
        inner.WriteBar16(bar, offset, value);
    }

    public override void EnableMsix(IReadOnlyList<IMsixSink?> sinks)
    {
        EnableMsixCalls++;
        LastSinks = sinks.ToArray();
        inner.EnableMsix(sinks);
    }

    public override void DisableMsix()
    {
        DisableMsixCalls++;
        Events.Add("msix-off");
        inner.DisableMsix();
    }
}

/// <summary>A function that also reports datapath counters (as the software VF's datapath will).</summary>
public sealed class StatsFunction(SoftIfcVf inner) : TestFunction(inner), IQueueStatsSource
{
    public QueueCounters GetQueueCounters(int queue) => new(100 + queue, 2000 + queue, 7, 8, 1, 2);
}
