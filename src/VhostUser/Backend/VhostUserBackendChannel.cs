using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The back-end channel (SET_BACKEND_REQ_FD): messages the back-end starts. CONFIG_CHANGE_MSG is sent at
/// once (from the device's interrupt thread); VRING_HOST_NOTIFIER_MSGs are queued while a request is
/// handled and sent by <see cref="Flush"/> once its reply is out. Their acks are never waited for: QEMU
/// services this channel from the main loop, which may be blocked waiting for our reply to its next
/// request (DPDK waits, and relies on the front-end). The session polls <see cref="AckFd"/> and calls
/// <see cref="ReadAck"/>. No send waits longer than the send timeout for room: a front-end that does not
/// read its end has the channel closed, never the session thread or the interrupt thread hung.
/// </summary>
public sealed class VhostUserBackendChannel : IDisposable
{
    /// <summary>Most acks outstanding before the front-end is taken not to answer and none are asked for.</summary>
    private const int MaxOutstandingAcks = 64;

    private readonly VhostUserSessionOptions _options;
    private readonly Action<string> _log;
    private readonly Lock _lock = new(); // the config callback sends from the device's interrupt thread
    private UnixSocket? _socket;
    private readonly List<UnixSocket> _retired = []; // shut down, closed by the session thread
    private int _retiredCount;
    private readonly List<HostNotifierOp> _ops = [];
    private readonly Queue<(int Ring, bool Remove)> _acks = new();
    private bool _acksAbandoned;

    private readonly record struct HostNotifierOp(int Ring, bool Remove, SafeFd? Fd, ulong Offset, ulong Size);

    public VhostUserBackendChannel(VhostUserSessionOptions options, Action<string> log)
    {
        _options = options;
        _log = log;
    }

    /// <summary>True while the front-end's channel is open.</summary>
    public bool IsOpen
    {
        get
        {
            lock (_lock)
            {
                return _socket is not null;
            }
        }
    }

    /// <summary>The channel's descriptor while acks are outstanding (the session polls it), else -1.</summary>
    public int AckFd => _acks.Count > 0 && _socket is { } s ? s.Fd : -1;

    /// <summary>SET_BACKEND_REQ_FD: the new channel replaces the old one.</summary>
    public void Attach(UnixSocket socket)
    {
        lock (_lock)
        {
            _socket?.Dispose();
            _socket = socket;
        }
        _acks.Clear(); // acks asked on the old channel cannot arrive on the new one
    }

    /// <summary>Queues ring <paramref name="ring"/>'s doorbell page (<paramref name="size"/> bytes of <paramref name="fd"/> at <paramref name="offset"/>).</summary>
    public void OfferHostNotifier(int ring, SafeFd fd, ulong offset, ulong size) => _ops.Add(new HostNotifierOp(ring, false, fd, offset, size));

    /// <summary>Queues the removal of ring <paramref name="ring"/>'s doorbell page.</summary>
    public void RemoveHostNotifier(int ring) => _ops.Add(new HostNotifierOp(ring, true, null, 0, 0));

    /// <summary>
    /// Sends the queued host-notifier messages in order, asking for acks when <paramref name="askAcks"/>
    /// (REPLY_ACK negotiated and someone still reads them).
    /// </summary>
    public void Flush(bool askAcks)
    {
        foreach (var op in _ops)
        {
            SendHostNotifier(op, askAcks && !_acksAbandoned);
        }
        _ops.Clear();
    }

    private void SendHostNotifier(HostNotifierOp op, bool needReply)
    {
        var msg = new byte[VhostUserWire.HeaderSize + VringArea.WireSize];
        VhostUserCodec.WriteHeader(msg, (uint)VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG,
            VhostUserWire.FlagVersion | (needReply ? VhostUserWire.FlagNeedReply : 0), VringArea.WireSize);
        ulong indexFlags = (uint)op.Ring | (op.Remove ? VhostUserWire.VringNoFdMask : 0UL);
        new VringArea(indexFlags, op.Size, op.Offset).Write(msg.AsSpan(VhostUserWire.HeaderSize));
        if (Send(msg, op.Remove ? [] : [op.Fd!.Fd], "VRING_HOST_NOTIFIER_MSG") is { } failure)
        {
            if (failure.Length == 0)
            {
                _acks.Clear(); // no channel (any more): none can arrive
            }
            else
            {
                _log($"ring {op.Ring}: cannot send the host notifier {(op.Remove ? "removal" : "offer")}: {failure}");
            }
            return;
        }
        _log(op.Remove
            ? $"ring {op.Ring}: host notifier removed"
            : $"ring {op.Ring}: host notifier offered ({op.Size} bytes at offset 0x{op.Offset:x} of the device fd)");
        if (needReply)
        {
            _acks.Enqueue((op.Ring, op.Remove));
            if (_acks.Count > MaxOutstandingAcks)
            {
                _acksAbandoned = true;
                _acks.Clear();
                _log($"the front-end left {MaxOutstandingAcks} host-notifier messages unanswered: no more acks are asked for");
            }
        }
    }

