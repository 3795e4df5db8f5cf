using IfcVdpa.Interop.Native;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;

namespace IfcVdpa.Vfio;

/// <summary>MSI-X through VFIO_DEVICE_SET_IRQS (index VFIO_PCI_MSIX_IRQ_INDEX, eventfd triggers).</summary>
public sealed partial class VfioPciFunction
{
    private readonly Lock _irqLock = new();
    private int _msixCount; // vectors enabled in the kernel; 0 = MSI-X off
    private MsixEventRelay? _waiter;
    private long _retiredSignals;
    private long _retiredErrors;

    /// <summary>Interrupts delivered to in-process sinks by the waiter thread.</summary>
    public long InProcessInterrupts
    {
        get { lock (_irqLock) { return _retiredSignals + (_waiter?.Signals ?? 0); } }
    }

    /// <summary>In-process sinks that threw (contained and counted).</summary>
    public long SinkErrors
    {
        get { lock (_irqLock) { return _retiredErrors + (_waiter?.SinkErrors ?? 0); } }
    }

    /// <summary>Vectors currently enabled (0 = MSI-X off).</summary>
    public int EnabledMsixVectors
    {
        get { lock (_irqLock) { return _msixCount; } }
    }

    public void EnableMsix(IReadOnlyList<IMsixSink?> sinks)
    {
        ArgumentNullException.ThrowIfNull(sinks);
        if (sinks.Count == 0 || sinks.Count > MsixVectorCount)
        {
            throw new ArgumentException($"{Address}: {sinks.Count} MSI-X sinks for a function with {MsixVectorCount} vectors");
        }
        lock (_irqLock)
        {
            ObjectDisposedException.ThrowIf(_disposed != 0, this);
            var fds = new int[sinks.Count];
            var internalFds = new List<(EventFd Fd, IMsixSink Sink)>();
            MsixEventRelay? waiter = null;
            try
            {
                for (int v = 0; v < sinks.Count; v++)
                {
                    switch (sinks[v])
                    {
                        case null:
                            fds[v] = -1;
                            break;
                        case EventFdSink e:
                            fds[v] = e.EventFd.Fd;
                            break;
                        case var s:
                            var fd = EventFd.Create(nonBlocking: true);
                            internalFds.Add((fd, s));
                            fds[v] = fd.Fd;
                            break;
                    }
                }
                if (internalFds.Count > 0)
                {
                    waiter = new MsixEventRelay(Address, internalFds);
                }
                if (_msixCount != 0 && _msixCount != sinks.Count)
                {
                    // vfio-pci cannot resize an enabled MSI-X block: switch it off and on again
                    VfioIoctl.DisableIrqs(_device, VfioAbi.VFIO_PCI_MSIX_IRQ_INDEX);
                    _msixCount = 0;
                }
                VfioIoctl.SetIrqEventFds(_device, VfioAbi.VFIO_PCI_MSIX_IRQ_INDEX, 0, fds);
                _msixCount = sinks.Count;
            }
            catch
            {
                if (waiter is not null)
                {
                    waiter.Dispose();
                }
                else
                {
                    foreach (var (f, _) in internalFds)
                    {
                        f.Dispose();
                    }
                }
                throw;
            }
            // the kernel now triggers the new eventfds only: the old waiter can go
            RetireWaiter();
            _waiter = waiter;
        }
    }

    public void DisableMsix()
    {
        lock (_irqLock)
        {
            if (_msixCount != 0)
            {
                _msixCount = 0;
                VfioIoctl.DisableIrqs(_device, VfioAbi.VFIO_PCI_MSIX_IRQ_INDEX);
            }
            RetireWaiter();
        }
    }

    private void RetireWaiter()
    {
        if (_waiter is { } w)
        {
            w.Dispose();
            _retiredSignals += w.Signals;
            _retiredErrors += w.SinkErrors;
            _waiter = null;
        }
    }
}
