using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.VirtioNet;

/// <summary>How the in-process virtio-net driver sets a device up.</summary>
public sealed record VirtioNetDriverOptions
{
    /// <summary>Queue pairs to use (capped by the device's max_virtqueue_pairs).</summary>
    public int QueuePairs { get; init; } = 1;

    public ushort QueueSize { get; init; } = 256;

    /// <summary>Wait for interrupts (true) or busy-poll the used rings (false).</summary>
    public bool UseInterrupts { get; init; } = true;

    /// <summary>Features the driver can use; the device's offer is intersected with this.</summary>
    public ulong SupportedFeatures { get; init; } =
        Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(NET_F_MAC) | Bit(NET_F_STATUS) | Bit(NET_F_MTU) |
        Bit(NET_F_MRG_RXBUF) | Bit(NET_F_CTRL_VQ) | Bit(NET_F_MQ) | Bit(NET_F_CTRL_MAC_ADDR) | Bit(F_RING_EVENT_IDX);

    /// <summary>First IOVA of the driver's DMA region (any range the device has free).</summary>
    public ulong IovaBase { get; init; } = 0x4000_0000;
}

/// <summary>Receives one frame (without the virtio-net header). The span is valid only during the call.</summary>
public delegate void FrameHandler(ReadOnlySpan<byte> frame);

/// <summary>
/// An in-process virtio-net driver on any <see cref="IVdpaDevice"/> (Linux's virtio_vdpa + virtio_net, in
/// userspace): negotiates features, keeps its rings and buffers in memory it DMA-maps into the device, refills
/// RX, sends with completion, takes interrupts (or polls), drives the control queue and follows link status.
/// <see cref="Send"/> may be called from any thread; received frames are delivered on the driver's worker.
/// </summary>
public sealed class VirtioNetDriver : IDisposable
{
    private readonly IVdpaDevice _dev;
    private readonly VirtioNetDriverOptions _options;
    private readonly MappedMemory _mem;
    private readonly DriverQueue[] _rx;
    private readonly DriverQueue[] _tx;
    private readonly DriverQueue? _ctrl;
    private readonly Lock _txLock = new();
    private readonly Lock _ctrlLock = new();
    private readonly SemaphoreSlim _wake = new(0, int.MaxValue);
    private readonly Thread _worker;
    private readonly byte[] _assembly;
    private volatile bool _stopping;
    private FrameHandler? _onFrame;
    private int _activePairs;
    private long _rxFrames, _txFrames, _txDrops, _rxErrors;

    private const int CtrlBufferSize = 64;

