using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath.Blk;

/// <summary>The block personality's backend-independent face (what <see cref="VirtioBlkEngine"/> shows).</summary>
internal abstract class BlkPersonality : IDevicePersonality
{
    public abstract void Attach(IVirtqueueDevice device);

    public abstract void OnDeviceStart(ulong features);

    public abstract int Poll();

    /// <summary>
    /// Sets (or clears, null) queue <paramref name="queue"/>'s vhost-user inflight region (split rings): the
    /// runner marks each request it takes and clears it once the used ring holds it; at the next device start it
    /// recovers the requests in flight when the previous back-end stopped. Only while the queue is stopped.
    /// </summary>
    public abstract void SetInflight(int queue, MemorySlice? region);

    public void OnIdle()
    {
    }

    public int WakeFd => -1;

    public abstract bool OnKick(int queue);

    /// <summary>Requests a queue runner found only when its sleep timed out (no wake-up came for them).</summary>
    public abstract long MissedDoorbells { get; }

    public abstract void Dispose();
}

/// <summary>
/// The virtio-blk personality: N request queues, each served by its own I/O thread (a "queue runner") that
/// takes request chains with the core's ring walks, does the I/O synchronously on the store straight into
/// guest memory, writes the status byte and publishes the used ring once per burst. A doorbell wakes the
/// runner of its queue directly (<see cref="OnKick"/>, on the thread that rang it: one thread hop per request,
/// not two through the worker; a busy runner is not woken at all, it looks at its ring again before it
/// sleeps). The engine's worker turns a runner's ring error into NEEDS_RESET (the core's error path must run
/// on the worker) and wakes the runner of a queue that starts. So a slow request blocks its own queue only,
/// never another queue nor the worker; and because a runner holds its queue Busy while it does I/O into
/// guest buffers, stopping a queue (and unmapping its memory) waits for the request in flight, as DPDK's
/// block VF driver drains avail == used before it stops. In Manual mode there are no threads: the caller's
/// PollOnce runs every queue inline.
/// </summary>
internal sealed class BlkPersonality<TStore>(VirtqueueEngine engine, BlkBackend backend, TStore store) : BlkPersonality
    where TStore : struct, IBlkStore
{
    /// <summary>Most buffers one request may have (Linux's UIO_MAXIOV; a guest uses at most seg_max + 2).</summary>
    public const int MaxSegments = 1024;

    /// <summary>The O_DIRECT bounce buffer of each queue (requests larger than it go through in pieces).</summary>
    public const int BounceBytes = 1 << 20;

    private TStore _store = store;
    private IBlkDevice? _device;
    private QueueRunner[] _runners = [];
    private volatile BlkContext? _ctx;
    private volatile bool _stopping;
    private long _missedDoorbells;
    private readonly MemorySlice?[] _inflight = new MemorySlice?[64]; // per queue; changed only while the queue is stopped

    public override void Attach(IVirtqueueDevice device)
    {
        var blk = device as IBlkDevice;
        var cfg = blk?.BlkConfig ?? throw new ArgumentException("a virtio-blk engine needs a virtio-blk device", nameof(device));
        if ((ulong)_store.Capacity < cfg.Capacity << VirtioBlk.SectorShift)
        {
            throw new ArgumentException($"the device offers {cfg.Capacity} sectors but its backend {backend.Description} holds only {_store.Capacity} bytes");
        }
        _device = blk;
        _runners = new QueueRunner[device.NumQueues];
        for (int i = 0; i < _runners.Length; i++)
        {
            _runners[i] = new QueueRunner(i, _store.NeedsBounce) { Batch = new ushort[engine.Burst] };
        }
        if (engine.Mode != EngineMode.Manual)
        {
            foreach (var r in _runners)
            {
                r.Thread = new Thread(() => RunnerMain(r)) { IsBackground = true, Name = $"blk-{device.Address}-q{r.Index}" };
                r.Thread.Start();
            }
        }
    }

    public override void OnDeviceStart(ulong features)
    {
        var dev = _device ?? throw new InvalidOperationException("not attached");
        var cfg = dev.BlkConfig!;
        _ctx = new BlkContext(cfg.Capacity, cfg.BlkSize, dev.ReadOnly || _store.ReadOnly, features, cfg, BlkRequest.SerialFor(dev.Address));
        foreach (var r in _runners)
        {
            r.PendingFault = null;
            r.LoggedBad = false;
            r.LoggedIo = false;
            r.NeedsRecovery = true;
        }
    }

    public override void SetInflight(int queue, MemorySlice? region)
    {
        int queues = _runners.Length > 0 ? _runners.Length : _inflight.Length; // before the device attaches: any queue a block VF may have
        if ((uint)queue >= (uint)queues)
        {
            throw new ArgumentOutOfRangeException(nameof(queue), $"queue {queue} of {queues}");
        }
        if (queue < _runners.Length && engine.IsRunning(engine.Queue(queue)))
        {
            throw new InvalidOperationException($"queue {queue} is running: its inflight region changes only while it is stopped");
        }
        _inflight[queue] = region;
        if (queue < _runners.Length)
        {
            _runners[queue].NeedsRecovery = true;
            _runners[queue].LoggedInflight = false;
        }
    }

    /// <summary>
    /// The runner's inflight region for this burst (split rings; empty when none or too small for the queue),
    /// recovered first after a device start: requests the region says were in flight are checked against the
    /// avail ring from the used index (this device completes in avail order, so they are exactly the entries
    /// from the ring's used index on) and the queue resumes there, so each is executed again and none is lost.
    /// </summary>
    private Span<byte> InflightFor(QueueRunner r, Virtqueue q, scoped ref RingView view)
    {
        if (_inflight[r.Index] is not { } reg || q.Packed)
        {
            return default;
        }
        ulong need = VhostInflight.QueueRegionSize(q.Size);
        if (reg.Length < need)
        {
            if (!r.LoggedInflight)
            {
                r.LoggedInflight = true;
                engine.Log($"{_device?.Address} vq {r.Index}: inflight region of {reg.Length} bytes is smaller than a {q.Size}-entry queue needs ({need}): not tracked");
            }
            return default;
        }
        var track = reg.Memory.Span(reg.Offset, (int)need);
        if (r.NeedsRecovery)
        {
            r.NeedsRecovery = false;
            bool restarted = VhostInflight.IsInitialised(track);
            Recover(r, q, ref view, track);
            if (restarted)
            {
                // A back-end ran on this region before (a restart): it may have published used entries and died
                // before their interrupt, and the driver would wait for it forever. One spurious interrupt is harmless.
                q.Interrupts++;
                engine.Device.RaiseQueueInterrupt(q.Index);
            }
        }
        return track;
    }

    private void Recover(QueueRunner r, Virtqueue q, scoped ref RingView view, Span<byte> track)
    {
        ushort used = SharedIndex.Load16(view.Used, SplitRing.UsedIdx);
        int completed = VhostInflight.IsInitialised(track) ? (ushort)(used - VhostInflight.UsedIdx(track)) : 0;
        if (completed > 0 && completed <= q.Size)
        {
            engine.Log($"{_device?.Address} vq {r.Index}: {completed} request(s) of the last batch completed before the back-end stopped (the used ring holds them): not executed again");
        }
        var heads = new ushort[q.Size]; // once per device start
        int n = VhostInflight.Recover(track, q.Size, used, heads, out ulong next, out string? problem);
        r.Counter = next;
        if (n < 0)
        {
            engine.Log($"{_device?.Address} vq {r.Index}: {problem}: region reset, the queue resumes at avail index {q.LastAvail}");
            return;
        }
        if (n == 0)
        {
            return;
        }
        bool same = true;
        for (int i = 0; i < n; i++)
        {
            ushort slot = (ushort)((used + i) & q.Mask);
            same &= SharedIndex.Load16(view.Avail, SplitRing.AvailRing + (2 * slot)) == heads[i];
        }
        ushort from = q.LastAvail;
        if (from != used)
        {
            AvailRing.Rewind(q, new AvailMark(used, false));
        }
        engine.Log($"{_device?.Address} vq {r.Index}: {n} request(s) were in flight when the back-end stopped (heads {string.Join(',', heads.AsSpan(0, n).ToArray())}): " +
            $"resubmitted from avail index {used}{(from != used ? $" (the front-end said {from})" : "")}" +
            (same ? "" : "; the avail ring from the used index holds other heads (replayed as the ring says)"));
    }

    /// <summary>The worker's round: ring errors to NEEDS_RESET, doorbells to the queue runners (Manual: run them).</summary>
    public override int Poll()
    {
        int work = 0;
        bool manual = engine.Mode == EngineMode.Manual;
        if (_ctx is null)
        {
            return 0;
        }
        foreach (var r in _runners)
        {
            if (manual)
            {
                work += RunQueue(r);
            }
            work += ReportFault(r);
            var q = engine.Queue(r.Index);
            if (manual || q is null)
            {
                continue;
            }
            bool running = engine.IsRunning(q);
            if (running && !r.SeenRunning)
            {
                r.Wake.Signal(); // a queue start (doorbells wake the runner themselves: OnKick)
            }
            r.SeenRunning = running;
        }
        return work;
    }

    /// <summary>
    /// A doorbell (the kick relay's thread, or whoever rang it): wakes the queue's runner if it sleeps or is about
    /// to. The runner announces its sleep, then looks at its ring once more (a full fence between the two); the
    /// core counted the doorbell with a full fence before this read; so either the runner sees the new request
    /// or this sees it sleeping. Manual and Poll mode: nothing to wake here (the worker or the runner's spin).
    /// </summary>
    public override long MissedDoorbells => Interlocked.Read(ref _missedDoorbells);

    public override bool OnKick(int queue)
    {
        if (engine.Mode != EngineMode.Event || (uint)queue >= (uint)_runners.Length)
        {
            return false;
        }
        var r = _runners[queue];
        if (Volatile.Read(ref r.Sleeping) != 0)
        {
            r.Wake.Signal();
        }
        return true;
    }

    /// <summary>Worker: a runner's ring error becomes the core's ring error (stop, count, log once, NEEDS_RESET).</summary>
    private int ReportFault(QueueRunner r)
    {
        if (r.PendingFault is not { } reason)
        {
            return 0;
        }
        var q = engine.Queue(r.Index);
        if (q is null || !q.TryAcquire())
        {
            return 0; // the runner still holds it (it lets go at once) or the queue stopped meanwhile
        }
        try
        {
            if (!q.Failed)
            {
                engine.Fail(q, reason, r.PendingRule);
            }
        }
        finally
        {
            q.Release();
        }
        r.PendingFault = null;
        return 1;
    }

    private void RunnerMain(QueueRunner r)
    {
        bool poll = engine.Mode == EngineMode.Poll;
        while (!_stopping)
        {
            int done;
            try
            {
                done = RunQueue(r);
            }
#pragma warning disable CA1031 // a runner must survive anything and report it: it serves a device
            catch (Exception ex)
#pragma warning restore CA1031
            {
                engine.Log($"{_device?.Address} vq {r.Index}: block queue error: {ex}");
                Volatile.Write(ref r.Sleeping, 0);
                r.Wake.WaitReadable(100);
                continue;
            }
            if (done > 0)
            {
                if (r.TimedOut)
                {
                    Interlocked.Increment(ref _missedDoorbells); // the safety net found what no doorbell woke us for
                }
                r.TimedOut = false;
                if (r.Sleeping != 0)
                {
                    Volatile.Write(ref r.Sleeping, 0);
                }
                continue;
            }
            if (poll && _ctx is not null && engine.IsRunning(engine.Queue(r.Index)))
            {
                Thread.Yield();
                continue;
            }
            if (r.Sleeping == 0)
            {
                // Announce the sleep, then look at the ring once more: a doorbell after that look wakes us (OnKick).
                r.TimedOut = false;
                Volatile.Write(ref r.Sleeping, 1);
                Interlocked.MemoryBarrier();
                continue;
            }
            // Sleep until a doorbell (OnKick) or the worker (a queue start) wakes us; the timeout is a safety net.
            r.TimedOut = !r.Wake.WaitReadable(200);
            if (!r.TimedOut)
            {
                r.Wake.TryConsume(out _);
            }
            Volatile.Write(ref r.Sleeping, 0);
        }
    }

    /// <summary>
    /// One burst on a queue: up to the engine's burst of requests, each executed before the next is taken,
    /// used entries published once at the end. Returns the requests answered. Never calls the core's error
    /// path (a runner is not the worker): a ring error is left in <see cref="QueueRunner.PendingFault"/>.
    /// </summary>
    private int RunQueue(QueueRunner r)
    {
        var ctx = _ctx; // set at the first queue start, after the core sized its queue table
        if (ctx is null || r.PendingFault is not null)
        {
            return 0;
        }
        var q = engine.Queue(r.Index);
        if (q is null || !q.TryAcquire())
        {
            return 0;
        }
        var dma = engine.Dma;
        var dev = engine.Device;
        if (q.Failed || !RingView.TryCreate(dma, q, out var view))
        {
            if (!q.Failed)
            {
                r.PendingFault = "ring areas outside the DMA map";
            }
            q.Release();
            WakeWorker();
            return 0;
        }
        var old = q.UsedMark;
        int done = 0;
        int batched = 0;
        string? fault = null;
        Span<byte> track = default;
        var rule = SpecRule.None;
        try
        {
            track = InflightFor(r, q, ref view);
            bool logging = DirtyLog.TryOpen(dev, dma, out var log);
            Span<byte> bounce = r.Bounce is { } b ? b.Span(0, BounceBytes) : [];
            while (done < engine.Burst && Volatile.Read(ref q.State) != Virtqueue.StopRequested)
            {
                if (!AvailRing.HasChain(q, ref view, out fault))
                {
                    rule = fault is null ? SpecRule.None : SpecRule.AvailAhead;
                    break;
                }
                var mark = AvailRing.Mark(q);
                var visitor = new BlkChainVisitor(dma, r.Segs);
                var err = AvailRing.Take(q, dma, ref view, ref visitor, out var chain);
                if (err != ChainError.None)
                {
                    fault = ChainErrors.Describe(err);
                    rule = ChainErrors.Rule(err);
                    break;
                }
                if (!track.IsEmpty)
                {
                    VhostInflight.Begin(track, chain.Id, r.Counter++);
                }
                var shape = new BlkChainShape(visitor.Count, visitor.FirstWritable < 0 ? visitor.Count : visitor.FirstWritable);
                var outcome = BlkRequest.Execute(ref _store, ctx, dma, r.Segs, shape, visitor.Readable, visitor.Writable, bounce);
                if (outcome.RingFault is not null)
                {
                    if (!track.IsEmpty)
                    {
                        VhostInflight.Abandon(track, chain.Id);
                    }
                    AvailRing.Rewind(q, mark);
                    fault = outcome.RingFault;
                    break;
                }
                if (logging)
                {
                    for (int i = shape.FirstWritable; i < shape.Count; i++)
                    {
                        q.DirtyPages += log.Mark(r.Segs.Addr[i], r.Segs.Len[i]);
                    }
                }
                UsedRing.Put(q, ref view, chain, outcome.Written);
                r.Batch[batched++] = chain.Id;
                q.Packets++;
                q.Bytes += outcome.DataBytes;
                if (outcome.Status != VirtioBlk.S_OK)
                {
                    q.Drops++;
                    Report(r, outcome);
                }
                done++;
            }
        }
        finally
        {
            try
            {
                if (q.UsedMark != old)
                {
                    if (!track.IsEmpty)
                    {
                        VhostInflight.LinkBatch(track, r.Batch.AsSpan(0, batched));
                    }
                    UsedRing.Publish(engine, q, ref view, old);
                    if (!track.IsEmpty)
                    {
                        VhostInflight.CommitBatch(track, r.Batch.AsSpan(0, batched), q.LastUsed);
                    }
                }
            }
            finally
            {
                q.Release();
            }
        }
        if (fault is not null)
        {
            r.PendingRule = rule;
            r.PendingFault = fault;
            WakeWorker();
        }
        return done;
    }

    private void WakeWorker()
    {
        if (engine.Mode != EngineMode.Manual)
        {
            engine.Wake();
        }
    }

    /// <summary>A refused request or an I/O error: logged once per queue and device start (counted always).</summary>
    private void Report(QueueRunner r, in BlkOutcome outcome)
    {
        if (outcome.Problem is null)
        {
            return;
        }
        bool io = outcome.Status == VirtioBlk.S_IOERR && outcome.Problem.Contains("errno", StringComparison.Ordinal);
        if (io ? r.LoggedIo : r.LoggedBad)
        {
            return;
        }
        if (io)
        {
            r.LoggedIo = true;
        }
        else
        {
            r.LoggedBad = true;
        }
        string status = outcome.Status == VirtioBlk.S_UNSUPP ? "UNSUPP" : "IOERR";
        engine.Log($"{_device?.Address} vq {r.Index}: request answered {status}: {outcome.Problem} (further ones on this queue are counted, not logged)");
    }

    public override void Dispose()
    {
        _stopping = true;
        foreach (var r in _runners)
        {
            r.Wake.Signal();
            r.Thread?.Join();
            r.Dispose();
        }
        backend.Dispose();
    }

    /// <summary>One request queue's I/O thread and what it owns.</summary>
    private sealed class QueueRunner(int index, bool bounce) : IDisposable
    {
        public readonly int Index = index;
        public readonly EventFd Wake = EventFd.Create(nonBlocking: true);
        public readonly BlkSegments Segs = new(MaxSegments);
        public readonly MappedMemory? Bounce = bounce ? MappedMemory.Allocate(BounceBytes) : null;
        public Thread? Thread;
        public volatile string? PendingFault;

        /// <summary>The virtio rule behind <see cref="PendingFault"/> (written before it).</summary>
        public SpecRule PendingRule;
        public bool SeenRunning;

        /// <summary>1 while the runner is about to sleep or sleeps (doorbells must wake it), 0 while it runs.</summary>
        public int Sleeping;

        /// <summary>The last sleep ended by its timeout, not by a wake-up.</summary>
        public bool TimedOut;
        public bool LoggedBad;
        public bool LoggedIo;
        public ushort[] Batch = [];
        public volatile bool NeedsRecovery;
        public bool LoggedInflight;
        public ulong Counter = 1;

        public void Dispose()
        {
            Wake.Dispose();
            Bounce?.Dispose();
        }
    }
}
