using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath.Net;

/// <summary>
/// The virtio-net personality, backend-independent part: queue layout (RX = 2k, TX = 2k+1, control =
/// last with VIRTIO_NET_F_CTRL_VQ), the device state it keeps (features, MAC, active pairs), RX placement
/// (<see cref="NetRx"/>), the control queue (<see cref="NetControlQueue"/>), and the host side of its backend.
/// </summary>
internal abstract class NetPersonality : IDevicePersonality, INetBackendHost
{
    /// <summary>Largest frame a TX chain may carry, after the 12-byte header (64 KiB, as with GSO).</summary>
    public const int MaxFrame = 65536;

    /// <summary>Most data segments in one packet (one chain for TX, all chains of an RX packet): Linux's UIO_MAXIOV.</summary>
    public const int MaxSegments = 1024;

    protected const int Hdr = VirtioNetHeader.Size;

    /// <summary>Injected frames waiting for the worker (<see cref="Inject"/>); more are refused.</summary>
    public const int MaxInjected = 16;

    private readonly NetBackend _backend;
    private readonly NetControlQueue _ctrlQueue;
    private readonly ConcurrentQueue<byte[]> _injected = new();
    private int _injectedCount;
    private long _inboundDrops;
    private int _activePairs = 1;
    private INetDevice? _device;

    protected NetPersonality(VirtqueueEngine engine, NetBackend backend)
    {
        Engine = engine;
        _backend = backend;
        Rx = new NetRx(engine);
        _ctrlQueue = new NetControlQueue(this);
    }

    public VirtqueueEngine Engine { get; }

    public NetRx Rx { get; }

    /// <summary>The VF (set when its first queue starts).</summary>
    public INetDevice Device => _device ?? throw new InvalidOperationException("not attached");

    public int Pairs { get; private set; }

    /// <summary>The control queue's index, or -1.</summary>
    public int CtrlIndex { get; private set; } = -1;

    public ulong Features { get; private set; }

    /// <summary>The MAC as the datapath filters on it (control-queue MAC_ADDR_SET updates it).</summary>
    public byte[] Mac { get; } = new byte[6];

    /// <summary>Queue pairs the driver activated (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; 1 until then).</summary>
    public int ActivePairs
    {
        get => Volatile.Read(ref _activePairs);
        set => Volatile.Write(ref _activePairs, value);
    }

    /// <summary>Frames from a pair peer or TAP dropped because no RX queue was running.</summary>
    public long InboundDrops => Volatile.Read(ref _inboundDrops);

    public abstract int WakeFd { get; }

    // ---- IDevicePersonality ---------------------------------------------------------------------

    public void Attach(IVirtqueueDevice device)
    {
        _device = device as INetDevice ?? throw new ArgumentException("a virtio-net engine needs a virtio-net device", nameof(device));
        Pairs = _device.QueuePairs;
        CtrlIndex = _device.HasControlQueue ? device.NumQueues - 1 : -1;
    }

    public void OnDeviceStart(ulong features)
    {
        Features = features;
        Rx.Configure(features);
        Device.Mac.CopyTo(Mac, 0);
        ActivePairs = 1;
        Device.SetLinkUp(_backend.LinkUp);
        while (TryTakeInjected(out _))
        {
            // Frames injected for an earlier run of the device never reach a later one.
        }
    }

    public abstract int Poll();

    public abstract void OnIdle();

    /// <summary>Net queues run on the worker: it takes every doorbell.</summary>
    public bool OnKick(int queue) => false;

    /// <summary>The control queue, if the device has one.</summary>
    protected int PollControl() => CtrlIndex >= 0 ? _ctrlQueue.Process(Engine.Queue(CtrlIndex)) : 0;

    /// <summary>
    /// Pairs to spread received traffic over: what the driver set with CTRL_MQ_VQ_PAIRS_SET when the device
    /// runs its control queue; otherwise (vhost-user, where QEMU keeps the control queue and switches pairs
    /// with SET_VRING_ENABLE) every pair, unused ones falling back to pair 0.
    /// </summary>
    public int SteeringPairs => CtrlIndex >= 0 && Engine.IsRunning(Engine.Queue(CtrlIndex)) ? ActivePairs : Pairs;

    public void CountInboundDrop() => Interlocked.Increment(ref _inboundDrops);

    /// <summary>Whether the first RX queue runs (frames from outside have somewhere to go).</summary>
    protected bool Receiving => Engine.QueueCount > 0 && Engine.IsRunning(Engine.Queue(0));

    /// <summary>The carrier of the backend's network side (see <see cref="NetBackend.SetCarrier"/>); any thread.</summary>
    public bool SetCarrier(bool up) => _backend.SetCarrier(up);

    /// <summary>
    /// Control path (any thread): queues an Ethernet frame that the worker transmits on queue pair 0 as if
    /// the driver had sent it (a RARP announce after a migration), then wakes the worker. False when the
    /// frame is not an Ethernet frame or too many are waiting.
    /// </summary>
    public bool Inject(ReadOnlySpan<byte> frame)
    {
        if (frame.Length < 14 || frame.Length > MaxFrame)
        {
            return false;
        }
        if (Interlocked.Increment(ref _injectedCount) > MaxInjected)
        {
            Interlocked.Decrement(ref _injectedCount);
            return false;
        }
        var staged = new byte[Hdr + frame.Length]; // the header stays zero: no offloads
        frame.CopyTo(staged.AsSpan(Hdr));
        _injected.Enqueue(staged);
        Engine.Wake();
        return true;
    }

    /// <summary>Worker: whether injected frames wait (one volatile read per round when none do).</summary>
    protected bool HasInjected => Volatile.Read(ref _injectedCount) != 0;

