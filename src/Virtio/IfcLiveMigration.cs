namespace IfcVdpa.Virtio;

/// <summary>Where the per-queue ring-state words live in the IFC VF's BAR4 live-migration block.</summary>
public enum LmLayout
{
    /// <summary>0x40-byte block per queue pair; word at 0x20 + (q/2)*0x40 + (q%2)*4 (DPDK, Linux 5.7-6.4).</summary>
    PairBlocks,

    /// <summary>0x40-byte block per queue; word at 0x20 + q*0x40 (DPDK block VFs: one slot per queue, not per pair).</summary>
    PerQueueBlocks,

    /// <summary>16-bit avail index at 0x20 + q*4 (Linux 6.5+ "better layout"); no MQ register.</summary>
    Compact,
}

/// <summary>IFC VF live-migration block (BAR4, offset 0). Offsets from DPDK's ifcvf.h / Linux ifcvf_base.h.</summary>
public static class IfcLiveMigration
{
    public const int Bar = 4;
    public const int LoggingCtrl = 0x00;
    public const int Status = 0x08;
    public const int BaseAddrLow = 0x10;
    public const int BaseAddrHigh = 0x14;
    public const int EndAddrLow = 0x18;
    public const int EndAddrHigh = 0x1C;
    public const int RingStateBase = 0x20;
    public const int PairBlockSize = 0x40;
    /// <summary>The MQ register (queue pairs in use for net, queues for block), block layouts only (not compact).</summary>
    public const int MqRegister = 0x28;

    public const uint LoggingDisable = 0;
    public const uint LoggingEnableVf = 1;
    public const uint LoggingEnablePf = 3;

    /// <summary>Byte offset of queue <paramref name="q"/>'s ring-state word.</summary>
    public static int RingStateOffset(LmLayout layout, int q) => layout switch
    {
        LmLayout.PairBlocks => RingStateBase + (q / 2 * PairBlockSize) + (q % 2 * 4),
        LmLayout.PerQueueBlocks => RingStateBase + (q * PairBlockSize),
        _ => RingStateBase + (q * 4),
    };

    /// <summary>Whether the layout has the MQ register at 0x28 (inside the first block's reserved part).</summary>
    public static bool HasMqRegister(LmLayout layout) => layout != LmLayout.Compact;

    /// <summary>Bytes the block needs for <paramref name="numQueues"/> queues.</summary>
    public static int BlockSize(LmLayout layout, int numQueues) => layout switch
    {
        LmLayout.PairBlocks => RingStateBase + (((numQueues + 1) / 2) * PairBlockSize),
        LmLayout.PerQueueBlocks => RingStateBase + (numQueues * PairBlockSize),
        _ => RingStateBase + (numQueues * 4),
    };

    /// <summary>
    /// One half of a ring-state word for a packed ring: the ring position in bits 0..14 and its wrap counter
    /// in bit 15 (a split ring stores its free-running 16-bit index instead).
    /// </summary>
    public static ushort PackedMark(ushort position, bool wrapCounter) => (ushort)((position & 0x7fff) | (wrapCounter ? 0x8000 : 0));

    /// <summary>The inverse of <see cref="PackedMark"/>.</summary>
    public static (ushort Position, bool WrapCounter) UnpackMark(ushort mark) => ((ushort)(mark & 0x7fff), (mark & 0x8000) != 0);

    /// <summary>Packs a ring-state word: last_avail_idx in bits 0..15, last_used_idx in bits 16..31.</summary>
    public static uint Pack(ushort lastAvail, ushort lastUsed) => lastAvail | ((uint)lastUsed << 16);
}
