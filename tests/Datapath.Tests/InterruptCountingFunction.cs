using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;

namespace IfcVdpa.Datapath.Tests;

/// <summary>
/// The VF as the driver sees it, with every MSI-X vector counted as the function delivers it (before the
/// driver's own handler), so a test can tell exactly which vectors fired and wait for the next one.
/// </summary>
public sealed class InterruptCountingFunction(SoftIfcVf vf) : DelegatingPciFunction(vf, ownsInner: false)
{
    private readonly long[] _counts = new long[vf.MsixVectorCount];
    private readonly AutoResetEvent _fired = new(false);

    /// <summary>Interrupts delivered on a vector so far.</summary>
    public long Count(int vector) => Interlocked.Read(ref _counts[vector]);

    /// <summary>Waits (bounded) until some vector fires.</summary>
    public bool WaitForInterrupt(int timeoutMs) => _fired.WaitOne(timeoutMs);

    public override void EnableMsix(IReadOnlyList<IMsixSink?> sinks)
    {
        var counted = new IMsixSink?[sinks.Count];
        for (int v = 0; v < sinks.Count; v++)
        {
            counted[v] = new CountingSink(this, v, sinks[v]);
        }
        base.EnableMsix(counted);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _fired.Dispose();
        }
        base.Dispose(disposing);
    }

    private sealed class CountingSink(InterruptCountingFunction fn, int vector, IMsixSink? inner) : IMsixSink
    {
        public void Signal()
        {
            Interlocked.Increment(ref fn._counts[vector]);
            fn._fired.Set();
            inner?.Signal();
        }
    }
}
