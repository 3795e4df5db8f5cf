using IfcVdpa.Virtio;

namespace IfcVdpa.Vduse;

/// <summary>
/// Which of a device's virtio features can be offered through VDUSE, and why the others cannot. The kernel
/// (drivers/vdpa/vdpa_user/vduse_dev.c) refuses VDUSE_CREATE_DEV for a device without ACCESS_PLATFORM, a net
/// device without VERSION_1 or with CTRL_VQ, and a block device with CONFIG_WCE (its config space is
/// read-only). VDUSE has no control queue for net, so every feature that needs one goes too (the virtio spec
/// makes them depend on CTRL_VQ): one queue pair, no RX filtering or VLAN tables, no MAC change, no
/// announce. It has no kick_vq_with_data and no per-queue reset, so NOTIFICATION_DATA and RING_RESET go.
/// The device class decides only through its virtio device id: a block device class uses the same filter.
/// </summary>
public static class VduseFeatures
{
    public const uint DeviceIdNet = 1;
    public const uint DeviceIdBlock = 2;

    /// <summary>Transport features VDUSE can carry (everything else in bits 24-40 is refused or legacy).</summary>
    public static readonly ulong TransportAllowed =
        VirtioFeature.Bit(VirtioFeature.F_RING_INDIRECT_DESC) | VirtioFeature.Bit(VirtioFeature.F_RING_EVENT_IDX)
        | VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM)
        | VirtioFeature.Bit(VirtioFeature.F_RING_PACKED) | VirtioFeature.Bit(VirtioFeature.F_IN_ORDER)
        | VirtioFeature.Bit(VirtioFeature.F_ORDER_PLATFORM);

    /// <summary>virtio-net features that need the control queue (spec 5.1.3.1), which VDUSE does not allow.</summary>
    public static readonly ulong NetNeedsControlQueue =
        VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_RX)
        | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VLAN) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_RX_EXTRA)
        | VirtioFeature.Bit(VirtioFeature.NET_F_GUEST_ANNOUNCE) | VirtioFeature.Bit(VirtioFeature.NET_F_MQ)
        | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_MAC_ADDR) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_GUEST_OFFLOADS)
        | (1UL << 52) | (1UL << 53) | (1UL << 60); // VQ_NOTF_COAL, NOTF_COAL, RSS: set through the control queue

    /// <summary>virtio-blk CONFIG_WCE: a writable config field (VDUSE config space is read-only).</summary>
    public const int BlkConfigWce = 11;

    /// <summary>
    /// The features to offer: the device's, minus what VDUSE cannot carry, plus ACCESS_PLATFORM (the device
    /// reaches memory only through the VDUSE IOTLB, an IOMMU in all but name). <paramref name="dropped"/>
    /// lists each removed feature with its reason. Throws <see cref="ArgumentException"/> when the kernel would
    /// refuse the device anyway (net without VERSION_1).
    /// </summary>
    public static ulong Filter(uint deviceId, ulong deviceFeatures, out IReadOnlyList<string> dropped)
    {
        var why = new List<string>();
        ulong f = deviceFeatures;
        ulong transportMask = ((1UL << 41) - 1) & ~((1UL << 24) - 1); // bits 24..40 are transport features
        ulong badTransport = f & transportMask & ~TransportAllowed;
        if (badTransport != 0)
        {
            why.Add($"{Names(badTransport)}: not carried by VDUSE (legacy, vhost-only, or no kick-with-data / per-queue reset)");
            f &= ~badTransport;
        }
        if (deviceId == DeviceIdNet)
        {
            if ((f & VirtioFeature.Bit(VirtioFeature.F_VERSION_1)) == 0)
            {
                throw new ArgumentException("VDUSE takes only virtio 1.0 net devices (VERSION_1), and this device does not offer it");
            }
            ulong ctrl = f & NetNeedsControlQueue;
            if (ctrl != 0)
            {
                why.Add($"{Names(ctrl)}: VDUSE has no control queue for net (one queue pair; MAC/MTU come from the config space)");
                f &= ~ctrl;
            }
        }
        else if (deviceId == DeviceIdBlock && (f & (1UL << BlkConfigWce)) != 0)
        {
            why.Add("CONFIG_WCE: VDUSE config space is read-only");
            f &= ~(1UL << BlkConfigWce);
        }
        f |= VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM);
        dropped = why;
        return f;
    }

    /// <summary>
    /// Virtqueues the VDUSE device declares: for net one RX/TX pair (no MQ, no control queue without
    /// CTRL_VQ); for block the request queues its config offers (<c>num_queues</c> with MQ, else one), which is
    /// what the kernel's virtio_blk asks virtio_vdpa for; for any other class every queue the device has.
    /// <paramref name="features"/> are the ones offered (after <see cref="Filter"/>), <paramref name="config"/>
    /// the device's config space. Throws <see cref="ArgumentException"/> when a block config does not fit
    /// the device (no room for num_queues, 0 queues, or more than the device has).
    /// </summary>
    public static int QueueCount(uint deviceId, int deviceQueues, ulong features, ReadOnlySpan<byte> config)
    {
        if (deviceId == DeviceIdNet)
        {
            return Math.Min(2, deviceQueues);
        }
        if (deviceId != DeviceIdBlock)
        {
            return deviceQueues;
        }
        if ((features & (1UL << VirtioBlk.F_MQ)) == 0)
        {
            return Math.Min(1, deviceQueues);
        }
        if (config.Length < VirtioBlkConfig.NumQueuesOff + 2)
        {
            throw new ArgumentException($"block device offers MQ but its {config.Length}-byte config space has no num_queues (offset {VirtioBlkConfig.NumQueuesOff})");
        }
        int n = config[VirtioBlkConfig.NumQueuesOff] | (config[VirtioBlkConfig.NumQueuesOff + 1] << 8);
        if (n < 1 || n > deviceQueues)
        {
            throw new ArgumentException($"block config num_queues {n} does not fit the device's {deviceQueues} queues (1-{deviceQueues})");
        }
        return n;
    }

    /// <summary>Bytes of block config the kernel's virtio_blk always reads: capacity.</summary>
    public const int BlkCapacityBytes = 8;

    private static string Names(ulong bits) => string.Join(' ', VirtioFeature.Names(bits));
}
