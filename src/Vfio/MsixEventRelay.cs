using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;

namespace IfcVdpa.Vfio;

/// <summary>
/// One thread that turns eventfd signals into in-process <see cref="IMsixSink"/> calls: the VFIO
/// backend gives the kernel one eventfd per vector whose sink is not itself an eventfd, and this relay
/// runs the sink when the kernel signals it. The relay owns the eventfds. A sink that throws is
/// counted and contained. After <see cref="Dispose"/> returns no sink runs again.
/// </summary>
public sealed class MsixEventRelay : IDisposable
{
    private readonly List<(EventFd Fd, IMsixSink Sink)> _vectors;
    private readonly EventFd _stop = EventFd.Create(nonBlocking: true);
    private readonly Thread _thread;
    private volatile bool _stopped;
    private long _signals;
    private long _sinkErrors;
    private int _disposed;

    public MsixEventRelay(string name, List<(EventFd Fd, IMsixSink Sink)> vectors)
    {
        ArgumentNullException.ThrowIfNull(vectors);
        _vectors = vectors;
        _thread = new Thread(Run) { IsBackground = true, Name = $"msix {name}" };
        _thread.Start();
    }

    /// <summary>Sink calls made.</summary>
    public long Signals => Interlocked.Read(ref _signals);

    /// <summary>Sink calls that threw.</summary>
    public long SinkErrors => Interlocked.Read(ref _sinkErrors);

    private void Run()
    {
        var set = new PollSet();
        Span<int> fds = stackalloc int[_vectors.Count + 1];
        fds[0] = _stop.Fd;
        for (int i = 0; i < _vectors.Count; i++)
        {
            fds[i + 1] = _vectors[i].Fd.Fd;
        }
        set.Reset(fds);
        while (!_stopped)
        {
            set.Wait(-1);
            if (_stopped || set.IsReadable(0))
            {
                return;
            }
            for (int i = 0; i < _vectors.Count; i++)
            {
                if (set.IsReadable(i + 1) && _vectors[i].Fd.TryConsume(out _))
                {
                    Interlocked.Increment(ref _signals);
                    try
                    {
                        _vectors[i].Sink.Signal();
                    }
#pragma warning disable CA1031 // a sink's bug must not kill the interrupt thread of the whole function
                    catch (Exception)
#pragma warning restore CA1031
                    {
                        Interlocked.Increment(ref _sinkErrors);
                    }
                    if (_stopped)
                    {
                        return;
                    }
                }
            }
        }
    }

    /// <summary>Stops the thread, waits for it (unless called from a sink on it) and closes the eventfds.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _stopped = true;
        _stop.Signal();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
        }
        foreach (var (fd, _) in _vectors)
        {
            fd.Dispose();
        }
        _stop.Dispose();
    }
}
