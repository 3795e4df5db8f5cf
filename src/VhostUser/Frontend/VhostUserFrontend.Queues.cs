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
                    _client.ThrowIfBroken();
                    _memory.EnsureAtBackend();
                    StartQueue(qid);
                    EnableQueue(qid, true);
                }
            }
            else
            {
                v.Ready = false;
                if (v.Started)
                {
                    _client.ThrowIfBroken();
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
            if (v.Started && !_client.IsBroken && CallFdFor(v) != v.SentCall)
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
        var n = _notifiers.Get(qid);
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
    public bool HasHostNotifier(int qid)
    {
        Queue(qid); // range check
        return _notifiers.Get(qid) is not null;
    }

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
        var (desc, avail, used) = TranslateRing(q);
        _client.SetVringState(VhostUserRequest.SET_VRING_NUM, q, v.Num);
        _client.SetVringState(VhostUserRequest.SET_VRING_BASE, q, VringBase.ToWire(v.State, Packed));
        _client.SetVringAddr(q, desc, used, avail, UsedLogAddress(q));
        v.Started = true;
        SendCall(q);
        _client.SetVringFd(VhostUserRequest.SET_VRING_KICK, q, v.Kick);
    }

    /// <summary>Ring <paramref name="q"/>'s areas as this process's addresses (what SET_VRING_ADDR carries).</summary>
    private (ulong Desc, ulong Avail, ulong Used) TranslateRing(int q)
    {
        var v = _vqs[q];
        bool eventIdx = Has(_driverFeatures, F_RING_EVENT_IDX);
        ulong num = v.Num;
        return Packed
            ? (_memory.Translate(q, v.Desc, 16 * num, "descriptor ring"),
               _memory.Translate(q, v.Avail, 4, "driver event suppression area"),
               _memory.Translate(q, v.Used, 4, "device event suppression area"))
            : (_memory.Translate(q, v.Desc, 16 * num, "descriptor table"),
               _memory.Translate(q, v.Avail, 4 + (2 * num) + (eventIdx ? 2UL : 0), "avail ring"),
               _memory.Translate(q, v.Used, 4 + (8 * num) + (eventIdx ? 2UL : 0), "used ring"));
    }

    private void SendCall(int q)
    {
        var v = _vqs[q];
        var fd = CallFdFor(v);
        _client.SetVringFd(VhostUserRequest.SET_VRING_CALL, q, fd);
        v.SentCall = fd;
    }

    /// <summary>SET_VRING_ENABLE, when rings start disabled (bit 30 offered, as every modern back-end does).</summary>
    private void EnableQueue(int q, bool enable)
    {
        if (!RingsNeedEnable)
        {
            return;
        }
        _client.SetVringState(VhostUserRequest.SET_VRING_ENABLE, q, enable ? 1u : 0u);
    }

    /// <summary>SET_VRING_ENABLE 0, then GET_VRING_BASE (stops the ring); its answer is the saved state.</summary>
    private void StopQueue(int q)
    {
        var v = _vqs[q];
        try
        {
            EnableQueue(q, false);
            uint b = _client.GetVringBase(q);
            if (!Packed && b > 0xFFFF)
            {
                throw _client.Broken($"GET_VRING_BASE for split ring {q} answered 0x{b:x}, beyond a 16-bit index");
            }
            v.State = VringBase.FromWire(b, Packed);
        }
        finally
        {
            v.Started = false;
            v.SentCall = null;
        }
    }

    // ---- interrupts --------------------------------------------------------------------------------

    /// <summary>Queue <paramref name="q"/>'s call eventfd fired (on the call fan-in thread): run its handler (the "interrupt").</summary>
    private void Interrupt(int q)
    {
        var v = _vqs[q];
        Interlocked.Increment(ref v.Interrupts);
        Volatile.Read(ref v.Callback)?.Invoke();
    }
}