    /// <summary>Worker: the next injected frame (header + Ethernet frame), if any.</summary>
    protected bool TryTakeInjected(out byte[] frame)
    {
        if (_injected.TryDequeue(out frame!))
        {
            Interlocked.Decrement(ref _injectedCount);
            return true;
        }
        return false;
    }

    /// <summary>Whether a frame (header + Ethernet) is addressed to the VF: its MAC, broadcast or multicast.</summary>
    public bool ForUs(ReadOnlySpan<byte> frame)
    {
        if (frame.Length < Hdr + 6)
        {
            return false;
        }
        var dst = frame.Slice(Hdr, 6);
        return (dst[0] & 1) != 0 || dst.SequenceEqual(Mac);
    }

    // ---- INetBackendHost --------------------------------------------------------------------------

    public void Wake() => Engine.Wake();

    public void LinkChanged(bool up)
    {
        if (_device is not { } dev)
        {
            return;
        }
        if (Engine.OnWorker)
        {
            // The worker never takes the register lock itself: the link change goes through the thread pool.
            ThreadPool.QueueUserWorkItem(d => d.SetLinkUp(up), dev, preferLocal: false);
        }
        else
        {
            dev.SetLinkUp(up);
        }
    }

    void INetBackendHost.Log(string message) => Engine.Log($"{_device?.Address}: {message}");

    public void Dispose() => _backend.Dispose();
}

/// <summary>The personality specialised for one backend port type: TX bursts and frames from outside.</summary>
internal sealed class NetPersonality<TPort>(VirtqueueEngine engine, NetBackend backend, TPort port) : NetPersonality(engine, backend)
    where TPort : struct, INetPort
{
    private readonly byte[] _stage = new byte[Hdr + MaxFrame];
    private readonly TPort _port = port;

    // a port that holds frames while nothing receives is not polled then (its fd would wake the worker for nothing)
    public override int WakeFd => _port.HoldsWhileStopped && !Receiving ? -1 : _port.WakeFd;

    public override int Poll()
    {
        Rx.BeginRound();
        int work = HasInjected ? TransmitInjected() : 0;
        for (int p = 0; p < Pairs; p++)
        {
            work += Transmit(Engine.Queue((2 * p) + 1));
        }
        if (!_port.HoldsWhileStopped || Receiving)
        {
            var inbound = new InboundSink(this);
            try
            {
                work += _port.Receive(ref inbound, Engine.Burst);
            }
            finally
            {
                inbound.Close();
            }
        }
        return work + PollControl();
    }

    public override void OnIdle() => _port.Idle();

    /// <summary>
    /// One TX burst: each chain is gathered into the staging buffer (header + frame), completed, and handed to
    /// the port; a loopback port scatters it straight into the same pair's RX queue, owned for the burst.
    /// </summary>
    private int Transmit(Virtqueue? q)
    {
        if (!QueueBurst.TryOpen(Engine, q, out var tx))
        {
            return 0;
        }
        var dma = Engine.Dma;
        int burst = Engine.Burst;
        int pair = tx.Q.Index >> 1;
        var local = new LocalSink(this, tx.Q);
        int i = 0;
        try
        {
            // Look ahead: start loading the burst's packet buffers (and, for a port that turns frames around,
            // the RX buffers they go to) before the first copy, so their cache misses overlap.
            int seen = AvailRing.Prefetch(tx.Q, dma, ref tx.View, burst);
            if (seen > 0 && _port.LoopsBack)
            {
                local.Prefetch(seen);
            }
            for (; i < burst; i++)
            {
                if (!AvailRing.HasChain(tx.Q, ref tx.View, out string? fault))
                {
                    if (fault is not null)
                    {
                        Engine.Fail(tx.Q, fault, SpecRule.AvailAhead);
                    }
                    break;
                }
                var gather = new TxGather(dma, _stage);
                var err = AvailRing.Take(tx.Q, dma, ref tx.View, ref gather, out var chain);
                if (err != ChainError.None)
                {
                    Engine.Fail(tx.Q, err);
                    break;
                }
                UsedRing.Put(tx.Q, ref tx.View, chain, 0);
                Send(tx.Q, gather.Frame, pair, ref local);
            }
        }
        finally
        {
            // The looped-back frames first: the driver waiting for them sees them one publication earlier.
            try
            {
                local.Close();
            }
            finally
            {
                tx.Close(Engine);
            }
        }
        if (i > 0)
        {
            _port.TxBurstDone();
        }
        return i;
    }

    /// <summary>Frames queued by <see cref="NetPersonality.Inject"/>: out through the port from pair 0, as a TX frame would go.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private int TransmitInjected()
    {
        int n = 0;
        while (TryTakeInjected(out var frame))
        {
            if (Engine.Queue(1) is not { } tx)
            {
                CountInboundDrop(); // no TX queue was ever set up: nothing to send it from
                continue;
            }
            var local = new LocalSink(this, tx);
            try
            {
                if (!_port.Transmit(frame, 0, ref local))
                {
                    tx.Drops++;
                }
            }
            finally
            {
                local.Close();
            }
            _port.TxBurstDone();
            n++;
        }
        return n;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Send(Virtqueue q, ReadOnlySpan<byte> frame, int pair, ref LocalSink local)
    {
        int len = frame.Length;
        if (len < Hdr)
        {
            q.Errors++; // shorter than the virtio-net header: nothing to send
            q.Drops++;
            return;
        }
        q.Packets++;
        q.Bytes += len - Hdr;
        if (!_port.Transmit(frame, pair, ref local))
        {
            q.Drops++;
        }
    }
}
