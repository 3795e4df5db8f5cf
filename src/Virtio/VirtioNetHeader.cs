namespace IfcVdpa.Virtio;

/// <summary>
/// struct virtio_net_hdr as used with VERSION_1 (VIRTIO 1.2 §5.1.6): always 12 bytes, num_buffers included.
/// </summary>
public static class VirtioNetHeader
{
    public const int Size = 12;
    public const int Flags = 0;
    public const int GsoType = 1;
    public const int HdrLen = 2;
    public const int GsoSize = 4;
    public const int CsumStart = 6;
    public const int CsumOffset = 8;
    public const int NumBuffers = 10;

    public const byte F_NEEDS_CSUM = 1;
    public const byte F_DATA_VALID = 2;
    public const byte GSO_NONE = 0;
}

/// <summary>The control virtqueue's commands (VIRTIO 1.2 §5.1.6.5): class, command, ack.</summary>
public static class VirtioNetCtrl
{
    public const byte OK = 0;
    public const byte ERR = 1;

    public const byte CLASS_RX = 0;
    public const byte CMD_RX_PROMISC = 0;
    public const byte CMD_RX_ALLMULTI = 1;
    public const byte CMD_RX_ALLUNI = 2;
    public const byte CMD_RX_NOMULTI = 3;
    public const byte CMD_RX_NOUNI = 4;
    public const byte CMD_RX_NOBCAST = 5;

    public const byte CLASS_MAC = 1;
    public const byte CMD_MAC_TABLE_SET = 0;
    public const byte CMD_MAC_ADDR_SET = 1;

    public const byte CLASS_VLAN = 2;

    public const byte CLASS_ANNOUNCE = 3;
    public const byte CMD_ANNOUNCE_ACK = 0;

    public const byte CLASS_MQ = 4;
    public const byte CMD_MQ_VQ_PAIRS_SET = 0;
    public const ushort MQ_VQ_PAIRS_MIN = 1;
    public const ushort MQ_VQ_PAIRS_MAX = 0x8000;
}
