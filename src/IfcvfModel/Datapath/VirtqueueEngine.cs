using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath;

// ================================================================================================
// The device-independent virtqueue core of the software IFC VF: queue state (split and packed rings),
// start/stop with exact ring state, the worker, ring errors. A personality (IDevicePersonality) gives
// the queues their meaning; see Net/ for virtio-net.
//
// Modes: Poll (a dedicated worker spins over the queues), Event (doorbells wake the worker, it sleeps when
// idle), Manual (no thread: the caller runs PollOnce(), for tests and benchmarks).
//
// Concurrency: one worker per engine (= per VF). Each queue has a state word (Stopped/Idle/Busy/
// StopRequested); StopQueue waits until the worker is out of the queue, so afterwards the rings are
// never touched and the ring state is exact. The worker never blocks on the register lock (it only
// tries it, giving up if its queue is being stopped), so the control path can wait for it.
// A malformed ring stops the queue, is counted and logged once, and raises NEEDS_RESET.
// ================================================================================================

/// <summary>The virtqueue core; the public face is a device engine such as <see cref="VirtioNetEngine"/>.</summary>
internal sealed class VirtqueueEngine : IVirtqueueEngine, IQueueStatsSource, IDisposable
{
    private readonly IDevicePersonality _personality;
    private readonly EngineOptions _options;
    private readonly EventFd _wake;
    private IVirtqueueDevice? _device;
    private Virtqueue?[] _queues = [];
    private int _startFaults;
    private Thread? _worker;
    private volatile bool _stopping;
    private int _sleeping;
    private int _workerThreadId = -1;
    private bool _polling;
    private bool _disposed;

    /// <summary>An engine whose personality <paramref name="createPersonality"/> builds on it.</summary>
    public VirtqueueEngine(EngineOptions? options, Func<VirtqueueEngine, IDevicePersonality> createPersonality)
    {
        _options = options ?? new EngineOptions();
        if (_options.Burst is < 1 or > 4096)
        {
            throw new ArgumentException("burst must be 1..4096");
        }
        Burst = _options.Burst;
        Log = _options.Log ?? (s => Console.Error.WriteLine(s));
        _wake = EventFd.Create(nonBlocking: true);
        try
        {
            _personality = createPersonality(this);
        }
        catch
        {
            _wake.Dispose();
            throw;
        }
    }

    public EngineMode Mode => _options.Mode;

    /// <summary>Most chains per queue per round.</summary>
    public int Burst { get; }

    public Action<string> Log { get; }

    /// <summary>The device (set by the first queue start).</summary>
    public IVirtqueueDevice Device => _device ?? throw new InvalidOperationException("no queue has started yet");

    /// <summary>The device's DMA view (valid once a queue started).</summary>
    public IovaMap Dma { get; private set; } = new();

    /// <summary>Queue <paramref name="index"/>, or null if it never started.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Virtqueue? Queue(int index) => _queues[index];

    /// <summary>Queues of the attached device (0 before the first queue starts).</summary>
    public int QueueCount => _queues.Length;

    /// <summary>Whether the caller is the thread running the queues, inside a round (<see cref="PollOnce"/>).</summary>
    public bool OnWorker => _polling && Environment.CurrentManagedThreadId == Volatile.Read(ref _workerThreadId);

    public bool IsRunning(Virtqueue? q) => q is not null && Volatile.Read(ref q.State) != Virtqueue.Stopped;

    // ---- IVirtqueueEngine (control path, register lock held) ----------------------------------

