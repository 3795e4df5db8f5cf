using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The software dirty-log relay (DPDK's ifc "sw-live-migration"), for a device that cannot log the pages
/// it writes. While the front-end logs, each split ring runs on a mediated driver/device area pair in this
/// process's memory, DMA-mapped for the device at <see cref="IovaBase"/> + q·<see cref="IovaStride"/>; the
/// descriptor table and the buffers stay the guest's. One thread (an <see cref="EventFdFanIn"/> over the
/// guest's kicks and the device's interrupts) runs a round per signal:
/// <list type="number">
/// <item>avail: new guest avail entries are copied into the mediated avail ring (same slots, so ring
/// positions are the same on both sides), its idx published, the device kicked. With EVENT_IDX the guest's
/// avail_event asks for a kick at every buffer (the relay must see each one).</item>
/// <item>used: each new entry of the mediated used ring first has the pages of its buffer marked (the
/// writable descriptors of its chain, indirect tables too, up to the length the device wrote), then is
/// copied to the guest's used ring, whose pages are marked as well; then the guest's used idx is published
/// and the guest notified as its used_event / NO_INTERRUPT asks. The mediated used_event asks the device
/// for an interrupt at every used entry, so nothing waits in the mediated ring while the guest sleeps.</item>
/// </list>
/// The guest therefore never sees a used entry whose pages are not marked yet: marks always follow the
/// device's writes and precede the guest's reuse of the buffer. When a ring stops, a last round (on the
/// caller's thread, after the device stopped the queue) moves what the device published.
/// Packed rings are not relayed: the binding does not offer them to a front-end when it must relay.
/// </summary>
internal sealed class VringRelay : IDisposable
{
    /// <summary>Where the mediated rings are DMA-mapped for the device: above guest memory and the dirty-log slots.</summary>
    public const ulong IovaBase = 0x2000_0000_0000;

    /// <summary>IOVA space per ring: the avail and used areas of a 32768-entry ring fit.</summary>
    public const ulong IovaStride = 0x10_0000;

    private readonly IVdpaDevice _device;
    private readonly Action<string> _log;
    private readonly EventFdFanIn _fanIn;
    private readonly MediatedRing?[] _rings;
    private volatile GuestMemoryRegion[] _memory = [];
    private volatile DirtyLogRegion? _dirtyLog;
    private long _relayed;
    private int _badEntriesLogged;

    public VringRelay(IVdpaDevice device, int rings, string name, Action<string> log)
    {
        _device = device;
        _log = log;
        _rings = new MediatedRing?[rings];
        _fanIn = new EventFdFanIn($"vring-relay {name}", Round,
            (q, e) => log($"ring {q}: relay round failed: {e.Message}"),
            q => log($"ring {q}: a relayed eventfd broke; the ring is no longer relayed"),
            log);
    }

    /// <summary>Used entries moved to guest rings so far.</summary>
    public long Relayed => Interlocked.Read(ref _relayed);

    public bool IsRelayed(int q) => _rings[q] is not null;

    /// <summary>The log marks go to from now on, or none (returns once the relay thread uses it: the old one may then go).</summary>
    public void SetLog(DirtyLogRegion? log)
    {
        _dirtyLog = log;
        UpdateSet();
    }

    /// <summary>The guest memory the relay reads descriptor chains from (regions stay mapped while rings are relayed).</summary>
    public void SetMemory(IReadOnlyList<GuestMemoryRegion> regions) => _memory = [.. regions];

    /// <summary>
    /// Prepares ring <paramref name="q"/> (stopped in the device) for relaying: mediated areas initialised
    /// from the guest's (avail entries and idx, used idx) and DMA-mapped. Returns the device-side addresses
    /// and the eventfd the device's interrupt must signal. <see cref="Attach"/> then starts relaying.
    /// </summary>
    /// <remarks>
    /// <paramref name="fromZero"/>: the device starts the ring at position 0 (a plain virtio function after a
    /// reset, which cannot start a ring anywhere else): the mediated ring then runs <c>guest used idx</c>
    /// positions behind the guest's (<see cref="MediatedRing.Offset"/>), and the guest's outstanding avail
    /// entries are offered again from there. Otherwise both sides share positions.
    /// </remarks>
    public (ulong AvailIova, ulong UsedIova, EventFd Interrupt) Prepare(int q, Vring ring, (ulong Desc, ulong Avail, ulong Used) gpa, bool eventIdx, bool fromZero = false)
    {
        if (_rings[q] is not null)
        {
            throw new InvalidOperationException($"ring {q} is already relayed");
        }
        var m = new MediatedRing(q, ring, ring.Num, gpa, eventIdx);
        try
        {
            var regions = _memory;
            if (!TryGuest(regions, gpa.Avail, m.AvailBytes, out var gAvail) || !TryGuest(regions, gpa.Used, m.UsedBytes, out var gUsed))
            {
                throw new VhostUserRequestException($"ring {q}: rings outside guest memory, cannot relay");
            }
            var mAvail = m.Memory.Span(0, m.AvailBytes);
            ushort availIdx = SharedIndex.Load16(gAvail, SplitRing.AvailIdx);
            ushort usedIdx = SharedIndex.Load16(gUsed, SplitRing.UsedIdx);
            m.Offset = fromZero ? usedIdx : (ushort)0;
            int n = Math.Min((ushort)(availIdx - usedIdx), (int)m.Num);
            for (int i = 0; i < n; i++)
            {
                ushort at = (ushort)(usedIdx + i);
                BinaryPrimitives.WriteUInt16LittleEndian(mAvail[m.MediatedAvailSlot(at)..], BinaryPrimitives.ReadUInt16LittleEndian(gAvail[GuestSlot(at, m.Num)..]));
            }
            SharedIndex.Store16(mAvail, SplitRing.UsedEventOffset((int)m.Num), (ushort)(usedIdx - m.Offset));
            SharedIndex.Store16(mAvail, SplitRing.AvailIdx, (ushort)(availIdx - m.Offset));
            SharedIndex.Store16(m.Memory.Span(m.UsedOffset, m.UsedBytes), SplitRing.UsedIdx, (ushort)(usedIdx - m.Offset));
            m.AvailSynced = availIdx;
            m.UsedDrained = usedIdx;
            // The guest must kick for every buffer from now on: no NO_NOTIFY the device left, avail_event current.
            var log = _dirtyLog;
            SharedIndex.Store16(gUsed, SplitRing.UsedFlags, 0);
            log?.Mark(gpa.Used, 2);
            if (eventIdx)
            {
                SharedIndex.Store16(gUsed, SplitRing.AvailEventOffset((int)m.Num), availIdx);
                log?.Mark(gpa.Used + (ulong)SplitRing.AvailEventOffset((int)m.Num), 2);
            }
            _device.DmaMap(m.Iova, m.Memory.All, writable: true);
        }
        catch
        {
            m.Dispose();
            throw;
        }
        _rings[q] = m;
        return (m.Iova, m.Iova + m.UsedOffset, m.Interrupt);
    }

    /// <summary>Starts relaying prepared ring <paramref name="q"/> (the device runs it) and runs a first round.</summary>
    public void Attach(int q)
    {
        var m = _rings[q] ?? throw new InvalidOperationException($"ring {q} is not prepared");
        m.Attached = true;
        UpdateSet();
        m.Interrupt.Signal(); // a round at once: the guest may have added buffers since Prepare
        if (m.AvailSynced != m.UsedDrained)
        {
            _device.KickVq(q); // buffers outstanding at Prepare (offered again after a reset): the device looks now
        }
    }

    /// <summary>Stops relaying ring <paramref name="q"/> (returns once the relay thread no longer touches it).</summary>
    public void Detach(int q)
    {
        if (_rings[q] is { Attached: true } m)
        {
            m.Attached = false;
            UpdateSet();
        }
    }

    /// <summary>
    /// The last round for ring <paramref name="q"/>, once the device stopped the queue: every used entry it
    /// published reaches the guest (marked). The guest is notified when it asked.
    /// </summary>
    public void Drain(int q)
    {
        if (_rings[q] is { } m)
        {
            Detach(q);
            DrainUsed(m, _dirtyLog);
        }
    }

    /// <summary>Forgets ring <paramref name="q"/>: its mediated areas are unmapped from the device and freed; its interrupt eventfd is returned for the caller to close once the device can no longer signal it.</summary>
    public EventFd? Release(int q)
    {
        if (_rings[q] is not { } m)
        {
            return null;
        }
        Detach(q);
        _rings[q] = null;
        try
        {
            _device.DmaUnmap(m.Iova, m.Memory.Length);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            _log($"ring {q}: DMA unmap of the mediated ring at 0x{m.Iova:x} failed: {e.Message}");
        }
        m.Memory.Dispose(); // pinned while still mapped: then freed with the mapping
        return m.Interrupt;
    }

    private void UpdateSet()
    {
        var set = new List<(int, EventFd)>();
        foreach (var m in _rings)
        {
            if (m is { Attached: true })
            {
                set.Add((m.Q, m.Interrupt));
                if (m.Ring.Kick is { } kick)
                {
                    set.Add((m.Q, kick));
                }
            }
        }
        _fanIn.Update([.. set]);
    }

    /// <summary>One relay round for ring <paramref name="q"/>: the guest's new buffers to the device, the device's used entries to the guest.</summary>
    private void Round(int q)
    {
        if (_rings[q] is not { Attached: true } m)
        {
            return;
        }
        var log = _dirtyLog;
        if (SyncAvail(m, log))
        {
            _device.KickVq(q);
        }
        DrainUsed(m, log);
    }

    private bool SyncAvail(MediatedRing m, DirtyLogRegion? log)
    {
        if (!TryGuest(_memory, m.Gpa.Avail, m.AvailBytes, out var gAvail) || !TryGuest(_memory, m.Gpa.Used, m.UsedBytes, out var gUsed))
        {
            return false;
        }
        var mAvail = m.Memory.Span(0, m.AvailBytes);
        int num = (int)m.Num;
        bool any = false;
        while (true)
        {
            ushort idx = SharedIndex.Load16(gAvail, SplitRing.AvailIdx);
            int n = (ushort)(idx - m.AvailSynced);
            if (n != 0)
            {
                // More than a ring's worth is the guest's error: the device sees the same idx and flags it.
                for (int i = Math.Max(0, n - num); i < n; i++)
                {
                    ushort at = (ushort)(m.AvailSynced + i);
                    BinaryPrimitives.WriteUInt16LittleEndian(mAvail[m.MediatedAvailSlot(at)..], BinaryPrimitives.ReadUInt16LittleEndian(gAvail[GuestSlot(at, m.Num)..]));
                }
                SharedIndex.Store16(mAvail, SplitRing.AvailIdx, (ushort)(idx - m.Offset));
                m.AvailSynced = idx;
                any = true;
            }
            if (!m.EventIdx)
            {
                return any;
            }
            int ae = SplitRing.AvailEventOffset(num);
            if (SharedIndex.Load16(gUsed, ae) != idx)
            {
                SharedIndex.Store16(gUsed, ae, idx);
                log?.Mark(m.Gpa.Used + (ulong)ae, 2);
            }
            Interlocked.MemoryBarrier(); // the guest publishes idx, then reads avail_event: re-check after ours
            if (SharedIndex.Load16(gAvail, SplitRing.AvailIdx) == idx)
            {
                return any;
            }
        }
    }

    private void DrainUsed(MediatedRing m, DirtyLogRegion? log)
    {
        var regions = _memory;
        if (!TryGuest(regions, m.Gpa.Avail, m.AvailBytes, out var gAvail) || !TryGuest(regions, m.Gpa.Used, m.UsedBytes, out var gUsed))
        {
            return;
        }
        var mAvail = m.Memory.Span(0, m.AvailBytes);
        var mUsed = m.Memory.Span(m.UsedOffset, m.UsedBytes);
        int num = (int)m.Num;
        ushort old = m.UsedDrained;
        while (true)
        {
            ushort idx = (ushort)(SharedIndex.Load16(mUsed, SplitRing.UsedIdx) + m.Offset); // in the guest's positions
            int n = (ushort)(idx - m.UsedDrained);
            if (n > num)
            {
                LogBad($"ring {m.Q}: the device's used idx {idx} is {n} entries past {m.UsedDrained} (ring of {num}); not relayed");
                break;
            }
            for (int i = 0; i < n; i++)
            {
                int at = SplitRing.UsedRing + (SplitRing.UsedElemSize * ((m.UsedDrained + i) % num));
                var e = mUsed.Slice(SplitRing.UsedRing + (SplitRing.UsedElemSize * ((ushort)(m.UsedDrained + i - m.Offset) % num)), SplitRing.UsedElemSize);
                MarkBuffer(m, regions, log, BinaryPrimitives.ReadUInt32LittleEndian(e), BinaryPrimitives.ReadUInt32LittleEndian(e[4..]));
                e.CopyTo(gUsed[at..]);
                log?.Mark(m.Gpa.Used + (ulong)at, SplitRing.UsedElemSize);
            }
            if (n != 0)
            {
                SharedIndex.Store16(gUsed, SplitRing.UsedIdx, idx);
                log?.Mark(m.Gpa.Used + SplitRing.UsedIdx, 2);
                m.UsedDrained = idx;
                Interlocked.Add(ref _relayed, n);
            }
            SharedIndex.Store16(mAvail, SplitRing.UsedEventOffset(num), (ushort)(idx - m.Offset)); // an interrupt at the device's next entry
            Interlocked.MemoryBarrier();
            if ((ushort)(SharedIndex.Load16(mUsed, SplitRing.UsedIdx) + m.Offset) == idx)
            {
                break;
            }
        }
        if (m.UsedDrained != old && GuestWantsInterrupt(m, gAvail, old))
        {
            m.Ring.Call?.Signal();
        }
    }

    private static bool GuestWantsInterrupt(MediatedRing m, Span<byte> gAvail, ushort old) => m.EventIdx
        ? SplitRing.NeedEvent(SharedIndex.Load16(gAvail, SplitRing.UsedEventOffset((int)m.Num)), m.UsedDrained, old)
        : (SharedIndex.Load16(gAvail, SplitRing.AvailFlags) & SplitRing.VIRTQ_AVAIL_F_NO_INTERRUPT) == 0;

    /// <summary>
    /// Marks the pages the device wrote for used entry (<paramref name="id"/>, <paramref name="len"/>): the
    /// writable descriptors of the chain (direct or indirect), in order, up to <paramref name="len"/> bytes.
    /// The chain is read from guest memory; a malformed one is marked as far as it is valid.
    /// </summary>
    private void MarkBuffer(MediatedRing m, GuestMemoryRegion[] regions, DirtyLogRegion? log, uint id, uint len)
    {
        if (log is null || len == 0)
        {
            return;
        }
        if (id >= m.Num)
        {
            LogBad($"ring {m.Q}: the device used id {id} (ring of {m.Num}); its pages are not marked");
            return;
        }
        ulong left = len;
        uint i = id;
        for (int hops = 0; hops < m.Num && left > 0; hops++)
        {
            if (!TryGuest(regions, m.Gpa.Desc + (16UL * i), SplitRing.DescSize, out var d))
            {
                return;
            }
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(d);
            uint dlen = BinaryPrimitives.ReadUInt32LittleEndian(d[SplitRing.DescLen..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d[SplitRing.DescFlags..]);
            if ((flags & SplitRing.VIRTQ_DESC_F_INDIRECT) != 0)
            {
                MarkIndirect(regions, log, addr, dlen, ref left);
                return;
            }
            if ((flags & SplitRing.VIRTQ_DESC_F_WRITE) != 0)
            {
                ulong take = Math.Min(left, dlen);
                log.Mark(addr, take);
                left -= take;
            }
            if ((flags & SplitRing.VIRTQ_DESC_F_NEXT) == 0)
            {
                return;
            }
            i = BinaryPrimitives.ReadUInt16LittleEndian(d[SplitRing.DescNext..]);
            if (i >= m.Num)
            {
                return;
            }
        }
    }

    private static void MarkIndirect(GuestMemoryRegion[] regions, DirtyLogRegion log, ulong table, uint bytes, ref ulong left)
    {
        int count = (int)Math.Min(bytes / SplitRing.DescSize, (uint)SplitRing.MaxSize);
        if (count == 0 || !TryGuest(regions, table, count * SplitRing.DescSize, out var t))
        {
            return;
        }
        int i = 0;
        for (int hops = 0; hops < count && left > 0; hops++)
        {
            var d = t.Slice(i * SplitRing.DescSize, SplitRing.DescSize);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d[SplitRing.DescFlags..]);
            if ((flags & SplitRing.VIRTQ_DESC_F_WRITE) != 0)
            {
                ulong take = Math.Min(left, BinaryPrimitives.ReadUInt32LittleEndian(d[SplitRing.DescLen..]));
                log.Mark(BinaryPrimitives.ReadUInt64LittleEndian(d), take);
                left -= take;
            }
            if ((flags & SplitRing.VIRTQ_DESC_F_NEXT) == 0)
            {
                return;
            }
            i = BinaryPrimitives.ReadUInt16LittleEndian(d[SplitRing.DescNext..]);
            if (i >= count)
            {
                return;
            }
        }
    }

    /// <summary>Byte offset of guest ring position <paramref name="pos"/>'s avail entry.</summary>
    private static int GuestSlot(ushort pos, uint num) => SplitRing.AvailRing + (2 * (int)(pos % num));

    private void LogBad(string message)
    {
        if (Interlocked.Increment(ref _badEntriesLogged) <= 8)
        {
            _log(message);
        }
    }

    /// <summary>Guest-physical range -> a span of guest memory (the whole range in one region).</summary>
    private static bool TryGuest(GuestMemoryRegion[] regions, ulong gpa, int length, out Span<byte> span)
    {
        foreach (var r in regions)
        {
            if (gpa >= r.GuestPhysAddr && gpa - r.GuestPhysAddr < r.Size && (ulong)length <= r.Size - (gpa - r.GuestPhysAddr))
            {
                span = r.Span(gpa - r.GuestPhysAddr, length);
                return true;
            }
        }
        span = default;
        return false;
    }

    /// <summary>Stops the relay thread. Rings still prepared are released by the caller (<see cref="Release"/>).</summary>
    public void Dispose() => _fanIn.Dispose();

    /// <summary>One relayed ring: the guest's areas and the mediated ones the device uses instead.</summary>
    private sealed class MediatedRing : IDisposable
    {
        public MediatedRing(int q, Vring ring, uint num, (ulong Desc, ulong Avail, ulong Used) gpa, bool eventIdx)
        {
            Q = q;
            Ring = ring;
            Num = num;
            Gpa = gpa;
            EventIdx = eventIdx;
            AvailBytes = SplitRing.AvailBytes((int)num);
            UsedBytes = SplitRing.UsedBytes((int)num);
            UsedOffset = ((ulong)AvailBytes + 0xFFF) & ~0xFFFUL;
            Iova = IovaBase + ((ulong)q * IovaStride);
            Memory = MappedMemory.Allocate(UsedOffset + (((ulong)UsedBytes + 0xFFF) & ~0xFFFUL));
            Interrupt = EventFd.Create();
        }

        public int Q { get; }

        public Vring Ring { get; }

        public uint Num { get; }

        public (ulong Desc, ulong Avail, ulong Used) Gpa { get; }

        public bool EventIdx { get; }

        public int AvailBytes { get; }

        public int UsedBytes { get; }

        /// <summary>Mediated used area's offset in <see cref="Memory"/> (the avail area is at 0).</summary>
        public ulong UsedOffset { get; }

        public ulong Iova { get; }

        public MappedMemory Memory { get; }

        public EventFd Interrupt { get; }

        /// <summary>In the relay thread's set (only the control thread changes it, around a set update).</summary>
        public bool Attached { get; set; }

        /// <summary>Guest avail idx copied to the mediated ring so far.</summary>
        public ushort AvailSynced { get; set; }

        /// <summary>Mediated used entries copied to the guest so far, in the guest's positions (= the guest's used idx).</summary>
        public ushort UsedDrained { get; set; }

        /// <summary>Guest ring position minus the device's (0, or the guest's used idx when the device started the ring at 0).</summary>
        public ushort Offset { get; set; }

        /// <summary>Byte offset, in the mediated avail area, of the entry for guest ring position <paramref name="pos"/>.</summary>
        public int MediatedAvailSlot(ushort pos) => SplitRing.AvailRing + (2 * (int)((ushort)(pos - Offset) % Num));

        public void Dispose()
        {
            Memory.Dispose();
            Interrupt.Dispose();
        }
    }
}
