namespace IfcVdpa.Virtio;

/// <summary>
/// Split virtqueue layout (VIRTIO 1.2 §2.7): descriptor table, driver (avail) ring and device (used)
/// ring, with their field offsets and flags. Pure layout arithmetic, shared by device and driver sides.
/// </summary>
public static class SplitRing
{
    // struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
    public const int DescSize = 16;
    public const int DescAddr = 0;
    public const int DescLen = 8;
    public const int DescFlags = 12;
    public const int DescNext = 14;

    public const ushort VIRTQ_DESC_F_NEXT = 1;
    public const ushort VIRTQ_DESC_F_WRITE = 2;
    public const ushort VIRTQ_DESC_F_INDIRECT = 4;

    // struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }
    public const int AvailFlags = 0;
    public const int AvailIdx = 2;
    public const int AvailRing = 4;
    public const ushort VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

    // struct virtq_used { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[size]; le16 avail_event; }
    public const int UsedFlags = 0;
    public const int UsedIdx = 2;
    public const int UsedRing = 4;
    public const int UsedElemSize = 8;
    public const ushort VIRTQ_USED_F_NO_NOTIFY = 1;

    /// <summary>Largest queue size a split ring may have.</summary>
    public const int MaxSize = 32768;

    public static int DescTableBytes(int size) => DescSize * size;

    /// <summary>Driver area size including used_event (present whatever the features; harmless if unused).</summary>
    public static int AvailBytes(int size) => AvailRing + (2 * size) + 2;

    /// <summary>Device area size including avail_event.</summary>
    public static int UsedBytes(int size) => UsedRing + (UsedElemSize * size) + 2;

    /// <summary>Offset of used_event inside the driver area.</summary>
    public static int UsedEventOffset(int size) => AvailRing + (2 * size);

    /// <summary>Offset of avail_event inside the device area.</summary>
    public static int AvailEventOffset(int size) => UsedRing + (UsedElemSize * size);

    /// <summary>
    /// vring_need_event: whether moving an index from <paramref name="oldIdx"/> to <paramref name="newIdx"/>
    /// crossed the other side's event index (VIRTIO 1.2 §2.7.10).
    /// </summary>
    public static bool NeedEvent(ushort eventIdx, ushort newIdx, ushort oldIdx) =>
        (ushort)(newIdx - eventIdx - 1) < (ushort)(newIdx - oldIdx);
}
