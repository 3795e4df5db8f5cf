using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// One virtqueue (split or packed) as the engine runs it: ring addresses, the device's private ring state
/// and counters. Ownership: the control path writes the fields while <see cref="State"/> is Stopped; the
/// worker owns them while it holds the queue Busy.
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

    // Ring state. Split: free-running indices, wrap counters unused. Packed (VIRTIO 1.2 §2.8): ring
    // positions (0..Size-1) with their wrap counters.
    public ushort LastAvail;
    public bool AvailWrap;
    public ushort LastUsed;
    public bool UsedWrap;

    /// <summary>
    /// Packed: used descriptors written in this burst whose flags are not stored yet (ring slot and flags);
    /// <see cref="UsedRing.Publish"/> stores them, the burst's first one last, so the driver sees the whole
    /// burst at once and the descriptor lines change hands once per burst, not once per chain.
    /// </summary>
    public ushort[] PendingSlot = [];

    /// <summary>The ring areas' last translations (<see cref="RingView.TryCreate"/>: once per map change, not per burst).</summary>
    public TranslationCache DescMap;
    public TranslationCache AvailMap;
    public TranslationCache UsedMap;

    public ushort[] PendingFlags = [];
    public int PendingCount;

    /// <summary>Split: the driver's avail idx as last read (entries up to it may be taken without a reload).</summary>
    public ushort AvailIdxCache;
    public bool Packed;
    public bool EventIdx;
    public bool Indirect;
    public bool Failed;
    public bool ErrorLogged;
    /// <summary>A fault found when the queue started (reported by the worker, which may raise NEEDS_RESET).</summary>
    public string? StartFault;
    public bool SuppressKicks;

    // Counters: written by the worker only (kicks by doorbell writers, atomically), read anywhere.
    public long Packets;
    public long Bytes;
    public long Kicks;
    public long Interrupts;
    public long Errors;
    public long Drops;
    public long DirtyPages;

    /// <summary>The ring state as the control path reports it.</summary>
    public RingIndices Indices => new(Volatile.Read(ref LastAvail), Volatile.Read(ref AvailWrap), Volatile.Read(ref LastUsed), Volatile.Read(ref UsedWrap));

    /// <summary>Where the used side stands (to tell whether a burst completed anything).</summary>
    public UsedMark UsedMark => new(LastUsed, UsedWrap);

    public int AvailBytes => Packed ? PackedRing.EventSuppressionSize : SplitRing.AvailBytes(Size) - (EventIdx ? 0 : 2);

    public int UsedBytes => Packed ? PackedRing.EventSuppressionSize : SplitRing.UsedBytes(Size) - (EventIdx ? 0 : 2);

    public Pci.QueueCounters Counters => new(
        Volatile.Read(ref Packets), Volatile.Read(ref Bytes), Interlocked.Read(ref Kicks),
        Volatile.Read(ref Interrupts), Volatile.Read(ref Errors), Volatile.Read(ref Drops))
    {
        DirtyPages = Volatile.Read(ref DirtyPages),
    };

    /// <summary>Control path: loads the ring layout and state for a start.</summary>
    public void Configure(in QueueStart start, bool suppressKicks)
    {
        Size = start.Size;
        Mask = (ushort)(start.Size - 1);
        Desc = start.Desc;
        Avail = start.Avail;
        Used = start.Used;
        Packed = VirtioFeature.Has(start.Features, VirtioFeature.F_RING_PACKED);
        LastAvail = start.Base.LastAvail;
        LastUsed = start.Base.LastUsed;
        AvailWrap = Packed && start.Base.AvailWrap;
        UsedWrap = Packed && start.Base.UsedWrap;
        AvailIdxCache = LastAvail;
        PendingCount = 0;
        if (Packed && PendingSlot.Length != Size)
        {
            PendingSlot = new ushort[Size];
            PendingFlags = new ushort[Size];
        }
        EventIdx = VirtioFeature.Has(start.Features, VirtioFeature.F_RING_EVENT_IDX);
        Indirect = VirtioFeature.Has(start.Features, VirtioFeature.F_RING_INDIRECT_DESC);
        SuppressKicks = suppressKicks;
        Failed = false;
        ErrorLogged = false;
        StartFault = null;
        if (Packed && (LastAvail >= Size || LastUsed >= Size))
        {
            // A packed ring's base is a position inside the ring. A front-end can send SET_VRING_BASE before
            // a smaller SET_VRING_NUM, so this is the first place both are known: refuse to run the ring.
            Failed = true;
            StartFault = $"packed ring base (avail {LastAvail}, used {LastUsed}) outside the {Size}-entry ring";
        }
    }

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

/// <summary>The used side's position (split: index; packed: position and wrap counter).</summary>
internal readonly record struct UsedMark(ushort Index, bool Wrap);

/// <summary>The three ring areas of a queue, translated once per burst (packed: Desc is the ring, Avail/Used the event areas).</summary>
internal ref struct RingView
{
    public Span<byte> Desc;
    public Span<byte> Avail;
    public Span<byte> Used;

    public static bool TryCreate(IovaMap dma, Virtqueue q, out RingView view)
    {
        view = default;
        return dma.TryTranslateCached(ref q.DescMap, q.Desc, (uint)SplitRing.DescTableBytes(q.Size), false, out view.Desc)
            && dma.TryTranslateCached(ref q.AvailMap, q.Avail, (uint)q.AvailBytes, false, out view.Avail)
            && dma.TryTranslateCached(ref q.UsedMap, q.Used, (uint)q.UsedBytes, true, out view.Used);
    }
}
