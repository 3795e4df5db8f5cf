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

    public void OnIdle()
    {
    }

    public int WakeFd => -1;

    public abstract void Dispose();
}

/// <summary>
/// The virtio-blk personality: N request queues, each served by its own I/O thread (a "queue runner") that
/// takes request chains with the core's ring walks, does the I/O synchronously on the store straight into
/// guest memory, writes the status byte and publishes the used ring once per burst. The engine's worker
/// only watches doorbells (wakes the runner of a kicked queue) and turns a runner's ring error into
/// NEEDS_RESET (the core's error path must run on the worker). So a slow request blocks its own queue only,
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
            _runners[i] = new QueueRunner(i, _store.NeedsBounce);
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
        }
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
            long kicks = Interlocked.Read(ref q.Kicks);
            bool running = engine.IsRunning(q);
            if (kicks != r.SeenKicks || (running && !r.SeenRunning))
            {
                r.SeenKicks = kicks;
                r.Wake.Signal();
            }
            r.SeenRunning = running;
        }
        return work;
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
                r.Wake.WaitReadable(100);
                continue;
            }
            if (done > 0)
            {
                continue;
            }
            if (poll && _ctx is not null && engine.IsRunning(engine.Queue(r.Index)))
            {
                Thread.Yield();
                continue;
            }
            // Sleep until the worker passes on a doorbell (or a queue start); the timeout is a safety net.
            if (r.Wake.WaitReadable(200))
            {
                r.Wake.TryConsume(out _);
            }
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
        string? fault = null;
        var rule = SpecRule.None;
        try
        {
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
                var shape = new BlkChainShape(visitor.Count, visitor.FirstWritable < 0 ? visitor.Count : visitor.FirstWritable);
                var outcome = BlkRequest.Execute(ref _store, ctx, dma, r.Segs, shape, visitor.Readable, visitor.Writable, bounce);
                if (outcome.RingFault is not null)
                {
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
                    UsedRing.Publish(dev, q, ref view, old);
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
        public long SeenKicks;
        public bool SeenRunning;
        public bool LoggedBad;
        public bool LoggedIo;

        public void Dispose()
        {
            Wake.Dispose();
            Bounce?.Dispose();
        }
    }
}
