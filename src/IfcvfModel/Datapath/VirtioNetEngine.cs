using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.IfcvfModel.Datapath;

// ================================================================================================
// The software IFC VF's datapath: a virtio-net device engine behind SoftIfcVf's register file.
//
//   var backend = NetBackend.Loopback();              // or Tap("tap0"), Pcap("x.pcap"), Parse("tap:x")
//   using var engine = new VirtioNetEngine(backend, new EngineOptions { Mode = EngineMode.Poll, CpuAffinity = 1 });
//   vf.AttachEngine(engine);                           // while the VF is reset
//   ... the driver brings the VF up (IfcvfHw.StartHw), packets flow, interrupts go to its MSI-X sinks ...
//   var c = vf.GetQueueCounters(1);                    // packets, bytes, kicks, interrupts, errors, drops
//
//   var (a, b) = NetBackend.Pair();                    // two VFs back to back: one engine on each side
//
// Modes: Poll (a dedicated worker spins over the queues), Event (doorbells wake the worker, it sleeps when
// idle), Manual (no thread: the caller runs PollOnce(), for tests and benchmarks).
//
// Queues: RX = 2k, TX = 2k+1, control = last (with VIRTIO_NET_F_CTRL_VQ). Split rings per VIRTIO 1.2
// §2.7 (NEXT/WRITE/INDIRECT, free-running indices, EVENT_IDX, NO_NOTIFY/NO_INTERRUPT), in order
// (IN_ORDER is satisfied: chains complete in avail order). A TX chain is gathered into one staging
// buffer (header + frame), then handed to the backend; loopback scatters it straight into the RX
// chain(s) of the same pair (MRG_RXBUF: several chains, num_buffers set). Used entries are written as
// packets complete; the used index, avail_event and the interrupt are published once per burst.
//
// Packed rings (VIRTIO_F_RING_PACKED, when the VF offers it: SoftIfcVfOptions.DeviceFeatures) are handled
// in VirtioNetEngine.Packed.cs; their ring state uses the vhost-user encoding (bits 0-14 position, bit 15
// wrap counter; a fresh ring is 0x8000). RX without buffers (or, without MRG_RXBUF, with a chain too
// small) drops the frame and counts it, consuming nothing. While the driver has dirty logging on (BAR4
// LM block), pages of RX buffers the device wrote are marked in the bitmap (the driver marks used rings).
// Loopback costs two copies per packet (TX gather into staging, scatter into RX); see bench/Micro.
//
// Concurrency: one worker per engine (= per VF). Each queue has a state word (Stopped/Idle/Busy/
// StopRequested); StopQueue waits until the worker is out of the queue, so afterwards the rings are
// never touched and (last_avail, last_used) are exact. The worker never blocks on the register lock
// (it only tries it, giving up if its queue is being stopped), so the control path can wait for it.
// A malformed ring stops the queue, is counted and logged once, and raises NEEDS_RESET.
// ================================================================================================

/// <summary>How the engine's worker runs.</summary>
public enum EngineMode
{
    /// <summary>A dedicated worker spins over the queues (like a NIC's engine).</summary>
    Poll,

    /// <summary>Doorbells (and a pair peer, and a TAP) wake the worker; it sleeps when idle.</summary>
    Event,

    /// <summary>No worker: the owner calls <see cref="VirtioNetEngine.PollOnce"/> (tests, benchmarks).</summary>
    Manual,
}

/// <summary>Options of a <see cref="VirtioNetEngine"/>.</summary>
public sealed record EngineOptions
{
    public EngineMode Mode { get; init; } = EngineMode.Event;

    /// <summary>Pins the worker to this CPU (sched_setaffinity), if set.</summary>
    public int? CpuAffinity { get; init; }

    /// <summary>Most chains handled per queue per round (one used-index publication per burst).</summary>
    public int Burst { get; init; } = 64;

    /// <summary>Where ring errors and worker problems are logged (default: standard error).</summary>
    public Action<string>? Log { get; init; }
}

/// <summary>The virtio-net datapath of one software IFC VF. See the file header for the API.</summary>
public sealed partial class VirtioNetEngine : IVirtqueueEngine, IQueueStatsSource, IDisposable
{
    /// <summary>Largest frame a TX chain may carry, after the 12-byte header (64 KiB, as with GSO).</summary>
    public const int MaxFrame = 65536;

    /// <summary>Most data segments in one packet (one chain for TX, all chains of an RX packet): Linux's UIO_MAXIOV.</summary>
    public const int MaxSegments = 1024;

    private const int Hdr = VirtioNetHeader.Size;

    private readonly NetBackend _backend;
    private readonly EngineOptions _options;
    private readonly Action<string> _log;
    private readonly byte[] _stage = new byte[Hdr + MaxFrame];
    private readonly byte[] _tapIn = new byte[Hdr + MaxFrame];
    private readonly byte[] _ctrlIn = new byte[4096];
    private readonly ulong[] _segAddr = new ulong[MaxSegments];
    private readonly uint[] _segLen = new uint[MaxSegments];
    private readonly ushort[] _chainHead = new ushort[MaxSegments];
    private readonly int[] _chainSegEnd = new int[MaxSegments];
    private readonly int[] _chainCount = new int[MaxSegments];
    private readonly byte[] _mac = new byte[6];
    private readonly EventFd _wake;
    private readonly int _burst;
    private SoftIfcVf? _device;
    private IovaMap? _dma;
    private Virtqueue?[] _queues = [];
    private int _pairs;
    private int _ctrl = -1;
    private int _activePairs = 1;
    private volatile bool _tapDead;
    private int _startFaults;
    private ulong _features;
    private bool _guestCsum;
    private bool _guestTso;
    private Thread? _worker;
    private volatile bool _stopping;
    private int _sleeping;
    private int _workerThreadId = -1;
    private long _inboundDrops;
    private bool _disposed;