    /// <summary>CONFIG_CHANGE_MSG (the device's config interrupt; runs on its thread).</summary>
    public void SendConfigChange()
    {
        Span<byte> h = stackalloc byte[VhostUserWire.HeaderSize];
        VhostUserCodec.WriteHeader(h, (uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG, VhostUserWire.FlagVersion, 0);
        if (Send(h, [], "CONFIG_CHANGE_MSG") is { Length: > 0 } failure)
        {
            _log($"config-change notification failed: {failure}");
        }
    }

    /// <summary>
    /// Sends one message if the channel is open. Returns null when sent, "" when there was no channel (or
    /// it was just closed for not reading), otherwise why the send failed. Never waits longer than
    /// <see cref="VhostUserSessionOptions.BackendSendTimeoutMs"/> for room: on timeout the channel is shut
    /// down (a message the kernel took only part of is cut off, never followed by another).
    /// </summary>
    private string? Send(ReadOnlySpan<byte> msg, ReadOnlySpan<int> fds, string what)
    {
        try
        {
            lock (_lock)
            {
                var s = _socket;
                if (s is null)
                {
                    return ""; // gone (closed by the front-end): nothing is mapped through it any more
                }
                int timeoutMs = Math.Max(0, _options.BackendSendTimeoutMs);
                if (s.TrySend(msg, fds, timeoutMs))
                {
                    return null;
                }
                _log($"back-end channel: front-end not reading, closing it ({what} not taken within {timeoutMs} ms)");
                // This may run on the interrupt thread while the session thread polls or reads the channel:
                // shut it down now (the front-end sees it end) and leave closing the descriptor to the session thread.
                s.Shutdown();
                _socket = null;
                _retired.Add(s);
                Volatile.Write(ref _retiredCount, _retired.Count);
                return "";
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            return e.Message;
        }
    }

    /// <summary>Reads one ack (the channel is readable or hung up while acks are outstanding); a bad one closes the channel.</summary>
    public void ReadAck()
    {
        var s = _socket;
        if (s is null)
        {
            _acks.Clear();
            return;
        }
        string? error = null;
        try
        {
            const VhostUserBackendRequest code = VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG;
            ulong v = VhostUserReplyReader.ReadU64(s, (uint)code, code.ToString(), _options.PayloadTimeoutMs,
                static c => VhostUserCodec.Name((VhostUserBackendRequest)c), "front-end");
            if (!_acks.TryDequeue(out var pending))
            {
                error = "a host-notifier ack that was not asked for";
            }
            else if (v != 0)
            {
                _log(pending.Remove
                    ? $"ring {pending.Ring}: the front-end answered {v} to the host notifier removal (it may have dropped it already)"
                    : $"ring {pending.Ring}: the front-end refused the host notifier ({v}; QEMU needs page-per-vq=on on the virtio-net-pci device); kicks keep going through the eventfd relay");
            }
        }
        catch (VhostUserReplyException e)
        {
            error = e.Message;
        }
        if (error is not null)
        {
            _log($"back-end channel: {error}; closing it");
            _acks.Clear();
            lock (_lock)
            {
                _socket?.Dispose();
                _socket = null;
            }
        }
    }

    /// <summary>Closes channels shut down by a timed-out send (session thread, outside any use of them).</summary>
    public void CloseRetired()
    {
        if (Volatile.Read(ref _retiredCount) == 0)
        {
            return; // the usual case: no wait for the lock an interrupt-thread send may hold
        }
        lock (_lock)
        {
            foreach (var s in _retired)
            {
                s.Dispose();
            }
            _retired.Clear();
            Volatile.Write(ref _retiredCount, 0);
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _socket?.Dispose();
            _socket = null;
        }
        CloseRetired();
    }
}
