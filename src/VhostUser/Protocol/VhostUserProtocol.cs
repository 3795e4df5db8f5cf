namespace IfcVdpa.VhostUser;

/// <summary>Front-end to back-end request codes (qemu docs/interop/vhost-user.rst).</summary>
public enum VhostUserRequest : uint
{
    GET_FEATURES = 1,
    SET_FEATURES = 2,
    SET_OWNER = 3,
    RESET_OWNER = 4,
    SET_MEM_TABLE = 5,
    SET_LOG_BASE = 6,
    SET_LOG_FD = 7,
    SET_VRING_NUM = 8,
    SET_VRING_ADDR = 9,
    SET_VRING_BASE = 10,
    GET_VRING_BASE = 11,
    SET_VRING_KICK = 12,
    SET_VRING_CALL = 13,
    SET_VRING_ERR = 14,
    GET_PROTOCOL_FEATURES = 15,
    SET_PROTOCOL_FEATURES = 16,
    GET_QUEUE_NUM = 17,
    SET_VRING_ENABLE = 18,
    SEND_RARP = 19,
    NET_SET_MTU = 20,
    SET_BACKEND_REQ_FD = 21,
    IOTLB_MSG = 22,
    SET_VRING_ENDIAN = 23,
    GET_CONFIG = 24,
    SET_CONFIG = 25,
    CREATE_CRYPTO_SESSION = 26,
    CLOSE_CRYPTO_SESSION = 27,
    POSTCOPY_ADVISE = 28,
    POSTCOPY_LISTEN = 29,
    POSTCOPY_END = 30,
    GET_INFLIGHT_FD = 31,
    SET_INFLIGHT_FD = 32,
    GPU_SET_SOCKET = 33,
    RESET_DEVICE = 34,
    VRING_KICK = 35,
    GET_MAX_MEM_SLOTS = 36,
    ADD_MEM_REG = 37,
    REM_MEM_REG = 38,
    SET_STATUS = 39,
    GET_STATUS = 40,
}

/// <summary>Back-end to front-end request codes (sent on the SET_BACKEND_REQ_FD channel).</summary>
public enum VhostUserBackendRequest : uint
{
    IOTLB_MSG = 1,
    CONFIG_CHANGE_MSG = 2,
    VRING_HOST_NOTIFIER_MSG = 3,
}

/// <summary>Protocol feature bit numbers (VHOST_USER_PROTOCOL_F_*).</summary>
public static class VhostUserProtocolFeature
{
    public const int MQ = 0;
    public const int LOG_SHMFD = 1;
    public const int RARP = 2;
    public const int REPLY_ACK = 3;
    public const int MTU = 4;
    public const int BACKEND_REQ = 5;
    public const int CROSS_ENDIAN = 6;
    public const int CRYPTO_SESSION = 7;
    public const int PAGEFAULT = 8;
    public const int CONFIG = 9;
    public const int BACKEND_SEND_FD = 10;
    public const int HOST_NOTIFIER = 11;
    public const int INFLIGHT_SHMFD = 12;
    public const int RESET_DEVICE = 13;
    public const int INBAND_NOTIFICATIONS = 14;
    public const int CONFIGURE_MEM_SLOTS = 15;
    public const int STATUS = 16;

    /// <summary>
    /// What this back-end offers for every device. HOST_NOTIFIER is offered always; doorbell pages are
    /// actually sent only when the device can be mapped (VFIO). Per device it adds <see cref="LOG_SHMFD"/>
    /// when the device keeps a dirty log and <see cref="RARP"/> when it can send a frame for the guest
    /// (<see cref="Migration"/>).
    /// </summary>
    public const ulong Supported =
        (1UL << MQ) | (1UL << REPLY_ACK) | (1UL << MTU) | (1UL << BACKEND_REQ) | (1UL << BACKEND_SEND_FD) |
        (1UL << CONFIG) | (1UL << HOST_NOTIFIER) | (1UL << RESET_DEVICE) | (1UL << CONFIGURE_MEM_SLOTS) | (1UL << STATUS);

    /// <summary>The live-migration bits a device may add to <see cref="Supported"/>.</summary>
    public const ulong Migration = (1UL << LOG_SHMFD) | (1UL << RARP);
}

/// <summary>Wire constants.</summary>
public static class VhostUserWire
{
    public const int HeaderSize = 12;

    /// <summary>Version 1 in flag bits 0-1.</summary>
    public const uint FlagVersion = 0x1;
    public const uint FlagVersionMask = 0x3;
    public const uint FlagReply = 0x4;
    public const uint FlagNeedReply = 0x8;

    /// <summary>Flags of every reply: exactly REPLY | version 1 (QEMU and virtio-user reject anything else).</summary>
    public const uint ReplyFlags = FlagReply | FlagVersion;

    /// <summary>Largest payload accepted at all (rust-vmm MAX_MSG_SIZE); larger sizes close the connection.</summary>
    public const int MaxPayload = 0x1000;

    /// <summary>Regions in one SET_MEM_TABLE (VHOST_MEMORY_MAX_NREGIONS).</summary>
    public const int MaxMemTableRegions = 8;

    public const int RegionSize = 32;
    public const int VringStateSize = 8;
    public const int VringAddrSize = 40;
    public const int U64Size = 8;
    public const int SingleRegionSize = 40;
    public const int ConfigHeaderSize = 12;

    /// <summary>SET_LOG_BASE payload: u64 mmap_size, u64 mmap_offset.</summary>
    public const int LogSize = 16;
    public const int MaxConfigSize = 256;

    /// <summary>KICK/CALL/ERR payload: bits 0-7 ring index, bit 8 = no descriptor attached.</summary>
    public const ulong VringIndexMask = 0xFF;
    public const ulong VringNoFdMask = 0x100;

    /// <summary>VHOST_VRING_F_LOG in SET_VRING_ADDR flags.</summary>
    public const uint VringFlagLog = 0x1;

    /// <summary>Largest virtqueue size (virtio: 2^15).</summary>
    public const uint MaxRingSize = 32768;
}