    public VirtioNetEngine(NetBackend backend, EngineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (backend.Owner is not null)
        {
            throw new ArgumentException("this backend already serves an engine", nameof(backend));
        }
        _backend = backend;
        _options = options ?? new EngineOptions();
        if (_options.Burst is < 1 or > 4096)
        {
            throw new ArgumentException("burst must be 1..4096");
        }
        _burst = _options.Burst;
        _log = _options.Log ?? (s => Console.Error.WriteLine(s));
        _wake = EventFd.Create(nonBlocking: true);
        backend.Owner = this;
    }

    public NetBackend Backend => _backend;

    public EngineMode Mode => _options.Mode;

    /// <summary>Queue pairs the driver activated (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; 1 until then).</summary>
    public int ActivePairs => Volatile.Read(ref _activePairs);

    /// <summary>Frames from a pair peer or TAP dropped because no RX queue was running.</summary>
    public long InboundDrops => Volatile.Read(ref _inboundDrops);

    // ---- IVirtqueueEngine (control path, register lock held) ----------------------------------

    public void StartQueue(SoftIfcVf device, in QueueStart start)
    {
        ArgumentNullException.ThrowIfNull(device);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_device is null)
        {
            _device = device;
            _dma = device.Dma;
            _queues = new Virtqueue?[device.NumQueues];
            _pairs = device.Options.QueuePairs;
            _ctrl = device.Options.ControlQueue ? device.NumQueues - 1 : -1;
        }
        else if (!ReferenceEquals(_device, device))
        {
            throw new InvalidOperationException("one VirtioNetEngine serves one device");
        }
        var q = _queues[start.Queue] ??= new Virtqueue(start.Queue);
        if (Volatile.Read(ref q.State) != Virtqueue.Stopped)
        {
            throw new InvalidOperationException($"queue {start.Queue} started twice");
        }
        if (AllStopped())
        {
            // First queue of a (re)started device: take the features, MAC and link as they are now.
            _features = start.Features;
            _guestCsum = VirtioFeature.Has(_features, VirtioFeature.NET_F_GUEST_CSUM);
            _guestTso = VirtioFeature.Has(_features, VirtioFeature.NET_F_GUEST_TSO4) || VirtioFeature.Has(_features, VirtioFeature.NET_F_GUEST_TSO6);
            device.Mac.CopyTo(_mac, 0);
            Volatile.Write(ref _activePairs, 1);
            device.SetLinkUp(_backend.LinkUp);
        }
        q.Size = start.Size;
        q.Mask = (ushort)(start.Size - 1);
        q.Desc = start.Desc;
        q.Avail = start.Avail;
        q.Used = start.Used;
        q.Packed = VirtioFeature.Has(start.Features, VirtioFeature.F_RING_PACKED);
        if (q.Packed)
        {
            // vhost-user encoding: bits 0-14 the ring position, bit 15 the wrap counter (fresh ring: 0x8000).
            q.LastAvail = (ushort)(start.LastAvail & 0x7FFF);
            q.AvailWrap = (start.LastAvail & 0x8000) != 0;
            q.LastUsed = (ushort)(start.LastUsed & 0x7FFF);
            q.UsedWrap = (start.LastUsed & 0x8000) != 0;
        }
        else
        {
            q.LastAvail = start.LastAvail;
            q.LastUsed = start.LastUsed;
        }
        q.AvailIdxCache = q.LastAvail;
        q.EventIdx = VirtioFeature.Has(start.Features, VirtioFeature.F_RING_EVENT_IDX);
        q.Indirect = VirtioFeature.Has(start.Features, VirtioFeature.F_RING_INDIRECT_DESC);
        q.Mergeable = VirtioFeature.Has(start.Features, VirtioFeature.NET_F_MRG_RXBUF);
        q.SuppressKicks = _options.Mode == EngineMode.Poll;
        q.Failed = false;
        q.ErrorLogged = false;
        if (q.Packed && (q.LastAvail >= q.Size || q.LastUsed >= q.Size))
        {
            // A packed ring's base is a position inside the ring. A front-end can send SET_VRING_BASE before
            // a smaller SET_VRING_NUM, so this is the first place both are known: refuse to run the ring.
            q.Failed = true;
            q.StartFault = $"packed ring base (avail {q.LastAvail}, used {q.LastUsed}) outside the {q.Size}-entry ring";
            Volatile.Write(ref _startFaults, 1);
        }
        Volatile.Write(ref q.State, Virtqueue.Idle);
        EnsureWorker();
        Wake();
    }

    public RingIndices StopQueue(int queue)
    {
        var q = (uint)queue < (uint)_queues.Length ? _queues[queue] : null;
        if (q is null)
        {
            return default;
        }
        var spin = default(SpinWait);
        while (true)
        {
            int s = Volatile.Read(ref q.State);
            if (s == Virtqueue.Stopped)
            {
                break;
            }
            if (s == Virtqueue.Idle)
            {
                if (Interlocked.CompareExchange(ref q.State, Virtqueue.Stopped, Virtqueue.Idle) == Virtqueue.Idle)
                {
                    break;
                }
                continue;
            }
            if (s == Virtqueue.Busy)
            {
                Interlocked.CompareExchange(ref q.State, Virtqueue.StopRequested, Virtqueue.Busy);
                continue;
            }
            if (Environment.CurrentManagedThreadId == Volatile.Read(ref _workerThreadId))
            {
                break; // the worker itself (a ring error raising NEEDS_RESET): it leaves the queue on return
            }
            spin.SpinOnce(sleep1Threshold: -1);
        }
        return new RingIndices(q.AvailMark, q.UsedMark);
    }

    public RingIndices PeekQueue(int queue)
    {
        var q = (uint)queue < (uint)_queues.Length ? _queues[queue] : null;
        return q is null ? default : new RingIndices(q.AvailMark, q.UsedMark);
    }

    public void Notify(int queue)
    {
        var q = (uint)queue < (uint)_queues.Length ? _queues[queue] : null;
        if (q is not null)
        {
            Interlocked.Increment(ref q.Kicks);
        }
        Wake();
    }

    public QueueCounters GetQueueCounters(int queue)
    {
        var q = (uint)queue < (uint)_queues.Length ? _queues[queue] : null;
        return q?.Counters ?? default;
    }

    /// <summary>Wakes a sleeping event-mode worker (doorbells, a pair peer that queued frames).</summary>
    public void Wake()
    {
        Interlocked.MemoryBarrier(); // the ring update before the kick vs. the worker's "sleeping" flag
        if (Volatile.Read(ref _sleeping) != 0)
        {
            _wake.Signal();
        }
    }

    private bool AllStopped()
    {
        foreach (var q in _queues)
        {
            if (q is not null && Volatile.Read(ref q.State) != Virtqueue.Stopped)
            {
                return false;
            }
        }
        return true;
    }

    // ---- worker -------------------------------------------------------------------------------

    private void EnsureWorker()
    {
        if (_worker is not null || _options.Mode == EngineMode.Manual)
        {
            return;
        }
        _worker = new Thread(WorkerMain) { IsBackground = true, Name = $"vq-{_device?.Address}" };
        _worker.Start();
    }

    private void WorkerMain()
    {
        if (_options.CpuAffinity is int cpu && !CpuAffinity.PinCurrentThread(cpu))
        {
            _log($"{_device?.Address}: could not pin the datapath worker to CPU {cpu} (errno {Errno.Last})");
        }
        int tapFd = _backend.TapDevice?.Fd ?? -1;
        int idleRounds = 0;
        while (!_stopping)
        {
            int work;
            try
            {
                work = PollOnce();
            }
#pragma warning disable CA1031 // the worker must survive anything and report it: it serves a device
            catch (Exception ex)
#pragma warning restore CA1031
            {
                _log($"{_device?.Address}: datapath worker error: {ex}");
                Thread.Sleep(100);
                continue;
            }
            if (work > 0)
            {
                idleRounds = 0;
                continue;
            }
            idleRounds++;
            if (_options.Mode == EngineMode.Poll && AnyRunning())
            {
                if (idleRounds > 64)
                {
                    _backend.PcapWriter?.Flush();
                    Thread.Yield(); // share the core on a busy machine; a pinned core stays hot anyway
                }
                continue;
            }
            // Event mode (or nothing running): announce sleep, re-check, then wait for a doorbell.
            Interlocked.Exchange(ref _sleeping, 1);
            if (!_stopping && PollOnce() == 0)
            {
                _backend.PcapWriter?.Flush();
                Poll.WaitEither(_wake.Fd, _tapDead ? -1 : tapFd, AnyRunning() ? 50 : 200);
                _wake.TryConsume(out _);
            }
            Volatile.Write(ref _sleeping, 0);
        }
    }

    private bool AnyRunning()
    {
        foreach (var q in _queues)
        {
            if (q is not null && Volatile.Read(ref q.State) != Virtqueue.Stopped && !q.Failed)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// One round over every queue: TX bursts, frames from the backend, the control queue. Returns the
    /// number of chains and frames handled. Called by the worker, or by the owner in Manual mode (one
    /// thread at a time).
    /// </summary>
    public int PollOnce()
    {
        var dev = _device;
        if (dev is null)
        {
            return 0;
        }
        _workerThreadId = Environment.CurrentManagedThreadId;
        int work = 0;
        var queues = _queues;
        if (Interlocked.Exchange(ref _startFaults, 0) != 0)
        {
            ReportStartFaults(dev, queues);
        }
        for (int p = 0; p < _pairs; p++)
        {
            var tx = queues[(2 * p) + 1];
            if (tx is not null)
            {
                work += ProcessTx(dev, tx);
            }
        }
        switch (_backend.Kind)
        {
            case NetBackendKind.Pair:
                work += ProcessPairInbound(dev);
                break;
            case NetBackendKind.Tap when !_tapDead:
                work += ProcessTapInbound(dev);
                break;
        }
        if (_ctrl >= 0 && queues[_ctrl] is { } ctrl)
        {
            work += ProcessCtrl(dev, ctrl);
        }
        return work;
    }

    // ---- TX -----------------------------------------------------------------------------------

    private int ProcessTx(SoftIfcVf dev, Virtqueue q)
    {
        if (!q.TryAcquire())
        {
            return 0;
        }
        try
        {
            if (q.Failed)
            {
                return 0;
            }
            if (!RingView.TryCreate(_dma!, q, out var tv))
            {
                Fail(dev, q, "ring areas outside the DMA map");
                return 0;
            }
            return TxBurst(dev, q, ref tv);
        }
        finally
        {
            q.Release(); // also if a bug throws: a queue left Busy would hang StopQueue
        }
    }

    private int TxBurst(SoftIfcVf dev, Virtqueue q, scoped ref RingView tv)
    {
        if (q.Packed)
        {
            return TxBurstPacked(dev, q, ref tv);
        }
        ushort availIdx = SharedIndex.Load16(tv.Avail, AvailIdx);
        ushort pending = (ushort)(availIdx - q.LastAvail);
        if (pending == 0)
        {
            return 0;
        }
        if (pending > q.Size)
        {
            Fail(dev, q, $"avail idx {availIdx} is {pending} entries ahead of last_avail {q.LastAvail} (queue size {q.Size})");
            return 0;
        }
        int burst = Math.Min(pending, _burst);
        ushort oldUsed = q.UsedMark;

        // Loopback: the same pair's RX queue, owned for the whole burst.
        Virtqueue? rx = null;
        var rv = default(RingView);
        ushort rxOldUsed = 0;
        if (_backend.Kind == NetBackendKind.Loopback)
        {
            var cand = _queues[q.Index - 1];
            if (cand is not null && cand.TryAcquire())
            {
                rx = cand;
                rxOldUsed = rx.UsedMark;
                if (!rx.Failed && !RingView.TryCreate(_dma!, rx, out rv))
                {
                    Fail(dev, rx, "ring areas outside the DMA map");
                }
            }
        }
        bool wakePeer = false;
        int i = 0;
        try
        {
            for (; i < burst; i++)
            {
                ushort head = BinaryPrimitives.ReadUInt16LittleEndian(tv.Avail[(AvailRing + (2 * (q.LastAvail & q.Mask)))..]);
                int len = GatherTx(q, tv.Desc, head, out var err);
                if (err != ChainError.None)
                {
                    Fail(dev, q, ChainErrors.Describe(err));
                    break;
                }
                q.LastAvail++;
                PutUsed(tv.Used, q, head, 0);
                TransmitGathered(dev, q, rx, ref rv, len, ref wakePeer);
            }
            if (q.UsedMark != oldUsed || q.EventIdx)
            {
                Publish(dev, q, ref tv, oldUsed);
            }
            if (rx is not null && rx.UsedMark != rxOldUsed)
            {
                Publish(dev, rx, ref rv, rxOldUsed);
            }
        }
        finally
        {
            rx?.Release();
        }
        if (wakePeer)
        {
            _backend.Peer!.Owner?.Wake();
        }
        return i;
    }

    /// <summary>Counts the frame gathered into the staging buffer and hands it over (split and packed TX).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void TransmitGathered(SoftIfcVf dev, Virtqueue q, Virtqueue? rx, scoped ref RingView rv, int len, ref bool wakePeer)
    {
        if (len < Hdr)
        {
            q.Errors++; // shorter than the virtio-net header: nothing to send
            q.Drops++;
            return;
        }
        q.Packets++;
        q.Bytes += len - Hdr;
        Transmit(dev, q, rx, ref rv, _stage.AsSpan(0, len), ref wakePeer);
    }

    /// <summary>Hands one TX frame (header + data) to the backend.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Transmit(SoftIfcVf dev, Virtqueue q, Virtqueue? rx, scoped ref RingView rv, Span<byte> frame, ref bool wakePeer)
    {
        switch (_backend.Kind)
        {
            case NetBackendKind.Loopback:
                if (rx is null || rx.Failed || (_backend.FilterDestinationMac && !ForUs(frame)))
                {
                    DropOn(rx ?? q);
                }
                else
                {
                    DeliverRx(dev, rx, ref rv, frame);
                }
                break;
            case NetBackendKind.Pair:
                if (_backend.Peer!.Owner is null || !_backend.Outbound!.TryPush(frame, (q.Index - 1) / 2))
                {
                    q.Drops++;
                }
                wakePeer = true;
                break;
            case NetBackendKind.Tap:
                if (!_backend.TapDevice!.Write(frame))
                {
                    q.Drops++;
                }
                break;
            case NetBackendKind.Pcap:
                _backend.PcapWriter!.Write(frame[Hdr..]);
                break;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void DropOn(Virtqueue q) => q.Drops++;

    private bool ForUs(ReadOnlySpan<byte> frame)
    {
        if (frame.Length < Hdr + 6)
        {
            return false;
        }
        var dst = frame.Slice(Hdr, 6);
        return (dst[0] & 1) != 0 || dst.SequenceEqual(_mac);
    }

    /// <summary>Walks a TX chain, copying its readable buffers into the staging buffer. Returns the length.</summary>
    private int GatherTx(Virtqueue q, Span<byte> desc, ushort head, out ChainError err)
    {
        var gather = new TxGather(_dma!, _stage);
        err = SplitChain.Walk(q, _dma!, desc, head, ref gather);
        return err == ChainError.None ? gather.Total : 0;
    }

    /// <summary>A TX chain's buffers: device-readable only, copied one after another into the staging buffer.</summary>
    private struct TxGather(IovaMap dma, byte[] stage) : IChainVisitor
    {
        public int Total;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public ChainError Visit(ulong addr, uint len, bool writable)
        {
            if (writable)
            {
                return ChainError.WritableInDriverBuffer;
            }
            if (len == 0)
            {
                return ChainError.None;
            }
            if (len > (uint)(stage.Length - Total))
            {
                return ChainError.TooLarge;
            }
            if (!dma.TryTranslate(addr, len, false, out var src))
            {
                return ChainError.BadAddress;
            }
            src.CopyTo(stage.AsSpan(Total));
            Total += (int)len;
            return ChainError.None;
        }
    }

    /// <summary>
    /// Walks a chain collecting its device-writable buffers into the segment list from <paramref name="segs"/>
    /// on (validated: mapped and writable). With <paramref name="readable"/> (control queue), the readable
    /// buffers first are copied into it and their length returned in <paramref name="readLen"/>.
    /// Returns the writable capacity.
    /// </summary>
    private long CollectWritable(Virtqueue q, Span<byte> desc, ushort head, ref int segs, Span<byte> readable, out int readLen, out ChainError err)
    {
        var collect = new WritableCollector(_dma!, _segAddr, _segLen, segs, readable);
        err = SplitChain.Walk(q, _dma!, desc, head, ref collect);
        readLen = err == ChainError.None ? collect.ReadLen : 0;
        if (err != ChainError.None)
        {
            return 0;
        }
        segs = collect.Segs;
        return collect.Capacity;
    }

    /// <summary>
    /// An RX (or control) chain's buffers: device-writable ones become segments (mapped and writable); readable
    /// ones are allowed only first and only when <c>readable</c> is given (the control queue's command).
    /// </summary>
    private ref struct WritableCollector(IovaMap dma, ulong[] segAddr, uint[] segLen, int segs, Span<byte> readable) : IChainVisitor
    {
        private readonly Span<byte> _readable = readable;
        private bool _sawWritable;
        public int Segs = segs;
        public long Capacity;
        public int ReadLen;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public ChainError Visit(ulong addr, uint len, bool writable)
        {
            if (len > int.MaxValue)
            {
                return ChainError.LengthOverflow; // no single buffer of 2 GiB or more (spans are int-sized)
            }
            if (writable)
            {
                _sawWritable = true;
                if (len == 0)
                {
                    return ChainError.None;
                }
                if (Segs >= MaxSegments)
                {
                    return ChainError.TooManySegments;
                }
                if (!dma.TryTranslate(addr, len, true, out _))
                {
                    return ChainError.BadAddress;
                }
                segAddr[Segs] = addr;
                segLen[Segs] = len;
                Segs++;
                Capacity += len;
                return Capacity > uint.MaxValue ? ChainError.LengthOverflow : ChainError.None;
            }
            if (_readable.IsEmpty)
            {
                return ChainError.ReadOnlyInDeviceBuffer;
            }
            if (_sawWritable)
            {
                return ChainError.ReadAfterWrite;
            }
            if (len == 0)
            {
                return ChainError.None;
            }
            if (!dma.TryTranslate(addr, len, false, out var src))
            {
                return ChainError.BadAddress;
            }
            if ((ulong)ReadLen + len > uint.MaxValue)
            {
                return ChainError.LengthOverflow;
            }
            int room = Math.Max(0, _readable.Length - ReadLen);
            int take = (int)Math.Min(len, (uint)room);
            src[..take].CopyTo(_readable[ReadLen..]);
            ReadLen = (int)Math.Min((long)ReadLen + len, int.MaxValue);
            return ChainError.None;
        }
    }

    // ---- RX -----------------------------------------------------------------------------------

    /// <summary>
    /// Places one frame (12-byte header + data; the header is rewritten) in the RX queue: one chain, or
    /// several with MRG_RXBUF. No buffers (or too small without MRG_RXBUF): dropped, counted, nothing consumed.
    /// </summary>
    private bool DeliverRx(SoftIfcVf dev, Virtqueue rx, scoped ref RingView rv, Span<byte> frame)
    {
        if (rx.Packed)
        {
            return DeliverRxPacked(dev, rx, ref rv, frame);
        }
        int total = frame.Length;
        ushort startAvail = rx.LastAvail;
        int segs = 0;
        int chains = 0;
        long cap = 0;
        while (cap < total)
        {
            if (rx.LastAvail == rx.AvailIdxCache)
            {
                ushort ai = SharedIndex.Load16(rv.Avail, AvailIdx);
                if ((ushort)(ai - startAvail) > rx.Size)
                {
                    rx.LastAvail = startAvail;
                    Fail(dev, rx, $"avail idx {ai} is more than the queue size ({rx.Size}) ahead of last_avail {startAvail}");
                    return false;
                }
                rx.AvailIdxCache = ai;
                if (ai == rx.LastAvail)
                {
                    rx.LastAvail = startAvail;
                    rx.Drops++;
                    return false;
                }
            }
            ushort head = BinaryPrimitives.ReadUInt16LittleEndian(rv.Avail[(AvailRing + (2 * (rx.LastAvail & rx.Mask)))..]);
            long c = CollectWritable(rx, rv.Desc, head, ref segs, default, out _, out var err);
            if (err != ChainError.None)
            {
                rx.LastAvail = startAvail;
                Fail(dev, rx, ChainErrors.Describe(err));
                return false;
            }
            _chainHead[chains] = head;
            _chainSegEnd[chains] = segs;
            chains++;
            cap += c;
            rx.LastAvail++;
            if (!rx.Mergeable || chains == MaxSegments)
            {
                break;
            }
        }
        if (cap < total)
        {
            rx.LastAvail = startAvail;
            rx.Drops++;
            return false;
        }
        return ScatterRx(dev, rx, ref rv, frame, chains);
    }

    /// <summary>Writes the frame into the collected chains and completes them (split or packed).</summary>
    private bool ScatterRx(SoftIfcVf dev, Virtqueue rx, scoped ref RingView rv, Span<byte> frame, int chains)
    {
        int total = frame.Length;
        // The header the driver sees: offload fields only when it negotiated them, num_buffers always.
        if (!_guestCsum)
        {
            frame[VirtioNetHeader.Flags] = 0;
            BinaryPrimitives.WriteUInt32LittleEndian(frame[VirtioNetHeader.CsumStart..], 0);
        }
        if (!_guestTso)
        {
            frame[VirtioNetHeader.GsoType] = VirtioNetHeader.GSO_NONE;
            BinaryPrimitives.WriteUInt32LittleEndian(frame[VirtioNetHeader.HdrLen..], 0);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(frame[VirtioNetHeader.NumBuffers..], (ushort)chains);
        var dma = _dma!;
        bool logging = dev.TryGetDirtyLog(out ulong logBase, out ulong logEnd);
        int off = 0;
        int seg = 0;
        for (int ch = 0; ch < chains; ch++)
        {
            uint written = 0;
            int end = _chainSegEnd[ch];
            for (; seg < end && off < total; seg++)
            {
                int take = (int)Math.Min(_segLen[seg], (uint)(total - off));
                if (!dma.TryTranslate(_segAddr[seg], (uint)take, true, out var dst))
                {
                    Fail(dev, rx, "RX buffer unmapped while in use");
                    return false;
                }
                frame.Slice(off, take).CopyTo(dst);
                if (logging)
                {
                    MarkDirty(dma, logBase, logEnd, _segAddr[seg], (uint)take);
                }
                off += take;
                written += (uint)take;
            }
            seg = end;
            if (rx.Packed)
            {
                PutUsedPacked(rv.Desc, rx, _chainHead[ch], written, _chainCount[ch]);
            }
            else
            {
                PutUsed(rv.Used, rx, _chainHead[ch], written);
            }
        }
        rx.Packets++;
        rx.Bytes += total - Hdr;
        return true;
    }

    private int ProcessPairInbound(SoftIfcVf dev)
    {
        var ring = _backend.Peer!.Outbound!;
        if (!ring.TryPeek(out _, out int pair))
        {
            return 0;
        }
        int active = Volatile.Read(ref _activePairs);
        var rx = _queues[2 * (pair % active)];
        if (rx is null || !rx.TryAcquire())
        {
            // Not running: the wire drops what nobody receives.
            int n = 0;
            while (n < _burst && ring.TryPeek(out _, out _))
            {
                ring.Pop();
                n++;
            }
            Interlocked.Add(ref _inboundDrops, n);
            return n;
        }
        int done = 0;
        try
        {
            if (!rx.Failed && RingView.TryCreate(_dma!, rx, out var rv))
            {
                ushort oldUsed = rx.UsedMark;
                while (done < _burst && ring.TryPeek(out var frame, out int p) && p == pair && !rx.Failed)
                {
                    DeliverRx(dev, rx, ref rv, frame);
                    ring.Pop();
                    done++;
                }
                if (rx.UsedMark != oldUsed)
                {
                    Publish(dev, rx, ref rv, oldUsed);
                }
            }
            else if (!rx.Failed)
            {
                Fail(dev, rx, "ring areas outside the DMA map");
            }
        }
        finally
        {
            rx.Release();
        }
        return done;
    }

    /// <summary>
    /// Frames from the TAP go to the RX queue of the pair their flow hashes to (<see cref="FlowHash"/>), so
    /// a multiqueue guest sees traffic on every pair. The current RX ring stays acquired while consecutive
    /// frames hash to it; used entries are published once per run of frames.
    /// </summary>
    private int ProcessTapInbound(SoftIfcVf dev)
    {
        var tap = _backend.TapDevice!;
        int active = SteeringPairs();
        int done = 0;
        Virtqueue? cur = null;
        RingView rv = default;
        ushort oldUsed = 0;
        try
        {
            while (done < _burst)
            {
                int n = tap.Read(_tapIn);
                if (n <= 0)
                {
                    if (n < 0)
                    {
                        TapFailed(dev, -n);
                    }
                    break;
                }
                done++;
                if (n < Hdr)
                {
                    continue;
                }
                var rx = _queues[2 * FlowHash.Pair(_tapIn.AsSpan(Hdr, n - Hdr), active)];
                if (rx is null || Volatile.Read(ref rx.State) == Virtqueue.Stopped)
                {
                    rx = _queues[0]; // that pair's RX ring is not running (e.g. the guest uses fewer pairs)
                }
                if (rx != cur)
                {
                    if (cur is not null)
                    {
                        FinishTapRun(dev, cur, ref rv, oldUsed);
                        cur = null;
                    }
                    if (rx is null || !rx.TryAcquire())
                    {
                        // No RX ring running there: the frame is dropped (reading it keeps an event-mode worker from spinning).
                        Interlocked.Increment(ref _inboundDrops);
                        continue;
                    }
                    if (rx.Failed || !RingView.TryCreate(_dma!, rx, out rv))
                    {
                        if (!rx.Failed)
                        {
                            Fail(dev, rx, "ring areas outside the DMA map");
                        }
                        rx.Release();
                        Interlocked.Increment(ref _inboundDrops);
                        continue;
                    }
                    cur = rx;
                    oldUsed = rx.UsedMark;
                }
                if (cur is { Failed: false })
                {
                    DeliverRx(dev, cur, ref rv, _tapIn.AsSpan(0, n));
                }
            }
        }
        finally
        {
            if (cur is not null)
            {
                FinishTapRun(dev, cur, ref rv, oldUsed);
            }
        }
        return done;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ReportStartFaults(SoftIfcVf dev, Virtqueue?[] queues)
    {
        foreach (var q in queues)
        {
            if (q?.StartFault is { } reason && q.TryAcquire())
            {
                try
                {
                    q.StartFault = null;
                    Fail(dev, q, reason);
                }
                finally
                {
                    q.Release();
                }
            }
        }
    }

    /// <summary>
    /// The TAP interface went away (ip link del) or broke: its fd now polls readable forever with an error.
    /// Stop reading and polling it (else the worker spins), report link down, log once. Frames sent to it are
    /// dropped and counted by the write path.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void TapFailed(SoftIfcVf dev, int errno)
    {
        if (_tapDead)
        {
            return;
        }
        _tapDead = true;
        _log($"{dev.Address}: TAP {_backend.TapDevice?.Name} failed (errno {errno}): link down, no more reads");
        // The worker never takes the register lock itself: the link change goes through the thread pool.
        ThreadPool.QueueUserWorkItem(static d => d.SetLinkUp(false), dev, preferLocal: false);
    }

    /// <summary>
    /// Pairs to spread received traffic over: what the driver set with CTRL_MQ_VQ_PAIRS_SET when the device
    /// runs its control queue; otherwise (vhost-user, where QEMU keeps the control queue and switches pairs
    /// with SET_VRING_ENABLE) every pair, unused ones falling back to pair 0.
    /// </summary>
    private int SteeringPairs()
    {
        if (_ctrl >= 0 && _queues[_ctrl] is { } c && Volatile.Read(ref c.State) != Virtqueue.Stopped)
        {
            return Volatile.Read(ref _activePairs);
        }
        return _pairs;
    }

    private void FinishTapRun(SoftIfcVf dev, Virtqueue rx, scoped ref RingView rv, ushort oldUsed)
    {
        try
        {
            if (rx.UsedMark != oldUsed)
            {
                Publish(dev, rx, ref rv, oldUsed);
            }
        }
        finally
        {
            rx.Release();
        }
    }

    /// <summary>
    /// Live migration: marks the 4 KiB pages of a buffer the device wrote in the dirty bitmap (vhost-user
    /// log format: bit n = page n; the IFC VF logs packet buffers only, the driver marks used rings).
    /// Bits outside [base, end) or an unmapped log are skipped. Atomic OR, since the reader clears bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void MarkDirty(IovaMap dma, ulong logBase, ulong logEnd, ulong iova, uint len)
    {
        ulong last = (iova + len - 1) >> 12;
        for (ulong page = iova >> 12; page <= last; page++)
        {
            ulong byteIova = logBase + (page >> 3);
            if (byteIova < logBase || byteIova >= logEnd)
            {
                continue;
            }
            ulong wordIova = byteIova & ~3UL;
            int shift = (int)(((byteIova - wordIova) * 8) + (page & 7));
            if (wordIova >= logBase && wordIova + 4 <= logEnd && dma.TryTranslate(wordIova, 4, true, out var word))
            {
                Interlocked.Or(ref MemoryMarshal.Cast<byte, uint>(word)[0], 1u << shift);
            }
            else if (dma.TryTranslate(byteIova, 1, true, out var b))
            {
                b[0] |= (byte)(1 << (int)(page & 7));
            }
        }
    }

    // ---- used ring ----------------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PutUsed(Span<byte> used, Virtqueue q, ushort head, uint len)
    {
        var e = used.Slice(UsedRing + (UsedElemSize * (q.LastUsed & q.Mask)), UsedElemSize);
        BinaryPrimitives.WriteUInt32LittleEndian(e, head);
        BinaryPrimitives.WriteUInt32LittleEndian(e[4..], len);
        q.LastUsed++;
    }

    /// <summary>Publishes the used index (release), avail_event, and interrupts if the driver asked.</summary>
    private static void Publish(SoftIfcVf dev, Virtqueue q, scoped ref RingView v, ushort oldUsed)
    {
        if (q.Packed)
        {
            PublishPacked(dev, q, ref v, oldUsed);
            return;
        }
        SharedIndex.Store16(v.Used, UsedIdx, q.LastUsed);
        if (q.EventIdx)
        {
            SharedIndex.Store16(v.Used, AvailEventOffset(q.Size), q.LastAvail);
        }
        else if (q.SuppressKicks && (BinaryPrimitives.ReadUInt16LittleEndian(v.Used) & VIRTQ_USED_F_NO_NOTIFY) == 0)
        {
            SharedIndex.Store16(v.Used, UsedFlags, VIRTQ_USED_F_NO_NOTIFY);
        }
        if (q.LastUsed == oldUsed)
        {
            return;
        }
        Interlocked.MemoryBarrier(); // used idx store before reading the driver's suppression fields
        bool notify = q.EventIdx
            ? NeedEvent(SharedIndex.Load16(v.Avail, UsedEventOffset(q.Size)), q.LastUsed, oldUsed)
            : (SharedIndex.Load16(v.Avail, AvailFlags) & VIRTQ_AVAIL_F_NO_INTERRUPT) == 0;
        if (notify)
        {
            q.Interrupts++;
            dev.RaiseQueueInterrupt(q.Index);
        }
    }

    // ---- control queue ------------------------------------------------------------------------

    private int ProcessCtrl(SoftIfcVf dev, Virtqueue q)
    {
        if (!q.TryAcquire())
        {
            return 0;
        }
        int done = 0;
        try
        {
            if (!q.Failed && RingView.TryCreate(_dma!, q, out var v))
            {
                ushort oldUsed = q.UsedMark;
                ushort ai = q.Packed ? (ushort)0 : SharedIndex.Load16(v.Avail, AvailIdx);
                ushort pending = (ushort)(ai - q.LastAvail);
                if (q.Packed)
                {
                    done = CtrlBurstPacked(dev, q, ref v);
                }
                else if (pending > q.Size)
                {
                    Fail(dev, q, $"avail idx {ai} is {pending} entries ahead of last_avail {q.LastAvail} (queue size {q.Size})");
                }
                else
                {
                    done = CtrlBurst(dev, q, ref v, Math.Min(pending, _burst));
                }
                if (q.UsedMark != oldUsed || q.EventIdx)
                {
                    Publish(dev, q, ref v, oldUsed);
                }
            }
            else if (!q.Failed)
            {
                Fail(dev, q, "ring areas outside the DMA map");
            }
        }
        finally
        {
            q.Release();
        }
        return done;
    }

    private int CtrlBurst(SoftIfcVf dev, Virtqueue q, scoped ref RingView v, int n)
    {
        int done = 0;
        for (; done < n; done++)
        {
            ushort head = BinaryPrimitives.ReadUInt16LittleEndian(v.Avail[(AvailRing + (2 * (q.LastAvail & q.Mask)))..]);
            int segs = 0;
            CollectWritable(q, v.Desc, head, ref segs, _ctrlIn, out int inLen, out var err);
            if (err == ChainError.None && segs == 0)
            {
                Fail(dev, q, "control command without a device-writable status byte");
                break;
            }
            if (err != ChainError.None)
            {
                Fail(dev, q, ChainErrors.Describe(err));
                break;
            }
            int ack = inLen >= 2 && inLen <= _ctrlIn.Length ? ExecuteCtrl(dev, q, _ctrlIn.AsSpan(0, inLen)) : VirtioNetCtrl.ERR;
            if (ack < 0)
            {
                break; // the queue is being stopped: leave this command unconsumed
            }
            if (!_dma!.TryTranslate(_segAddr[0], 1, true, out var status))
            {
                Fail(dev, q, "control status buffer unmapped while in use");
                break;
            }
            status[0] = (byte)ack;
            q.LastAvail++;
            PutUsed(v.Used, q, head, 1);
            q.Packets++;
            q.Bytes += inLen;
            if (ack != VirtioNetCtrl.OK)
            {
                q.Errors++;
            }
        }
        return done;
    }

    /// <summary>Runs one control command. Returns the ack, or -1 if the queue is being stopped meanwhile.</summary>
    private int ExecuteCtrl(SoftIfcVf dev, Virtqueue q, ReadOnlySpan<byte> cmd)
    {
        byte cls = cmd[0];
        byte code = cmd[1];
        var data = cmd[2..];
        bool Has(int f) => VirtioFeature.Has(_features, f);
        switch (cls)
        {
            case VirtioNetCtrl.CLASS_RX when Has(VirtioFeature.NET_F_CTRL_RX):
                return code <= VirtioNetCtrl.CMD_RX_NOBCAST && data.Length == 1 ? VirtioNetCtrl.OK : VirtioNetCtrl.ERR;
            case VirtioNetCtrl.CLASS_MAC when code == VirtioNetCtrl.CMD_MAC_ADDR_SET && Has(VirtioFeature.NET_F_CTRL_MAC_ADDR):
                if (data.Length != 6)
                {
                    return VirtioNetCtrl.ERR;
                }
                if (!EnterRegisters(dev, q))
                {
                    return -1;
                }
                try
                {
                    dev.SetMac(data);
                }
                finally
                {
                    dev.ExitRegisters();
                }
                data.CopyTo(_mac);
                return VirtioNetCtrl.OK;
            case VirtioNetCtrl.CLASS_MAC when code == VirtioNetCtrl.CMD_MAC_TABLE_SET && Has(VirtioFeature.NET_F_CTRL_RX):
                return ValidMacTables(data) ? VirtioNetCtrl.OK : VirtioNetCtrl.ERR;
            case VirtioNetCtrl.CLASS_MQ when code == VirtioNetCtrl.CMD_MQ_VQ_PAIRS_SET && Has(VirtioFeature.NET_F_MQ):
                if (data.Length != 2)
                {
                    return VirtioNetCtrl.ERR;
                }
                ushort pairs = BinaryPrimitives.ReadUInt16LittleEndian(data);
                if (pairs < VirtioNetCtrl.MQ_VQ_PAIRS_MIN || pairs > _pairs)
                {
                    return VirtioNetCtrl.ERR;
                }
                Volatile.Write(ref _activePairs, pairs);
                return VirtioNetCtrl.OK;
            case VirtioNetCtrl.CLASS_ANNOUNCE when code == VirtioNetCtrl.CMD_ANNOUNCE_ACK && Has(VirtioFeature.NET_F_GUEST_ANNOUNCE):
                if (!EnterRegisters(dev, q))
                {
                    return -1;
                }
                try
                {
                    dev.SetAnnounce(false);
                }
                finally
                {
                    dev.ExitRegisters();
                }
                return VirtioNetCtrl.OK;
            default:
                return VirtioNetCtrl.ERR;
        }
    }

    private static bool ValidMacTables(ReadOnlySpan<byte> data)
    {
        for (int t = 0; t < 2; t++)
        {
            if (data.Length < 4)
            {
                return false;
            }
            uint entries = BinaryPrimitives.ReadUInt32LittleEndian(data);
            if (entries > (uint)(data.Length - 4) / 6)
            {
                return false;
            }
            data = data[(4 + (int)(entries * 6))..];
        }
        return data.IsEmpty;
    }

    /// <summary>Takes the register lock without ever blocking the control path waiting for this queue.</summary>
    private static bool EnterRegisters(SoftIfcVf dev, Virtqueue q)
    {
        var spin = default(SpinWait);
        while (!dev.TryEnterRegisters())
        {
            if (Volatile.Read(ref q.State) == Virtqueue.StopRequested)
            {
                return false;
            }
            spin.SpinOnce(sleep1Threshold: -1);
        }
        return true;
    }

    // ---- errors -------------------------------------------------------------------------------

    /// <summary>A ring error: the queue stops, the error is counted and logged once, the device needs a reset.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void Fail(SoftIfcVf dev, Virtqueue q, string reason)
    {
        q.Failed = true;
        q.Errors++;
        if (!q.ErrorLogged)
        {
            q.ErrorLogged = true;
            _log($"{dev.Address} vq {q.Index}: {reason}; queue stopped, device needs reset");
        }
        if (EnterRegisters(dev, q))
        {
            try
            {
                dev.RaiseNeedsReset($"vq {q.Index}: {reason}");
            }
            finally
            {
                dev.ExitRegisters();
            }
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _stopping = true;
        _wake.Signal();
        _worker?.Join();
        _wake.Dispose();
        _backend.Dispose();
        if (_backend.Kind == NetBackendKind.Pair && _backend.Peer?.Owner?._device is { } peer)
        {
            peer.SetLinkUp(false); // the cable is pulled: the other VF sees its link go down
        }
    }
}
