using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.IfcvfModel;

/// <summary>How a software IFC VF is built. Defaults describe an N3000-style net VF; <see cref="ForBlock"/> a block VF.</summary>
public sealed record SoftIfcVfOptions
{
    /// <summary>Name on the software bus (used as the PCI address string).</summary>
    public string Address { get; init; } = "sim:00.0";

    /// <summary>Use the transitional IDs 1AF4:1000 / 8086:0001 (C5000X-PL) instead of 1AF4:1041 / 8086:001A.</summary>
    public bool Transitional { get; init; }

    /// <summary>Data queue pairs (each an RX and a TX virtqueue).</summary>
    public int QueuePairs { get; init; } = 1;

    /// <summary>Add a control virtqueue after the data queues.</summary>
    public bool ControlQueue { get; init; } = true;

    /// <summary>Largest ring size a queue accepts (what queue_size reads after reset).</summary>
    public ushort MaxQueueSize { get; init; } = 1024;

    public ReadOnlyMemory<byte> Mac { get; init; } = new byte[] { 0x00, 0xe0, 0xed, 0x00, 0x00, 0x01 };

    public ushort Mtu { get; init; } = 1500;

    /// <summary>Features the device offers. Bits for MQ/CTRL_VQ are removed if the shape lacks them.</summary>
    public ulong DeviceFeatures { get; init; } = DefaultFeatures;

    public LmLayout LmLayout { get; init; } = LmLayout.PairBlocks;

    /// <summary>
    /// Whether the LM block has the dirty-page log registers (logging control, base, end). Without them the
    /// block keeps only ring state and the MQ register: the registers read 0 and ignore writes, the VF logs
    /// nothing, and a vhost back-end migrates the guest through its software relay instead.
    /// </summary>
    public bool DirtyLog { get; init; } = true;

    /// <summary>
    /// A block VF (C5000X-PL storage: 1AF4:1042, or 1AF4:1001 with <see cref="Transitional"/>, subsystem
    /// 8086:0002) with this virtio-blk config instead of a net VF: <see cref="VirtioBlkConfig.NumQueues"/>
    /// request queues, no control queue; the net options are ignored. Use <see cref="ForBlock"/>.
    /// </summary>
    public VirtioBlkConfig? Block { get; init; }

    /// <summary>Block VF: offer VIRTIO_BLK_F_RO (the device refuses writes).</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Features a block VF offers (RO and MQ added by the shape).</summary>
    public const ulong DefaultBlockFeatures =
        (1UL << F_VERSION_1) | (1UL << F_ACCESS_PLATFORM) | (1UL << F_RING_EVENT_IDX) | (1UL << F_RING_INDIRECT_DESC) |
        (1UL << VirtioBlk.F_SIZE_MAX) | (1UL << VirtioBlk.F_SEG_MAX) | (1UL << VirtioBlk.F_GEOMETRY) |
        (1UL << VirtioBlk.F_BLK_SIZE) | (1UL << VirtioBlk.F_FLUSH) | (1UL << VirtioBlk.F_TOPOLOGY) |
        (1UL << VirtioBlk.F_DISCARD) | (1UL << VirtioBlk.F_WRITE_ZEROES);

    /// <summary>A block VF's options: one ring-state slot per queue in the LM block (DPDK's block layout).</summary>
    public static SoftIfcVfOptions ForBlock(VirtioBlkConfig config, bool readOnly = false, string address = "sim:00.0") => new()
    {
        Address = address,
        Block = config,
        ReadOnly = readOnly,
        LmLayout = LmLayout.PerQueueBlocks,
    };

    public bool IsBlock => Block is not null;

    /// <summary>
    /// Strict mode: a driver-side violation of the virtio 1.x rules the device can see (docs/strict.md) sets
    /// NEEDS_RESET, besides being counted and logged once. Without it the device keeps its tolerant behaviour
    /// (ignores or executes the access) and still counts and logs.
    /// </summary>
    public bool Strict { get; init; }

