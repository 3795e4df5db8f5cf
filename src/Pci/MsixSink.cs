using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Pci;

/// <summary>Where an MSI-X vector goes when the function raises it.</summary>
public interface IMsixSink
{
    void Signal();
}

/// <summary>Delivers the interrupt by writing an eventfd (a vhost-user call fd, a VFIO trigger).</summary>
public sealed class EventFdSink(EventFd eventFd) : IMsixSink
{
    public EventFd EventFd { get; } = eventFd;

    public void Signal() => EventFd.Signal();
}

/// <summary>Delivers the interrupt by calling a handler in-process.</summary>
public sealed class CallbackSink(Action handler) : IMsixSink
{
    public void Signal() => handler();
}
