using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The notify relay (DPDK ifc "ifc-noti"): the kick eventfds of the running rings, fanned in on one
/// thread, each kick turned into a doorbell write (<see cref="IVdpaDevice.KickVq"/>). <see cref="Update"/>
/// returns after the thread has switched to the new set, so the caller may close a removed descriptor or
/// stop a queue without a late kick racing it.
/// </summary>
internal sealed class KickRelay : IDisposable
{
    private readonly IVdpaDevice _device;
    private readonly EventFdFanIn _fanIn;
    private long _kicks;

    public KickRelay(IVdpaDevice device, string name, Action<string> log)
    {
        _device = device;
        _fanIn = new EventFdFanIn($"kick-relay {name}", Kick,
            (q, e) => log($"ring {q}: kick failed: {e.Message}"),
            q => log($"ring {q}: kick fd broken, no longer relayed"),
            log);
    }

    /// <summary>Kicks relayed so far.</summary>
    public long Kicks => Interlocked.Read(ref _kicks);

    /// <summary>Switches the relay to <paramref name="set"/> (ring, kick eventfd) and waits until the thread uses it.</summary>
    public void Update((int Qid, EventFd Kick)[] set) => _fanIn.Update(set);

    private void Kick(int q)
    {
        Interlocked.Increment(ref _kicks);
        _device.KickVq(q);
    }

    public void Dispose() => _fanIn.Dispose();
}
