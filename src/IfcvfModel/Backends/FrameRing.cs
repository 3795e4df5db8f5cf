namespace IfcVdpa.IfcvfModel.Backends;

/// <summary>
/// A single-producer single-consumer ring of frames (preallocated slots) between two workers.
/// Each slot holds a 12-byte virtio-net header followed by the frame.
/// </summary>
internal sealed class FrameRing
{
    public const int SlotSize = 16384;
    private readonly byte[] _data;
    private readonly int[] _lengths;
    private readonly int _mask;
    private readonly ushort[] _pairs;
    private Indices _idx;

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Explicit, Size = 256)]
    private struct Indices
    {
        [System.Runtime.InteropServices.FieldOffset(0)]
        public long Head; // written by the producer

        [System.Runtime.InteropServices.FieldOffset(128)]
        public long Tail; // written by the consumer
    }

    public FrameRing(int slots)
    {
        if (slots < 2 || (slots & (slots - 1)) != 0)
        {
            throw new ArgumentException("slots must be a power of two >= 2");
        }
        _data = new byte[slots * SlotSize];
        _lengths = new int[slots];
        _pairs = new ushort[slots];
        _mask = slots - 1;
    }

    /// <summary>Producer: copies a frame (header included) in. False if full or too large.</summary>
    public bool TryPush(ReadOnlySpan<byte> frame, int pair)
    {
        long head = _idx.Head;
        if (frame.Length > SlotSize || head - Volatile.Read(ref _idx.Tail) > _mask)
        {
            return false;
        }
        int slot = (int)(head & _mask);
        frame.CopyTo(_data.AsSpan(slot * SlotSize, SlotSize));
        _lengths[slot] = frame.Length;
        _pairs[slot] = (ushort)pair;
        Volatile.Write(ref _idx.Head, head + 1);
        return true;
    }

    /// <summary>Consumer: the oldest frame, if any (valid until <see cref="Pop"/>).</summary>
    public bool TryPeek(out Span<byte> frame, out int pair)
    {
        long tail = _idx.Tail;
        if (tail == Volatile.Read(ref _idx.Head))
        {
            frame = default;
            pair = 0;
            return false;
        }
        int slot = (int)(tail & _mask);
        frame = _data.AsSpan(slot * SlotSize, _lengths[slot]);
        pair = _pairs[slot];
        return true;
    }

    public void Pop() => Volatile.Write(ref _idx.Tail, _idx.Tail + 1);
}