    public void StartQueue(IVirtqueueDevice device, in QueueStart start)
    {
        ArgumentNullException.ThrowIfNull(device);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_device is null)
        {
            _personality.Attach(device);
            _device = device;
            Dma = device.Dma;
            _queues = new Virtqueue?[device.NumQueues];
        }
        else if (!ReferenceEquals(_device, device))
        {
            throw new InvalidOperationException("one engine serves one device");
        }
        var q = _queues[start.Queue] ??= new Virtqueue(start.Queue);
        if (Volatile.Read(ref q.State) != Virtqueue.Stopped)
        {
            throw new InvalidOperationException($"queue {start.Queue} started twice");
        }
        if (AllStopped())
        {
            _personality.OnDeviceStart(start.Features);
        }
        q.Configure(start, suppressKicks: _options.Mode == EngineMode.Poll);
        if (q.StartFault is not null)
        {
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
            if (OnWorker)
            {
                break; // the worker itself (a ring error raising NEEDS_RESET): it leaves the queue on return
            }
            spin.SpinOnce(sleep1Threshold: -1);
        }
        return q.Indices;
    }

    public RingIndices PeekQueue(int queue)
    {
        var q = (uint)queue < (uint)_queues.Length ? _queues[queue] : null;
        return q?.Indices ?? default;
    }

    public void Notify(int queue)
    {
        var q = (uint)queue < (uint)_queues.Length ? _queues[queue] : null;
        if (q is not null)
        {
            Interlocked.Increment(ref q.Kicks); // a full fence: the personality's OnKick reads its sleep flags after it
            if (_personality.OnKick(queue))
            {
                return;
            }
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
            if (IsRunning(q))
            {
                return false;
            }
        }
        return true;
    }

    private bool AnyRunning()
    {
        foreach (var q in _queues)
        {
            if (q is { Failed: false } && IsRunning(q))
            {
                return true;
            }
        }
        return false;
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
            Log($"{_device?.Address}: could not pin the datapath worker to CPU {cpu} (errno {Errno.Last})");
        }
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
                Log($"{_device?.Address}: datapath worker error: {ex}");
                _wake.WaitReadable(100);
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
                    _personality.OnIdle();
                    Thread.Yield(); // share the core on a busy machine; a pinned core stays hot anyway
                }
                continue;
            }
            // Event mode (or nothing running): announce sleep, re-check, then wait for a doorbell.
            Interlocked.Exchange(ref _sleeping, 1);
            if (!_stopping && PollOnce() == 0)
            {
                _personality.OnIdle();
                Poll.WaitEither(_wake.Fd, _personality.WakeFd, AnyRunning() ? 50 : 200);
                _wake.TryConsume(out _);
            }
            Volatile.Write(ref _sleeping, 0);
        }
    }

    /// <summary>
    /// One round: start faults, then the personality's queues. Returns the chains and frames handled.
    /// Called by the worker, or by the owner in Manual mode (one thread at a time).
    /// </summary>
    public int PollOnce()
    {
        if (_device is null)
        {
            return 0;
        }
        _workerThreadId = Environment.CurrentManagedThreadId;
        _polling = true;
        try
        {
            if (Interlocked.Exchange(ref _startFaults, 0) != 0)
            {
                ReportStartFaults();
            }
            return _personality.Poll();
        }
        finally
        {
            _polling = false;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ReportStartFaults()
    {
        foreach (var q in _queues)
        {
            if (q?.StartFault is { } reason && q.TryAcquire())
            {
                try
                {
                    q.StartFault = null;
                    Fail(q, reason);
                }
                finally
                {
                    q.Release();
                }
            }
        }
    }

    // ---- errors and the register lock ---------------------------------------------------------

    /// <summary>A ring error: the queue stops, the error is counted and logged once, the device needs a reset.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public void Fail(Virtqueue q, string reason, SpecRule rule = SpecRule.None)
    {
        if (rule != SpecRule.None)
        {
            Device.ReportViolation(rule, $"vq {q.Index}: {reason}");
        }
        q.Failed = true;
        q.Errors++;
        if (!q.ErrorLogged)
        {
            q.ErrorLogged = true;
            Log($"{_device?.Address} vq {q.Index}: {reason}; queue stopped, device needs reset");
        }
        if (EnterRegisters(q))
        {
            try
            {
                Device.RaiseNeedsReset($"vq {q.Index}: {reason}");
            }
            finally
            {
                Device.ExitRegisters();
            }
        }
    }

    /// <summary>A chain the walker refused: the ring error, counted under its virtio rule.</summary>
    public void Fail(Virtqueue q, ChainError err) => Fail(q, ChainErrors.Describe(err), ChainErrors.Rule(err));

    /// <summary>Takes the register lock without ever blocking the control path waiting for this queue.</summary>
    public bool EnterRegisters(Virtqueue q)
    {
        var dev = Device;
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
        _personality.Dispose();
    }
}
