using System.Buffers.Binary;

namespace IfcVdpa.Virtio;

/// <summary>
/// vhost-user inflight I/O tracking for split rings (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD; vhost-user.rst
/// "Inflight I/O tracking"): a shared buffer the back-end creates (GET_INFLIGHT_FD) and the front-end keeps,
/// so a restarted back-end learns which requests it had taken from the avail ring but not yet completed.
/// One region per queue, each 64-byte aligned: a 16-byte header (u64 features, u16 version, u16 desc_num,
/// u16 last_batch_head, u16 used_idx) and desc_num 16-byte descriptor states (u8 inflight, 5 pad bytes,
/// u16 next, u64 counter). The back-end sets inflight (with a rising counter: submission order) when it
/// takes a head; when it completes a batch it links the batch through next (head last_batch_head), publishes
/// the used ring, then clears inflight and stores used_idx. If it dies between the used-index store and the
/// clears, used_idx differs from the ring's used index and the difference names the batch entries already
/// completed. The functions take one queue's region and treat it as hostile (a front-end wrote it last).
/// </summary>
public static class VhostInflight
{
    public const int HeaderSize = 16;
    public const int DescSize = 16;
    public const int Alignment = 64;
    public const ushort Version = 1;

    public const int FeaturesOff = 0;
    public const int VersionOff = 8;
    public const int DescNumOff = 10;
    public const int LastBatchHeadOff = 12;
    public const int UsedIdxOff = 14;

    private const int InflightOff = 0;
    private const int NextOff = 6;
    private const int CounterOff = 8;

    /// <summary>Bytes of one queue's region for a queue of <paramref name="queueSize"/> descriptors.</summary>
    public static ulong QueueRegionSize(int queueSize) =>
        ((ulong)HeaderSize + ((ulong)DescSize * (ulong)queueSize) + Alignment - 1) & ~(ulong)(Alignment - 1);

    /// <summary>Bytes of the whole buffer for <paramref name="queues"/> queues.</summary>
    public static ulong Size(int queues, int queueSize) => (ulong)queues * QueueRegionSize(queueSize);

    private static int Desc(int head) => HeaderSize + (head * DescSize);

    /// <summary>Whether the region was initialised by a back-end (version set).</summary>
    public static bool IsInitialised(ReadOnlySpan<byte> region) => BinaryPrimitives.ReadUInt16LittleEndian(region[VersionOff..]) != 0;

    /// <summary>A fresh region: version and desc_num set, every descriptor not in flight.</summary>
    public static void Init(Span<byte> region, int queueSize, ushort usedIdx)
    {
        region[..(int)QueueRegionSize(queueSize)].Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(region[DescNumOff..], (ushort)queueSize);
        BinaryPrimitives.WriteUInt16LittleEndian(region[UsedIdxOff..], usedIdx);
        BinaryPrimitives.WriteUInt16LittleEndian(region[VersionOff..], Version);
    }

    /// <summary>A head taken from the avail ring: its counter, then (ordered after it) the inflight flag.</summary>
    public static void Begin(Span<byte> region, ushort head, ulong counter)
    {
        int d = Desc(head);
        BinaryPrimitives.WriteUInt64LittleEndian(region[(d + CounterOff)..], counter);
        Volatile.Write(ref region[d + InflightOff], 1);
    }

    /// <summary>A head taken but given back to the avail ring (not executed): no longer in flight.</summary>
    public static void Abandon(Span<byte> region, ushort head) => Volatile.Write(ref region[Desc(head) + InflightOff], 0);

