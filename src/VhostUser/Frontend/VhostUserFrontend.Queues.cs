using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.VhostUser.Frontend;

public sealed partial class VhostUserFrontend
{
    /// <summary>One virtqueue as the driver set it up, and how it is wired to the back-end.</summary>
    private sealed class Vq
    {
        /// <summary>Kick eventfd: sent with SET_VRING_KICK, written by <see cref="KickVq"/> without a host notifier.</summary>
        public readonly EventFd Kick = EventFd.Create();

        /// <summary>Call eventfd: sent with SET_VRING_CALL unless the driver gave an eventfd callback; polled by the call thread.</summary>
        public readonly EventFd Call = EventFd.Create();

        public uint Num;
        public ulong Desc, Avail, Used;
        public bool Ready;
        public bool Started;
        public VdpaVqState State;
        public VdpaCallback? Callback;

        /// <summary>The call eventfd the back-end has now (ours or the driver's).</summary>
        public EventFd? SentCall;

        /// <summary>The back-end's doorbell page (VRING_HOST_NOTIFIER_MSG); read without a lock by <see cref="KickVq"/>.</summary>
        public MappedMemory? Notifier;

        public long NotifierKicks, EventFdKicks, Interrupts;
    }

    private Vq Queue(int qid)
    {
        if ((uint)qid >= (uint)_vqs.Length)
        {
            ThrowBadQueue(qid);
        }
        return _vqs[qid];
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowBadQueue(int qid) =>
        throw new ArgumentOutOfRangeException(nameof(qid), $"{Name}: queue {qid} does not exist (device has {_vqs.Length})");

    private Vq StoppedQueue(int qid, string what)
    {
        var v = Queue(qid);
        if (v.Started)
        {
            throw new InvalidOperationException($"{Name}: queue {qid} is running; disable it before you {what}");
        }
        return v;
    }

    public ushort GetVqNumMax() => _options.MaxQueueSize;

    public ushort GetVqNumMin() => 1;

    public ushort GetVqSize(int qid)
    {
        if ((uint)qid >= (uint)_vqs.Length)
        {
            return 0;
        }
        lock (_ctl)
        {
            return (ushort)_vqs[qid].Num;
        }
    }

    public void SetVqNum(int qid, uint num)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            var v = StoppedQueue(qid, "change its size");
            if (num == 0 || (num & (num - 1)) != 0 || num > _options.MaxQueueSize)
            {
                throw new ArgumentOutOfRangeException(nameof(num), $"{Name}: queue {qid} size {num} must be a power of two in 1..{_options.MaxQueueSize}");
            }
            v.Num = num;
        }
    }

    /// <summary>Records the ring IOVAs; they are translated to this process's addresses when the queue starts.</summary>
    public void SetVqAddress(int qid, ulong descArea, ulong driverArea, ulong deviceArea)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            var v = StoppedQueue(qid, "change its ring addresses");
            v.Desc = descArea;
            v.Avail = driverArea;
            v.Used = deviceArea;
        }
    }

    /// <summary>
    /// true: the queue starts at once when the driver is already at DRIVER_OK, otherwise at DRIVER_OK.
    /// false: a running queue is stopped with GET_VRING_BASE, whose answer becomes its saved state.
    /// </summary>
    public void SetVqReady(int qid, bool ready)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            var v = Queue(qid);
            if (ready)
            {
                v.Ready = true;
                if (!v.Started && !_suspended && (_status & VirtioStatus.DRIVER_OK) != 0)
                {
                    ThrowIfBroken();
                    EnsureMemory();
                    StartQueue(qid);
                    EnableQueue(qid, true);
                }
            }
            else
            {
                v.Ready = false;
                if (v.Started)
                {
                    ThrowIfBroken();
                    StopQueue(qid);
                }
            }
        }
    }

    public bool GetVqReady(int qid)
    {
        lock (_ctl)
        {
            return Queue(qid).Ready;
        }
    }

    public void SetVqState(int qid, VdpaVqState state)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            StoppedQueue(qid, "set its state").State = state;
        }
    }

    /// <summary>The state saved when the queue last stopped (or the one set); a running queue has none to give.</summary>
    public VdpaVqState GetVqState(int qid)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            return StoppedQueue(qid, "read its state (GET_VRING_BASE stops it)").State;
        }
    }

    /// <summary>
    /// A handler runs on the call thread; an eventfd is given to the back-end as the call fd (no extra hop).
    /// Changing between the two on a running queue sends SET_VRING_CALL again.
    /// </summary>
    public void SetVqCallback(int qid, VdpaCallback? callback)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            var v = Queue(qid);
            Volatile.Write(ref v.Callback, callback);
            if (v.Started && _broken is null && CallFdFor(v) != v.SentCall)
            {
                SendCall(qid);
            }
        }
    }

    private static EventFd CallFdFor(Vq v) => Volatile.Read(ref v.Callback)?.EventFd ?? v.Call;

    /// <summary>
    /// The doorbell: a 16-bit store of the queue index to the host-notifier page when the back-end mapped
    /// one, else an eventfd write. No lock and no allocation.
    /// </summary>
    public void KickVq(int qid)
    {
        var v = Queue(qid);
        var n = Volatile.Read(ref v.Notifier);
        if (n is not null)
        {
            Mmio.Write16(n, 0, (ushort)qid);
            Interlocked.Increment(ref v.NotifierKicks);
        }
        else
        {
            v.Kick.Signal();
            Interlocked.Increment(ref v.EventFdKicks);
        }
    }

    public VdpaNotificationArea GetVqNotification(int qid) =>
        throw new VdpaNotSupportedException($"{Name}: a vhost-user front-end has no PCI doorbell BAR (kicks are eventfds or host-notifier pages)");

    /// <summary>True when queue <paramref name="qid"/> kicks through a host-notifier page from the back-end.</summary>
    public bool HasHostNotifier(int qid) => Volatile.Read(ref Queue(qid).Notifier) is not null;

    /// <summary>Kicks written to the queue's host-notifier page.</summary>
    public long HostNotifierKicks(int qid) => Interlocked.Read(ref Queue(qid).NotifierKicks);

    /// <summary>Kicks written to the queue's kick eventfd.</summary>
    public long EventFdKicks(int qid) => Interlocked.Read(ref Queue(qid).EventFdKicks);

    /// <summary>Calls taken from the queue's own call eventfd (an eventfd callback bypasses this count).</summary>
    public long Interrupts(int qid) => Interlocked.Read(ref Queue(qid).Interrupts);

    public VdpaVqStats GetVqStats(int qid)
    {
        var v = Queue(qid);
        return new VdpaVqStats(0, 0, Interlocked.Read(ref v.NotifierKicks) + Interlocked.Read(ref v.EventFdKicks),
            Interlocked.Read(ref v.Interrupts), 0, 0);
    }

    // ---- wiring a queue to the back-end (caller holds _ctl) ----------------------------------------

    /// <summary>SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR (front-end VAs), SET_VRING_CALL, SET_VRING_KICK.</summary>
    private void StartQueue(int q)
    {
        var v = _vqs[q];
        if (v.Num == 0)
        {
            throw new InvalidOperationException($"{Name}: queue {q} has no size (SetVqNum first)");
        }
        bool eventIdx = Has(_driverFeatures, F_RING_EVENT_IDX);
        ulong num = v.Num;
        ulong desc, avail, used;
        if (Packed)
        {
            desc = TranslateRing(q, v.Desc, 16 * num, "descriptor ring");
            avail = TranslateRing(q, v.Avail, 4, "driver event suppression area");
            used = TranslateRing(q, v.Used, 4, "device event suppression area");
        }
        else
        {
            desc = TranslateRing(q, v.Desc, 16 * num, "descriptor table");
            avail = TranslateRing(q, v.Avail, 4 + (2 * num) + (eventIdx ? 2UL : 0), "avail ring");
            used = TranslateRing(q, v.Used, 4 + (8 * num) + (eventIdx ? 2UL : 0), "used ring");
        }
        uint baseValue = VringBase.Encode(v.State, Packed);
        Span<byte> st = stackalloc byte[VhostUserWire.VringStateSize];
        new VringState((uint)q, v.Num).Write(st);
        Request(VhostUserRequest.SET_VRING_NUM, st);
        new VringState((uint)q, baseValue).Write(st);
        Request(VhostUserRequest.SET_VRING_BASE, st);
        Span<byte> addr = stackalloc byte[VhostUserWire.VringAddrSize];
        new VringAddr((uint)q, 0, desc, used, avail, 0).Write(addr);
        Request(VhostUserRequest.SET_VRING_ADDR, addr);
        v.Started = true;
        SendCall(q);
        SendU64(VhostUserRequest.SET_VRING_KICK, (ulong)q, [v.Kick.Fd]);
    }

    private void SendCall(int q)
    {
        var v = _vqs[q];
        var fd = CallFdFor(v);
        SendU64(VhostUserRequest.SET_VRING_CALL, (ulong)q, [fd.Fd]);
        v.SentCall = fd;
    }

    /// <summary>SET_VRING_ENABLE, when rings start disabled (bit 30 offered, as every modern back-end does).</summary>
    private void EnableQueue(int q, bool enable)
    {
        if (!RingsNeedEnable)
        {
            return;
        }
        Span<byte> st = stackalloc byte[VhostUserWire.VringStateSize];
        new VringState((uint)q, enable ? 1u : 0u).Write(st);
        Request(VhostUserRequest.SET_VRING_ENABLE, st);
    }

    /// <summary>SET_VRING_ENABLE 0, then GET_VRING_BASE (stops the ring); its answer is the saved state.</summary>
    private void StopQueue(int q)
    {
        var v = _vqs[q];
        try
        {
            EnableQueue(q, false);
            Span<byte> st = stackalloc byte[VhostUserWire.VringStateSize];
            new VringState((uint)q, 0).Write(st);
            var reply = Query(VhostUserRequest.GET_VRING_BASE, st, VhostUserWire.VringStateSize);
            var r = VringState.Read(reply);
            if (r.Index != (uint)q)
            {
                throw Broken($"GET_VRING_BASE for ring {q} answered ring {r.Index}");
            }
            v.State = VringBase.Decode(r.Num, Packed)
                ?? throw Broken($"GET_VRING_BASE for split ring {q} answered 0x{r.Num:x}, beyond a 16-bit index");
        }
        finally
        {
            v.Started = false;
            v.SentCall = null;
        }
    }

    // ---- interrupts --------------------------------------------------------------------------------

    /// <summary>Waits on every queue's call eventfd and runs the queue's handler (the "interrupt").</summary>
    private void CallLoop()
    {
        var poll = new PollSet();
        var fds = new int[_vqs.Length + 1];
        fds[0] = _stop.Fd;
        for (int i = 0; i < _vqs.Length; i++)
        {
            fds[i + 1] = _vqs[i].Call.Fd;
        }
        poll.Reset(fds);
        while (true)
        {
            poll.Wait(-1);
            if (poll.IsReadable(0))
            {
                return;
            }
            for (int i = 0; i < _vqs.Length; i++)
            {
                var v = _vqs[i];
                if (!poll.IsReadable(i + 1) || !v.Call.TryConsume(out _))
                {
                    continue;
                }
                Interlocked.Increment(ref v.Interrupts);
                try
                {
                    Volatile.Read(ref v.Callback)?.Invoke();
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    Log($"queue {i}: callback failed: {e.Message}");
                }
            }
        }
    }
}