    /// <summary>Where the device logs (the first violation of each rule); null = silent, counters only.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>MSI-X table size; default one per queue plus one for config changes.</summary>
    public int? MsixVectors { get; init; }

    /// <summary>How long after writing 0 the status register keeps its old value before reading 0.</summary>
    public TimeSpan ResetLatency { get; init; } = TimeSpan.Zero;

    /// <summary>Fault injection for driver tests: a device whose reset never completes.</summary>
    public bool NeverCompleteReset { get; init; }

    /// <summary>Fault injection: this many device-config reads each bump config_generation (-1 = forever).</summary>
    public int ConfigChurnReads { get; init; }

    /// <summary>
    /// Fault injection: queue_enable = 1 on these queues is ignored (it keeps reading 0), as a device that cannot
    /// start them; the driver sees the queue refuse to enable.
    /// </summary>
    public IReadOnlySet<int>? RefuseQueueEnable { get; init; }

    public const ulong DefaultFeatures =
        (1UL << F_VERSION_1) | (1UL << F_ACCESS_PLATFORM) | (1UL << F_ANY_LAYOUT) |
        (1UL << NET_F_MAC) | (1UL << NET_F_STATUS) | (1UL << NET_F_MTU) | (1UL << NET_F_MRG_RXBUF) |
        (1UL << NET_F_CTRL_VQ) | (1UL << NET_F_MQ) | (1UL << NET_F_CTRL_RX) | (1UL << NET_F_CTRL_MAC_ADDR) |
        (1UL << NET_F_GUEST_ANNOUNCE) | (1UL << F_RING_EVENT_IDX) | (1UL << F_RING_INDIRECT_DESC) |
        (1UL << F_IN_ORDER) | (1UL << F_ORDER_PLATFORM);

    public int NumQueues => Block is { } b ? b.NumQueues : (QueuePairs * 2) + (ControlQueue ? 1 : 0);

    /// <summary>The feature set actually offered, consistent with the queue shape.</summary>
    public ulong EffectiveFeatures
    {
        get
        {
            if (Block is { } b)
            {
                ulong bf = DefaultBlockFeatures;
                bf |= ReadOnly ? 1UL << VirtioBlk.F_RO : 0;
                bf |= b.NumQueues > 1 ? 1UL << VirtioBlk.F_MQ : 0;
                return bf;
            }
            ulong f = DeviceFeatures;
            if (!ControlQueue)
            {
                f &= ~((1UL << NET_F_CTRL_VQ) | (1UL << NET_F_MQ) | (1UL << NET_F_CTRL_RX) |
                       (1UL << NET_F_CTRL_MAC_ADDR) | (1UL << NET_F_GUEST_ANNOUNCE));
            }
            if (QueuePairs <= 1)
            {
                f &= ~(1UL << NET_F_MQ);
            }
            return f;
        }
    }

    public void Validate()
    {
        if (Block is { } b)
        {
            b.Validate();
            if (LmLayout == LmLayout.PairBlocks)
            {
                throw new ArgumentException("a block VF keeps one ring-state slot per queue: LM layout per-queue blocks or compact, not pair blocks");
            }
        }
        if (QueuePairs is < 1 or > 32)
        {
            throw new ArgumentException($"queue pairs must be 1..32, not {QueuePairs}");
        }
        if (MaxQueueSize is < 2 or > 32768 || (MaxQueueSize & (MaxQueueSize - 1)) != 0)
        {
            throw new ArgumentException($"max queue size must be a power of two in 2..32768, not {MaxQueueSize}");
        }
        if (Mac.Length != 6)
        {
            throw new ArgumentException("MAC must be 6 bytes");
        }
        if (MsixVectors is < 1 or > 2048)
        {
            throw new ArgumentException("MSI-X vectors must be 1..2048");
        }
        if (Mtu < 68)
        {
            throw new ArgumentException($"MTU {Mtu} is below 68");
        }
    }
}