    /// <summary>Before the used index of a batch is published: the batch's heads linked through next, the last one in last_batch_head.</summary>
    public static void LinkBatch(Span<byte> region, ReadOnlySpan<ushort> heads)
    {
        if (heads.IsEmpty)
        {
            return;
        }
        for (int i = 1; i < heads.Length; i++)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(region[(Desc(heads[i]) + NextOff)..], heads[i - 1]);
        }
        Thread.MemoryBarrier();
        BinaryPrimitives.WriteUInt16LittleEndian(region[LastBatchHeadOff..], heads[^1]);
        Thread.MemoryBarrier();
    }

    /// <summary>After the used index is published: the batch's heads are no longer in flight, used_idx follows the ring.</summary>
    public static void CommitBatch(Span<byte> region, ReadOnlySpan<ushort> heads, ushort usedIdx)
    {
        foreach (ushort h in heads)
        {
            Volatile.Write(ref region[Desc(h) + InflightOff], 0);
        }
        Thread.MemoryBarrier();
        BinaryPrimitives.WriteUInt16LittleEndian(region[UsedIdxOff..], usedIdx);
    }

    /// <summary>
    /// At a back-end (re)start with the ring's used index <paramref name="ringUsedIdx"/>: initialises an unused
    /// region; otherwise checks it (desc_num equal to the queue size, last_batch_head and every walked next
    /// inside the queue, the batch no longer than the queue), clears the batch entries the used ring already
    /// holds (used_idx behind the ring), and writes the heads still in flight into <paramref name="heads"/> in
    /// submission (counter) order. Returns their number, or -1 with <paramref name="problem"/> when the region
    /// cannot be trusted (then it is re-initialised: nothing of it is used).
    /// </summary>
    public static int Recover(Span<byte> region, int queueSize, ushort ringUsedIdx, Span<ushort> heads, out ulong nextCounter, out string? problem)
    {
        problem = null;
        nextCounter = 1;
        if (region.Length < (int)QueueRegionSize(queueSize) || heads.Length < queueSize)
        {
            throw new ArgumentException("region or head buffer smaller than the queue needs");
        }
        if (!IsInitialised(region))
        {
            Init(region, queueSize, ringUsedIdx);
            return 0;
        }
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(region[VersionOff..]);
        ushort descNum = BinaryPrimitives.ReadUInt16LittleEndian(region[DescNumOff..]);
        if (version != Version || descNum != queueSize)
        {
            problem = $"inflight region version {version}, desc_num {descNum}; expected version {Version}, desc_num {queueSize}";
            Init(region, queueSize, ringUsedIdx);
            return -1;
        }
        ushort regionUsed = BinaryPrimitives.ReadUInt16LittleEndian(region[UsedIdxOff..]);
        int behind = (ushort)(ringUsedIdx - regionUsed);
        if (behind > queueSize)
        {
            problem = $"inflight used_idx {regionUsed} is {behind} behind the ring's used index {ringUsedIdx} (queue of {queueSize})";
            Init(region, queueSize, ringUsedIdx);
            return -1;
        }
        ushort h = BinaryPrimitives.ReadUInt16LittleEndian(region[LastBatchHeadOff..]);
        for (int i = 0; i < behind; i++)
        {
            if (h >= queueSize)
            {
                problem = $"inflight batch list leaves the queue (head {h} of {queueSize})";
                Init(region, queueSize, ringUsedIdx);
                return -1;
            }
            region[Desc(h) + InflightOff] = 0;
            h = BinaryPrimitives.ReadUInt16LittleEndian(region[(Desc(h) + NextOff)..]);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(region[UsedIdxOff..], ringUsedIdx);
        int n = 0;
        Span<ulong> counters = queueSize <= 1024 ? stackalloc ulong[queueSize] : new ulong[queueSize];
        for (int head = 0; head < queueSize; head++)
        {
            byte flag = region[Desc(head) + InflightOff];
            if (flag > 1)
            {
                problem = $"inflight flag {flag} at descriptor {head}";
                Init(region, queueSize, ringUsedIdx);
                return -1;
            }
            ulong c = BinaryPrimitives.ReadUInt64LittleEndian(region[(Desc(head) + CounterOff)..]);
            nextCounter = Math.Max(nextCounter, c == ulong.MaxValue ? c : c + 1);
            if (flag == 1)
            {
                heads[n] = (ushort)head;
                counters[n] = c;
                n++;
            }
        }
        counters[..n].Sort(heads[..n]);
        return n;
    }

    /// <summary>The inflight flag of <paramref name="head"/> (tests, diagnostics).</summary>
    public static bool InFlight(ReadOnlySpan<byte> region, ushort head) => region[Desc(head) + InflightOff] != 0;

    /// <summary>The used_idx the region holds.</summary>
    public static ushort UsedIdx(ReadOnlySpan<byte> region) => BinaryPrimitives.ReadUInt16LittleEndian(region[UsedIdxOff..]);
}
