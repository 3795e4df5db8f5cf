using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;

namespace IfcVdpa.Vfio;

/// <summary>
/// Turns eventfd signals into in-process <see cref="IMsixSink"/> calls: the VFIO backend gives the kernel one
/// eventfd per vector whose sink is not itself an eventfd, and this relay runs the sink when the kernel
/// signals it (one <see cref="EventFdFanIn"/> thread). The relay owns the eventfds. A sink that throws is
/// counted and contained. After <see cref="Dispose"/> returns no sink runs again.
/// </summary>
public sealed class MsixEventRelay : IDisposable
{
    private readonly List<(EventFd Fd, IMsixSink Sink)> _vectors;
    private readonly EventFdFanIn _fanIn;
    private long _signals;
    private long _sinkErrors;
    private int _disposed;

    public MsixEventRelay(string name, List<(EventFd Fd, IMsixSink Sink)> vectors)
    {
        ArgumentNullException.ThrowIfNull(vectors);
        _vectors = vectors;
        var set = new (int Tag, EventFd Fd)[vectors.Count];
        for (int i = 0; i < set.Length; i++)
        {
            set[i] = (i, vectors[i].Fd);
        }
        _fanIn = new EventFdFanIn($"msix {name}", OnSignal, (_, _) => Interlocked.Increment(ref _sinkErrors), _ => { }, _ => { }, set);
    }

    /// <summary>Sink calls made.</summary>
    public long Signals => Interlocked.Read(ref _signals);

    /// <summary>Sink calls that threw.</summary>
    public long SinkErrors => Interlocked.Read(ref _sinkErrors);

    private void OnSignal(int vector)
    {
        Interlocked.Increment(ref _signals);
        _vectors[vector].Sink.Signal();
    }

    /// <summary>Stops the thread, waits for it (unless called from a sink on it) and closes the eventfds.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _fanIn.Dispose();
        foreach (var (fd, _) in _vectors)
        {
            fd.Dispose();
        }
    }
}
