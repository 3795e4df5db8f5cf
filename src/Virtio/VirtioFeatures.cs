namespace IfcVdpa.Virtio;

/// <summary>Feature bit numbers (VIRTIO 1.2 and include/uapi/linux/virtio_net.h).</summary>
public static class VirtioFeature
{
    // virtio-net device features
    public const int NET_F_CSUM = 0;
    public const int NET_F_GUEST_CSUM = 1;
    public const int NET_F_CTRL_GUEST_OFFLOADS = 2;
    public const int NET_F_MTU = 3;
    public const int NET_F_MAC = 5;
    public const int NET_F_GUEST_TSO4 = 7;
    public const int NET_F_GUEST_TSO6 = 8;
    public const int NET_F_GUEST_ECN = 9;
    public const int NET_F_GUEST_UFO = 10;
    public const int NET_F_HOST_TSO4 = 11;
    public const int NET_F_HOST_TSO6 = 12;
    public const int NET_F_HOST_ECN = 13;
    public const int NET_F_HOST_UFO = 14;
    public const int NET_F_MRG_RXBUF = 15;
    public const int NET_F_STATUS = 16;
    public const int NET_F_CTRL_VQ = 17;
    public const int NET_F_CTRL_RX = 18;
    public const int NET_F_CTRL_VLAN = 19;
    public const int NET_F_CTRL_RX_EXTRA = 20;
    public const int NET_F_GUEST_ANNOUNCE = 21;
    public const int NET_F_MQ = 22;
    public const int NET_F_CTRL_MAC_ADDR = 23;

    // transport / ring features
    public const int F_NOTIFY_ON_EMPTY = 24;
    public const int F_LOG_ALL = 26; // VHOST_F_LOG_ALL (vhost only)
    public const int F_ANY_LAYOUT = 27;
    public const int F_RING_INDIRECT_DESC = 28;
    public const int F_RING_EVENT_IDX = 29;
    public const int F_PROTOCOL_FEATURES = 30; // VHOST_USER_F_PROTOCOL_FEATURES (vhost-user only)
    public const int F_VERSION_1 = 32;
    public const int F_ACCESS_PLATFORM = 33;
    public const int F_RING_PACKED = 34;
    public const int F_IN_ORDER = 35;
    public const int F_ORDER_PLATFORM = 36;
    public const int F_SR_IOV = 37;
    public const int F_NOTIFICATION_DATA = 38;
    public const int F_RING_RESET = 40;

    public static ulong Bit(int n) => 1UL << n;

    public static bool Has(ulong features, int bit) => (features & (1UL << bit)) != 0;

    private static readonly (int Bit, string Name)[] s_names =
    [
        (NET_F_CSUM, "CSUM"), (NET_F_GUEST_CSUM, "GUEST_CSUM"), (NET_F_CTRL_GUEST_OFFLOADS, "CTRL_GUEST_OFFLOADS"),
        (NET_F_MTU, "MTU"), (NET_F_MAC, "MAC"), (NET_F_GUEST_TSO4, "GUEST_TSO4"), (NET_F_GUEST_TSO6, "GUEST_TSO6"),
        (NET_F_GUEST_ECN, "GUEST_ECN"), (NET_F_GUEST_UFO, "GUEST_UFO"), (NET_F_HOST_TSO4, "HOST_TSO4"),
        (NET_F_HOST_TSO6, "HOST_TSO6"), (NET_F_HOST_ECN, "HOST_ECN"), (NET_F_HOST_UFO, "HOST_UFO"),
        (NET_F_MRG_RXBUF, "MRG_RXBUF"), (NET_F_STATUS, "STATUS"), (NET_F_CTRL_VQ, "CTRL_VQ"), (NET_F_CTRL_RX, "CTRL_RX"),
        (NET_F_CTRL_VLAN, "CTRL_VLAN"), (NET_F_GUEST_ANNOUNCE, "GUEST_ANNOUNCE"), (NET_F_MQ, "MQ"),
        (NET_F_CTRL_MAC_ADDR, "CTRL_MAC_ADDR"), (F_NOTIFY_ON_EMPTY, "NOTIFY_ON_EMPTY"), (F_LOG_ALL, "LOG_ALL"),
        (F_ANY_LAYOUT, "ANY_LAYOUT"), (F_RING_INDIRECT_DESC, "RING_INDIRECT_DESC"), (F_RING_EVENT_IDX, "RING_EVENT_IDX"),
        (F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"), (F_VERSION_1, "VERSION_1"), (F_ACCESS_PLATFORM, "ACCESS_PLATFORM"),
        (F_RING_PACKED, "RING_PACKED"), (F_IN_ORDER, "IN_ORDER"), (F_ORDER_PLATFORM, "ORDER_PLATFORM"),
        (F_SR_IOV, "SR_IOV"), (F_NOTIFICATION_DATA, "NOTIFICATION_DATA"), (F_RING_RESET, "RING_RESET"),
        (NET_F_CTRL_RX_EXTRA, "CTRL_RX_EXTRA"),
    ];

    /// <summary>Names of the set bits, as the `vdpa` tool prints them (unknown bits as BIT_n).</summary>
    public static IEnumerable<string> Names(ulong features)
    {
        for (int b = 0; b < 64; b++)
        {
            if ((features & (1UL << b)) == 0)
            {
                continue;
            }
            string? name = null;
            foreach (var (bit, n) in s_names)
            {
                if (bit == b)
                {
                    name = n;
                }
            }
            yield return name ?? $"BIT_{b}";
        }
    }
}

/// <summary>Device status bits (VIRTIO 1.2 §2.1).</summary>
public static class VirtioStatus
{
    public const byte ACKNOWLEDGE = 0x01;
    public const byte DRIVER = 0x02;
    public const byte DRIVER_OK = 0x04;
    public const byte FEATURES_OK = 0x08;
    public const byte NEEDS_RESET = 0x40;
    public const byte FAILED = 0x80;

    public static string Describe(byte s)
    {
        if (s == 0)
        {
            return "RESET";
        }
        var parts = new List<string>();
        if ((s & ACKNOWLEDGE) != 0) { parts.Add("ACKNOWLEDGE"); }
        if ((s & DRIVER) != 0) { parts.Add("DRIVER"); }
        if ((s & FEATURES_OK) != 0) { parts.Add("FEATURES_OK"); }
        if ((s & DRIVER_OK) != 0) { parts.Add("DRIVER_OK"); }
        if ((s & NEEDS_RESET) != 0) { parts.Add("NEEDS_RESET"); }
        if ((s & FAILED) != 0) { parts.Add("FAILED"); }
        return string.Join('|', parts);
    }
}