    public VirtioNetDriver(IVdpaDevice device, VirtioNetDriverOptions? options = null)
    {
        _dev = device;
        _options = options ?? new VirtioNetDriverOptions();
        if (_options.QueueSize == 0 || (_options.QueueSize & (_options.QueueSize - 1)) != 0)
        {
            throw new ArgumentException($"queue size {_options.QueueSize} is not a power of two");
        }

        // VIRTIO 1.2 §3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (checked), setup, DRIVER_OK.
        _dev.Reset();
        _dev.SetStatus(VirtioStatus.ACKNOWLEDGE);
        _dev.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
        ulong offered = _dev.GetDeviceFeatures();
        if (!Has(offered, F_VERSION_1))
        {
            Fail("device does not offer VERSION_1");
        }
        Features = offered & _options.SupportedFeatures;
        _dev.SetDriverFeatures(Features);
        _dev.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
        if ((_dev.GetStatus() & VirtioStatus.FEATURES_OK) == 0)
        {
            Fail("device refused FEATURES_OK");
        }

        var cfg = ReadConfig();
        Mac = cfg.Mac;
        Mtu = Has(Features, NET_F_MTU) ? cfg.Mtu : (ushort)1500;
        int maxPairs = Has(Features, NET_F_MQ) ? Math.Max((int)cfg.MaxPairs, 1) : 1;
        int pairs = Math.Clamp(_options.QueuePairs, 1, maxPairs);
        bool hasCtrl = Has(Features, NET_F_CTRL_VQ);
        if (!hasCtrl)
        {
            pairs = 1; // MQ needs the control queue to switch pairs on
        }
        ushort qsize = Math.Min(_options.QueueSize, _dev.GetVqNumMax());
        bool mrg = Has(Features, NET_F_MRG_RXBUF);
        // With MRG_RXBUF, 2 KiB buffers are chained; without it every buffer must hold a whole frame.
        int rxBuf = mrg ? 2048 : AlignUp(VirtioNetHeader.Size + Mtu + 14 + 4, 64);
        int txBuf = AlignUp(VirtioNetHeader.Size + Math.Max((int)Mtu, 1500) + 14 + 4, 64);
        bool eventIdx = Has(Features, F_RING_EVENT_IDX);

        int pairsAllocated = maxPairs; // rings for every pair the device has, so MQ can grow later
        ulong total = 0;
        for (int i = 0; i < pairsAllocated; i++)
        {
            total += DriverQueue.Footprint(qsize, rxBuf) + DriverQueue.Footprint(qsize, txBuf);
        }
        if (hasCtrl)
        {
            total += DriverQueue.Footprint(64, CtrlBufferSize);
        }
        // memfd-backed, so that a device in another process (a vhost-user back-end behind
        // VhostUserFrontend) can be given this memory by file descriptor; any other device maps it as usual.
        _mem = MappedMemory.CreateShared($"virtio-net {_dev.Name}", total);
        _dev.DmaMap(_options.IovaBase, _mem.All, writable: true);

        _rx = new DriverQueue[pairsAllocated];
        _tx = new DriverQueue[pairsAllocated];
        ulong at = 0;
        for (int i = 0; i < pairsAllocated; i++)
        {
            _rx[i] = new DriverQueue(2 * i, qsize, rxBuf, _mem, at, _options.IovaBase, eventIdx);
            at = AlignUp(_rx[i].End, 4096);
            _tx[i] = new DriverQueue((2 * i) + 1, qsize, txBuf, _mem, at, _options.IovaBase, eventIdx);
            at = AlignUp(_tx[i].End, 4096);
        }
        if (hasCtrl)
        {
            _ctrl = new DriverQueue(2 * maxPairs, 64, CtrlBufferSize, _mem, at, _options.IovaBase, eventIdx: false);
        }
        _assembly = new byte[65536 + VirtioNetHeader.Size];

        foreach (var q in AllQueues())
        {
            bool data = q != _ctrl;
            _dev.SetVqNum(q.Index, q.Size);
            _dev.SetVqAddress(q.Index, q.DescIova, q.AvailIova, q.UsedIova);
            _dev.SetVqCallback(q.Index, data && _options.UseInterrupts ? VdpaCallback.ForHandler(Wake) : null);
            _dev.SetVqReady(q.Index, true);
        }
        _dev.SetConfigCallback(VdpaCallback.ForHandler(OnConfigChanged));
        for (int i = 0; i < pairsAllocated; i++)
        {
            for (int id = 0; id < qsize; id++)
            {
                _rx[i].Post(id, rxBuf, deviceWritable: true);
            }
            _rx[i].ArmInterrupt(true);
            _rx[i].Publish();
        }
        _dev.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
        LinkUp = cfg.LinkUp;
        for (int i = 0; i < pairsAllocated; i++)
        {
            _dev.KickVq(_rx[i].Index);
        }
        _activePairs = 1;
        if (pairs > 1)
        {
            SetQueuePairs(pairs);
        }
        _worker = new Thread(Run) { IsBackground = true, Name = $"virtio-net {_dev.Name}" };
        _worker.Start();
    }

    public ulong Features { get; }

    public byte[] Mac { get; private set; }

    public ushort Mtu { get; }

    public bool LinkUp { get; private set; }

    public int ActiveQueuePairs => Volatile.Read(ref _activePairs);

