using IfcVdpa.Vdpa;

namespace IfcVdpa.Vduse;

/// <summary>
/// What VDUSE_CREATE_DEV tells the kernel, taken from the vDPA device itself: its virtio device and vendor
/// ids, its features filtered for VDUSE (<see cref="VduseFeatures"/>), its queue count and size, and a copy of
/// its config space (MAC, MTU, link status for net; capacity, blk_size, num_queues... for block: the `dev add`
/// provisioning). The class shows only in the filter and the queue count (net: one pair; block: the config's
/// num_queues with MQ, else one), so a block device joins the bus the same way as a net device.
/// </summary>
public sealed record VduseDeviceSpec(
    string Name, uint DeviceId, uint VendorId, ulong DeviceFeatures, ulong Features, IReadOnlyList<string> Dropped,
    int VqNum, ushort VqMaxSize, uint VqAlign, byte[] Config)
{
    /// <summary>The kernel takes a config space of at most one page and a queue alignment of at most one page.</summary>
    public const int PageSize = 4096;

    public static VduseDeviceSpec From(IVdpaDevice device, string name)
    {
        ArgumentNullException.ThrowIfNull(device);
        uint id = device.GetDeviceId();
        ulong deviceFeatures = device.GetDeviceFeatures();
        ulong features = VduseFeatures.Filter(id, deviceFeatures, out var dropped);
        uint size = device.GetConfigSize();
        if (size > PageSize)
        {
            throw new VdpaException($"{device.Name}: config space of {size} bytes (VDUSE takes at most {PageSize})");
        }
        if (id == VduseFeatures.DeviceIdBlock && size < VduseFeatures.BlkCapacityBytes)
        {
            throw new VdpaException($"{device.Name}: block config space of {size} bytes holds no capacity");
        }
        var config = new byte[size];
        device.GetConfig(0, config);
        int vqs;
        try
        {
            vqs = VduseFeatures.QueueCount(id, device.NumVqs, features, config);
        }
        catch (ArgumentException e)
        {
            throw new VdpaException($"{device.Name}: {e.Message}");
        }
        if (vqs < 1)
        {
            throw new VdpaException($"{device.Name}: no virtqueues to declare");
        }
        ushort max = device.GetVqNumMax();
        if (max == 0)
        {
            throw new VdpaException($"{device.Name}: maximum queue size is 0");
        }
        uint align = device.GetVqAlign();
        if (align == 0 || align > PageSize)
        {
            align = PageSize;
        }
        return new VduseDeviceSpec(name, id, device.GetVendorId(), deviceFeatures, features, dropped, vqs, max, align, config);
    }
}
