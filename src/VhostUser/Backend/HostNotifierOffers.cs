using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>
/// Host notifiers (VHOST_USER_PROTOCOL_F_HOST_NOTIFIER) from the device side: when a ring starts, its
/// doorbell page is offered to the front-end over the back-end channel if the device can hand it out
/// (a VFIO BAR), so the guest writes the doorbell itself; when the ring stops the offer is taken back.
/// A refusal costs nothing but the direct path: kicks keep going through the eventfd relay.
/// </summary>
public sealed class HostNotifierOffers
{
    private readonly IVdpaDevice _device;
    private readonly VhostUserBackendChannel _channel;
    private readonly Action<string> _log;
    private readonly bool[] _offered;
    private bool _refusalLogged;

    public HostNotifierOffers(IVdpaDevice device, VhostUserBackendChannel channel, int rings, Action<string> log)
    {
        _device = device;
        _channel = channel;
        _offered = new bool[rings];
        _log = log;
    }

    /// <summary>
    /// Why ring <paramref name="q"/>'s doorbell cannot be handed to the front-end for direct mapping, or
    /// null when it can: there must be a descriptor to map, the doorbell must start a page (QEMU maps
    /// exactly one host page at the offset and the guest writes at the page's start) and the queue's
    /// notify area must fill that page (a smaller notify_off_multiplier would put other queues'
    /// doorbells on it).
    /// </summary>
    public static string? Refusal(int q, VdpaNotificationArea area, ulong pageSize)
    {
        if (area.MapFd is null || area.MapFd.IsInvalid || area.MapFd.IsClosed)
        {
            return $"the device offers no mappable descriptor for its doorbells (BAR{area.Bar}): a software device cannot trap stores to shared memory, and a VFIO BAR must be mmappable";
        }
        if (area.MapOffset % pageSize != 0)
        {
            return $"ring {q}'s doorbell (BAR{area.Bar} offset 0x{area.Offset:x}) does not start a {pageSize}-byte page";
        }
        if (area.Size < pageSize)
        {
            return $"ring {q}'s notify area is {area.Size} bytes (notify_off_multiplier): a {pageSize}-byte page would hold other rings' doorbells";
        }
        return null;
    }

    private static ulong HostPageSize => (ulong)Environment.SystemPageSize;

    /// <summary>Ring <paramref name="q"/> just started: queue its doorbell page for the front-end, if it can have it.</summary>
    public void Offer(int q, ulong protocol)
    {
        bool Has(int feature) => (protocol & (1UL << feature)) != 0;
        if (!Has(VhostUserProtocolFeature.HOST_NOTIFIER) || _offered[q])
        {
            return;
        }
        string? why;
        VdpaNotificationArea area = default;
        if (!Has(VhostUserProtocolFeature.BACKEND_REQ) || !Has(VhostUserProtocolFeature.BACKEND_SEND_FD))
        {
            why = "HOST_NOTIFIER was negotiated without BACKEND_REQ and BACKEND_SEND_FD";
        }
        else if (!_channel.IsOpen)
        {
            why = "the front-end gave no back-end channel (SET_BACKEND_REQ_FD)";
        }
        else
        {
            try
            {
                area = _device.GetVqNotification(q);
                why = Refusal(q, area, HostPageSize);
            }
            catch (Exception e) when (VhostUserRequestDispatcher.IsRefusal(e))
            {
                why = $"the device has no notify area: {e.Message}";
            }
        }
        if (why is not null)
        {
            if (!_refusalLogged)
            {
                _refusalLogged = true;
                _log($"host notifiers not offered for {_device.Name}: {why}; kicks go through the eventfd relay");
            }
            return;
        }
        _offered[q] = true;
        _channel.OfferHostNotifier(q, area.MapFd!, area.MapOffset, HostPageSize);
    }

    /// <summary>Ring <paramref name="q"/> stops (or the device resets): take its doorbell page back.</summary>
    public void Remove(int q)
    {
        if (_offered[q])
        {
            _offered[q] = false;
            _channel.RemoveHostNotifier(q);
        }
    }
}