    /// <summary>Raised (on the interrupt's thread) when link status changes.</summary>
    public event Action<bool>? LinkChanged;

    public (long RxFrames, long TxFrames, long TxDrops, long RxErrors) Counters =>
        (Interlocked.Read(ref _rxFrames), Interlocked.Read(ref _txFrames), Interlocked.Read(ref _txDrops), Interlocked.Read(ref _rxErrors));

    /// <summary>Sets the handler for received frames (on the worker thread).</summary>
    public void SetFrameHandler(FrameHandler? handler) => _onFrame = handler;

    /// <summary>
    /// Where data queue <paramref name="qid"/> lives in the device's IOVA space: its used ring and its buffers
    /// (what a device writes on RX; a dirty log must mark these pages).
    /// </summary>
    public (ulong UsedIova, ulong BufferIova, ulong BufferBytes) QueueArea(int qid)
    {
        if (qid < 0 || qid / 2 >= _rx.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(qid), $"data queue {qid} does not exist ({_rx.Length} pairs)");
        }
        var q = (qid % 2 == 0 ? _rx : _tx)[qid / 2];
        return (q.UsedIova, q.BufferIova, (ulong)q.Size * (ulong)q.BufferSize);
    }

    private IEnumerable<DriverQueue> AllQueues()
    {
        for (int i = 0; i < _rx.Length; i++)
        {
            yield return _rx[i];
            yield return _tx[i];
        }
        if (_ctrl is not null)
        {
            yield return _ctrl;
        }
    }

    private static int AlignUp(int v, int a) => (v + a - 1) & ~(a - 1);

    private static ulong AlignUp(ulong v, ulong a) => (v + a - 1) & ~(a - 1);

    private void Fail(string why)
    {
        _dev.SetStatus((byte)(_dev.GetStatus() | VirtioStatus.FAILED));
        throw new InvalidOperationException($"virtio-net on {_dev.Name}: {why}");
    }

    private (byte[] Mac, ushort Status, ushort MaxPairs, ushort Mtu, bool LinkUp) ReadConfig()
    {
        Span<byte> c = stackalloc byte[12];
        uint size = Math.Min(_dev.GetConfigSize(), 12u);
        _dev.GetConfig(0, c[..(int)size]);
        ushort status = BinaryPrimitives.ReadUInt16LittleEndian(c[VirtioNetConfig.Status..]);
        bool link = !Has(Features, NET_F_STATUS) || (status & VirtioNetConfig.S_LINK_UP) != 0;
        return (c[..6].ToArray(), status, BinaryPrimitives.ReadUInt16LittleEndian(c[VirtioNetConfig.MaxVirtqueuePairs..]),
            BinaryPrimitives.ReadUInt16LittleEndian(c[VirtioNetConfig.Mtu..]), link);
    }

    private void OnConfigChanged()
    {
        var cfg = ReadConfig();
        Mac = cfg.Mac;
        if (cfg.LinkUp != LinkUp)
        {
            LinkUp = cfg.LinkUp;
            LinkChanged?.Invoke(cfg.LinkUp);
        }
        if ((cfg.Status & VirtioNetConfig.S_ANNOUNCE) != 0 && _ctrl is not null)
        {
            ThreadPool.QueueUserWorkItem(_ => TryControl(VirtioNetCtrl.CLASS_ANNOUNCE, VirtioNetCtrl.CMD_ANNOUNCE_ACK, []));
        }
    }

    private void Wake() => _wake.Release();

    /// <summary>
    /// Sends one Ethernet frame (no virtio-net header). Returns false when the TX ring is full (the frame is
    /// dropped and counted) or the frame is larger than the MTU allows.
    /// </summary>
    public bool Send(ReadOnlySpan<byte> frame)
    {
        int pairs = ActiveQueuePairs;
        var q = _tx[FlowHash.Pair(frame, pairs)];
        lock (_txLock)
        {
            ReclaimTx(q);
            int id = q.TakeFree();
            if (id < 0 || VirtioNetHeader.Size + frame.Length > q.BufferSize)
            {
                if (id >= 0)
                {
                    q.ReturnFree(id);
                }
                Interlocked.Increment(ref _txDrops);
                return false;
            }
            var buf = q.Buffer(id);
            buf[..VirtioNetHeader.Size].Clear();
            frame.CopyTo(buf[VirtioNetHeader.Size..]);
            q.Post(id, VirtioNetHeader.Size + frame.Length, deviceWritable: false);
            if (q.Publish())
            {
                _dev.KickVq(q.Index);
            }
            Interlocked.Increment(ref _txFrames);
            return true;
        }
    }

    private static void ReclaimTx(DriverQueue q)
    {
        while (q.TryTakeUsed(out int id, out _))
        {
            if (id >= 0)
            {
                q.ReturnFree(id);
            }
        }
    }

    private void Run()
    {
        while (!_stopping)
        {
            bool any = false;
            for (int i = 0; i < _rx.Length; i++)
            {
                any |= PollRx(_rx[i]);
            }
            if (any)
            {
                continue;
            }
            if (_options.UseInterrupts)
            {
                foreach (var q in _rx)
                {
                    q.ArmInterrupt(true);
                }
                bool pending = false;
                foreach (var q in _rx)
                {
                    pending |= q.HasUsed;
                }
                if (!pending)
                {
                    _wake.Wait(200);
                }
            }
            else
            {
                Thread.Yield();
            }
        }
    }

    private bool PollRx(DriverQueue q)
    {
        bool mrg = Has(Features, NET_F_MRG_RXBUF);
        bool any = false;
        int budget = q.Size;
        while (budget-- > 0 && q.TryTakeUsed(out int id, out int len))
        {
            any = true;
            if (id < 0 || len < VirtioNetHeader.Size)
            {
                Interlocked.Increment(ref _rxErrors);
                if (id >= 0)
                {
                    q.Post(id, q.BufferSize, true);
                }
                continue;
            }
            var buf = q.Buffer(id);
            int frameLen = len - VirtioNetHeader.Size;
            ushort numBuffers = mrg ? BinaryPrimitives.ReadUInt16LittleEndian(buf[VirtioNetHeader.NumBuffers..]) : (ushort)1;
            if (numBuffers <= 1)
            {
                // Counted before delivery: whoever has seen the frame in the handler sees it counted.
                Interlocked.Increment(ref _rxFrames);
                _onFrame?.Invoke(buf.Slice(VirtioNetHeader.Size, frameLen));
                q.Post(id, q.BufferSize, true);
            }
            else
            {
                // MRG_RXBUF: the frame continues in the next num_buffers-1 used entries.
                int total = 0;
                bool ok = Append(buf.Slice(VirtioNetHeader.Size, frameLen), ref total);
                q.Post(id, q.BufferSize, true);
                for (int k = 1; k < numBuffers; k++)
                {
                    if (!q.TryTakeUsed(out int id2, out int len2) || id2 < 0 || len2 < 0)
                    {
                        ok = false;
                        break;
                    }
                    ok &= Append(q.Buffer(id2)[..len2], ref total);
                    q.Post(id2, q.BufferSize, true);
                }
                if (ok)
                {
                    Interlocked.Increment(ref _rxFrames);
                    _onFrame?.Invoke(_assembly.AsSpan(0, total));
                }
                else
                {
                    Interlocked.Increment(ref _rxErrors);
                }
            }
        }
        if (any && q.Publish())
        {
            _dev.KickVq(q.Index);
        }
        return any;
    }

    private bool Append(ReadOnlySpan<byte> part, ref int total)
    {
        if (total + part.Length > _assembly.Length)
        {
            return false;
        }
        part.CopyTo(_assembly.AsSpan(total));
        total += part.Length;
        return true;
    }

    // ---- control queue ------------------------------------------------------------------------

    /// <summary>Sets the MAC through the control queue (CTRL_MAC_ADDR_SET).</summary>
    public void SetMac(ReadOnlySpan<byte> mac)
    {
        if (mac.Length != 6)
        {
            throw new ArgumentException("MAC must be 6 bytes");
        }
        if (!Has(Features, NET_F_CTRL_MAC_ADDR))
        {
            throw new InvalidOperationException("device did not negotiate CTRL_MAC_ADDR");
        }
        Control(VirtioNetCtrl.CLASS_MAC, VirtioNetCtrl.CMD_MAC_ADDR_SET, mac);
        Mac = mac.ToArray();
    }

    /// <summary>Switches the number of queue pairs in use (CTRL_MQ_VQ_PAIRS_SET).</summary>
    public void SetQueuePairs(int pairs)
    {
        if (pairs < 1 || pairs > _rx.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(pairs), $"queue pairs must be 1..{_rx.Length}");
        }
        if (!Has(Features, NET_F_MQ))
        {
            throw new InvalidOperationException("device did not negotiate MQ");
        }
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)pairs);
        Control(VirtioNetCtrl.CLASS_MQ, VirtioNetCtrl.CMD_MQ_VQ_PAIRS_SET, b);
        Volatile.Write(ref _activePairs, pairs);
    }

    private void Control(byte cls, byte cmd, ReadOnlySpan<byte> data)
    {
        byte ack = TryControl(cls, cmd, data);
        if (ack != VirtioNetCtrl.OK)
        {
            throw new InvalidOperationException($"virtio-net on {_dev.Name}: control command {cls}/{cmd} answered {(ack == 0xFF ? "nothing" : "ERR")}");
        }
    }

    /// <summary>Runs one control command; returns the device's ack, or 0xFF if it never answered (1 s).</summary>
    private byte TryControl(byte cls, byte cmd, ReadOnlySpan<byte> data)
    {
        if (_ctrl is null)
        {
            throw new InvalidOperationException("device has no control queue");
        }
        if (data.Length > CtrlBufferSize)
        {
            throw new ArgumentException("control payload too large");
        }
        lock (_ctrlLock)
        {
            int h = _ctrl.TakeFree(), d = data.Length > 0 ? _ctrl.TakeFree() : -1, a = _ctrl.TakeFree();
            try
            {
                var hb = _ctrl.Buffer(h);
                hb[0] = cls;
                hb[1] = cmd;
                _ctrl.Buffer(a)[0] = 0xFF;
                if (d >= 0)
                {
                    data.CopyTo(_ctrl.Buffer(d));
                    _ctrl.PostChain([(h, 2, false), (d, data.Length, false), (a, 1, true)]);
                }
                else
                {
                    _ctrl.PostChain([(h, 2, false), (a, 1, true)]);
                }
                _ctrl.Publish();
                _dev.KickVq(_ctrl.Index);
                var deadline = Environment.TickCount64 + 1000;
                while (Environment.TickCount64 < deadline)
                {
                    if (_ctrl.TryTakeUsed(out _, out _))
                    {
                        return _ctrl.Buffer(a)[0];
                    }
                    Thread.Sleep(1);
                }
                return 0xFF;
            }
            finally
            {
                _ctrl.ReturnFree(a);
                if (d >= 0)
                {
                    _ctrl.ReturnFree(d);
                }
                _ctrl.ReturnFree(h);
            }
        }
    }

    public void Dispose()
    {
        if (_stopping)
        {
            return;
        }
        _stopping = true;
        _wake.Release();
        _worker.Join();
        try
        {
            _dev.Reset();
            foreach (var q in AllQueues())
            {
                _dev.SetVqCallback(q.Index, null);
            }
            _dev.SetConfigCallback(null);
        }
        finally
        {
            _dev.DmaUnmap(_options.IovaBase, _mem.Length);
            _mem.Dispose();
            _wake.Dispose();
        }
    }
}
