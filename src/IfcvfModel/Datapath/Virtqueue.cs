using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// One split virtqueue as the engine runs it: ring addresses, the device's private indices and counters.
/// Ownership: the control path writes the fields while <see cref="State"/> is Stopped; the worker owns
/// them while it holds the queue Busy.
/// </summary>
internal sealed class Virtqueue(int index)
{
    public const int Stopped = 0;
    public const int Idle = 1;
    public const int Busy = 2;
    public const int StopRequested = 3;

    public readonly int Index = index;
    public int State;
    public ushort Size;
    public ushort Mask;
    public ulong Desc;
    public ulong Avail;
    public ulong Used;
    public ushort LastAvail;
    public ushort LastUsed;
    public ushort AvailIdxCache;
    public bool EventIdx;
    public bool Indirect;
    public bool Mergeable;
    public bool Failed;
    public bool ErrorLogged;
    /// <summary>A fault found when the queue started (reported by the worker, which may raise NEEDS_RESET).</summary>
    public string? StartFault;
    public bool SuppressKicks;

    // Packed rings (VIRTIO 1.2 §2.8): LastAvail/LastUsed are ring positions, with these wrap counters.
    public bool Packed;
    public bool AvailWrap;
    public bool UsedWrap;

    /// <summary>last_avail as reported (packed: position | wrap counter in bit 15).</summary>
    public ushort AvailMark => Packed ? (ushort)(Volatile.Read(ref LastAvail) | (AvailWrap ? 0x8000 : 0)) : Volatile.Read(ref LastAvail);

    /// <summary>last_used as reported (packed: position | wrap counter in bit 15).</summary>
    public ushort UsedMark => Packed ? (ushort)(Volatile.Read(ref LastUsed) | (UsedWrap ? 0x8000 : 0)) : Volatile.Read(ref LastUsed);

    // Counters: written by the worker only (kicks by doorbell writers, atomically), read anywhere.
    public long Packets;
    public long Bytes;
    public long Kicks;
    public long Interrupts;
    public long Errors;
    public long Drops;

    public int AvailBytes => Packed ? PackedRing.EventSuppressionSize : SplitRing.AvailBytes(Size) - (EventIdx ? 0 : 2);

    public int UsedBytes => Packed ? PackedRing.EventSuppressionSize : SplitRing.UsedBytes(Size) - (EventIdx ? 0 : 2);

    public Pci.QueueCounters Counters => new(
        Volatile.Read(ref Packets), Volatile.Read(ref Bytes), Interlocked.Read(ref Kicks),
        Volatile.Read(ref Interrupts), Volatile.Read(ref Errors), Volatile.Read(ref Drops));

    /// <summary>Worker: takes the queue if it is running and not taken.</summary>
    public bool TryAcquire() => Interlocked.CompareExchange(ref State, Busy, Idle) == Idle;

    /// <summary>Worker: gives the queue back; completes a stop requested meanwhile.</summary>
    public void Release()
    {
        if (Interlocked.CompareExchange(ref State, Idle, Busy) != Busy)
        {
            Volatile.Write(ref State, Stopped);
        }
    }
}

/// <summary>The three ring areas of a queue, translated once per burst.</summary>
internal ref struct RingView
{
    public Span<byte> Desc;
    public Span<byte> Avail;
    public Span<byte> Used;

    public static bool TryCreate(IovaMap dma, Virtqueue q, out RingView view)
    {
        view = default;
        return dma.TryTranslate(q.Desc, (uint)SplitRing.DescTableBytes(q.Size), false, out view.Desc)
            && dma.TryTranslate(q.Avail, (uint)q.AvailBytes, false, out view.Avail)
            && dma.TryTranslate(q.Used, (uint)q.UsedBytes, true, out view.Used);
    }
}

/// <summary>Why a descriptor chain was refused (each a ring error: NEEDS_RESET).</summary>
internal enum ChainError
{
    None = 0,
    BadHead,
    BadNext,
    Loop,
    BadAddress,
    WritableInDriverBuffer,
    ReadOnlyInDeviceBuffer,
    IndirectNotNegotiated,
    NestedIndirect,
    IndirectWithNext,
    BadIndirectLength,
    LengthOverflow,
    TooLarge,
    TooManySegments,
    ReadAfterWrite,
}

internal static class ChainErrors
{
    public static string Describe(ChainError e) => e switch
    {
        ChainError.BadHead => "descriptor head index beyond the queue size",
        ChainError.BadNext => "descriptor next index beyond the table",
        ChainError.Loop => "descriptor chain longer than its table (loop)",
        ChainError.BadAddress => "descriptor buffer outside the DMA map (or not writable)",
        ChainError.WritableInDriverBuffer => "device-writable descriptor in a TX chain",
        ChainError.ReadOnlyInDeviceBuffer => "device-readable descriptor in an RX chain",
        ChainError.IndirectNotNegotiated => "INDIRECT descriptor without VIRTIO_F_RING_INDIRECT_DESC",
        ChainError.NestedIndirect => "INDIRECT descriptor inside an indirect table",
        ChainError.IndirectWithNext => "descriptor with both INDIRECT and NEXT",
        ChainError.BadIndirectLength => "indirect table length not a non-zero multiple of 16 (or too long)",
        ChainError.LengthOverflow => "descriptor chain length overflows 32 bits",
        ChainError.TooLarge => "TX chain larger than the largest frame (64 KiB + header)",
        ChainError.TooManySegments => "descriptor chain with more segments than the device handles",
        ChainError.ReadAfterWrite => "device-readable descriptor after a device-writable one",
        _ => "unknown ring error",
    };
}
