namespace IfcVdpa.Virtio;

/// <summary>
/// Packed virtqueue layout (VIRTIO 1.2 §2.8): one descriptor ring written by both sides, plus a driver and a
/// device event-suppression structure.
/// </summary>
public static class PackedRing
{
    // struct pvirtq_desc { le64 addr; le32 len; le16 id; le16 flags; }
    public const int DescSize = 16;
    public const int DescAddr = 0;
    public const int DescLen = 8;
    public const int DescId = 12;
    public const int DescFlags = 14;

    public const ushort VIRTQ_DESC_F_NEXT = 1;
    public const ushort VIRTQ_DESC_F_WRITE = 2;
    public const ushort VIRTQ_DESC_F_INDIRECT = 4;
    public const ushort VIRTQ_DESC_F_AVAIL = 1 << 7;
    public const ushort VIRTQ_DESC_F_USED = 1 << 15;

    // struct pvirtq_event_suppress { le16 desc (off_wrap); le16 flags; }
    public const int EventSuppressionSize = 4;
    public const int EventOffWrap = 0;
    public const int EventFlags = 2;
    public const ushort RING_EVENT_FLAGS_ENABLE = 0;
    public const ushort RING_EVENT_FLAGS_DISABLE = 1;
    public const ushort RING_EVENT_FLAGS_DESC = 2;

    /// <summary>Whether a descriptor's flags mark it available for the device's current avail wrap counter.</summary>
    public static bool IsAvailable(ushort flags, bool wrap) =>
        ((flags & VIRTQ_DESC_F_AVAIL) != 0) == wrap && ((flags & VIRTQ_DESC_F_USED) != 0) != wrap;

    /// <summary>Whether a descriptor's flags mark it used for the driver's current used wrap counter.</summary>
    public static bool IsUsed(ushort flags, bool wrap) =>
        ((flags & VIRTQ_DESC_F_AVAIL) != 0) == wrap && ((flags & VIRTQ_DESC_F_USED) != 0) == wrap;

    /// <summary>
    /// Whether completing descriptors from <paramref name="oldIdx"/> to <paramref name="newIdx"/> (ring positions,
    /// <paramref name="newWrap"/> the used wrap counter after) crossed the driver's event off_wrap.
    /// </summary>
    public static bool NeedEvent(ushort offWrap, int newIdx, bool newWrap, int oldIdx, int size)
    {
        int off = offWrap & 0x7FFF;
        bool wrap = (offWrap & 0x8000) != 0;
        if (newIdx <= oldIdx)
        {
            oldIdx -= size;
        }
        if (wrap != newWrap)
        {
            off -= size;
        }
        return (ushort)(newIdx - off - 1) < (ushort)(newIdx - oldIdx);
    }
}
