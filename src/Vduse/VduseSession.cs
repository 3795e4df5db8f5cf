using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.Vduse;

/// <summary>
/// Answers the kernel's requests for one VDUSE device by driving the vDPA device: the kernel's virtio status
/// becomes the device's (FEATURES_OK: the driver's features; DRIVER_OK: IOTLB regions mapped, every ready
/// queue configured from VDUSE_VQ_GET_INFO, kick eventfds relayed to the doorbell, interrupts injected with
/// VDUSE_VQ_INJECT_IRQ; 0: reset), GET_VQ_STATE reads the device's ring state, UPDATE_IOTLB remaps. Config
/// changes of the device (link status) are copied into the kernel's config space and signalled with a config
/// interrupt. Every request is checked: a bad one gets a FAILED reply and one log line per kind.
/// Thread-safe: requests, config changes and disposal are serialised by one lock.
/// </summary>
public sealed class VduseSession : IDisposable
{
    private readonly IVdpaDevice _device;
    private readonly IVduseKernel _kernel;
    private readonly VduseDeviceSpec _spec;
    private readonly Action<string> _log;
    private readonly Lock _lock = new();
    private readonly Lock _iotlbLock = new(); // the IOTLB: requests and the kick relay (never held while waiting for the relay)
    private readonly Lock _configLock = new(); // never held while taking _lock: the config interrupt may come from a thread the device waits for
    private readonly VduseIotlb _iotlb;
    private readonly HashSet<string> _logged = [];
    private readonly EventFd?[] _kicks;
    private readonly VdpaCallback[] _irqs;
    private readonly VdpaCallback _configCallback;
    private EventFdFanIn? _relay;
    private byte[] _config;
    private byte _status;
    private ulong _features;
    private volatile bool _running;
    private volatile bool _disposed;
    private int _irqErrorLogged;
    private int _kickRescans;
    private volatile bool _bounceMapped;
    private long _interrupts;
    private long _kicksRelayed;

    public VduseSession(IVdpaDevice device, IVduseKernel kernel, VduseDeviceSpec spec, Action<string> log)
    {
        _device = device ?? throw new ArgumentNullException(nameof(device));
        _kernel = kernel ?? throw new ArgumentNullException(nameof(kernel));
        _spec = spec ?? throw new ArgumentNullException(nameof(spec));
        _log = log ?? throw new ArgumentNullException(nameof(log));
        _iotlb = new VduseIotlb(device, kernel, log);
        _config = (byte[])spec.Config.Clone();
        _kicks = new EventFd?[spec.VqNum];
        _irqs = new VdpaCallback[spec.VqNum];
        for (int q = 0; q < spec.VqNum; q++)
        {
            uint qi = (uint)q;
            _irqs[q] = VdpaCallback.ForHandler(() => Inject(qi));
        }
        _configCallback = VdpaCallback.ForHandler(OnConfigChanged);
    }

    /// <summary>The status byte the kernel last set (and the device accepted).</summary>
    public byte Status { get { lock (_lock) { return _status; } } }

    /// <summary>Features the driver negotiated (0 before FEATURES_OK).</summary>
    public ulong NegotiatedFeatures { get { lock (_lock) { return _features; } } }

    /// <summary>True between DRIVER_OK and the next reset.</summary>
    public bool Running { get { lock (_lock) { return _running; } } }

    /// <summary>IOTLB regions currently mapped into the device.</summary>
    public int MappedRegions { get { lock (_iotlbLock) { return _iotlb.Count; } } }

    /// <summary>Kicks before which the IOTLB was scanned again (virtio_vdpa: the bounce map appears with the first buffer).</summary>
    public int KickRescans => Volatile.Read(ref _kickRescans);

    public long Interrupts => Interlocked.Read(ref _interrupts);

    public long KicksRelayed => Interlocked.Read(ref _kicksRelayed);

    /// <summary>
    /// Handles one message read from the device fd and writes the reply into <paramref name="reply"/>
    /// (<see cref="VduseMessages.Size"/> bytes). Returns false when there is nothing to reply (a message
    /// too short to carry a request id).
    /// </summary>
    public bool Handle(ReadOnlySpan<byte> message, Span<byte> reply)
    {
        if (!VduseMessages.TryDecode(message, out var req, out string? error))
        {
            LogOnce("short", $"kernel message refused: {error}");
            if (message.Length < 8)
            {
                return false;
            }
            VduseMessages.EncodeResult(reply, BitConverter.ToUInt32(message[4..8]), ok: false);
            return true;
        }
        lock (_lock)
        {
            if (_disposed)
            {
                VduseMessages.EncodeResult(reply, req.RequestId, ok: false);
                return true;
            }
            switch ((VduseRequestType)req.Type)
            {
                case VduseRequestType.SetStatus:
                    VduseMessages.EncodeResult(reply, req.RequestId, SetStatus(req.Status));
                    break;
                case VduseRequestType.GetVqState:
                    GetVqState(req, reply);
                    break;
                case VduseRequestType.UpdateIotlb:
                    VduseMessages.EncodeResult(reply, req.RequestId, UpdateIotlb(req.IovaStart, req.IovaLast));
                    break;
                default:
                    LogOnce($"type-{req.Type}", $"kernel request of unknown type {req.Type} (#{req.RequestId}): FAILED reply");
                    VduseMessages.EncodeResult(reply, req.RequestId, ok: false);
                    break;
            }
        }
        return true;
    }

    private bool SetStatus(byte s)
    {
        byte prev = _status;
        try
        {
            if (s == 0)
            {
                Stop();
                _device.Reset();
                _features = 0;
                _status = 0;
                return true;
            }
            if ((s & VirtioStatus.FAILED) != 0 || ((prev & VirtioStatus.DRIVER_OK) != 0 && (s & VirtioStatus.DRIVER_OK) == 0))
            {
                Stop();
            }
            if ((s & VirtioStatus.FEATURES_OK) != 0 && (prev & VirtioStatus.FEATURES_OK) == 0 && !Negotiate())
            {
                return false;
            }
            if ((s & VirtioStatus.DRIVER_OK) != 0 && (prev & VirtioStatus.DRIVER_OK) == 0 && (s & VirtioStatus.FAILED) == 0)
            {
                if ((s & VirtioStatus.FEATURES_OK) == 0)
                {
                    LogOnce("driver-ok-early", $"SET_STATUS 0x{s:x2}: DRIVER_OK without FEATURES_OK refused");
                    return false;
                }
                Start();
            }
            _status = s;
            return true;
        }
        catch (Exception e) when (e is VdpaException or IOException or ArgumentException)
        {
            _log($"SET_STATUS {VirtioStatus.Describe(s)} failed: {e.Message}");
            Stop();
            try
            {
                _device.Reset(); // a half-started device (some queues ready) goes back to a clean reset
                for (int q = 0; q < _spec.VqNum; q++)
                {
                    _device.SetVqCallback(q, null);
                }
            }
            catch (VdpaException r)
            {
                _log($"device reset: {r.Message}");
            }
            return false;
        }
    }

    private bool Negotiate()
    {
        ulong acked = _kernel.GetDriverFeatures();
        if ((acked & ~_spec.Features) != 0)
        {
            LogOnce("features", $"driver acked features 0x{acked & ~_spec.Features:x} that were not offered: FEATURES_OK refused");
            return false;
        }
        ulong toDevice = (acked & _spec.DeviceFeatures) | (_spec.DeviceFeatures & VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM));
        _device.Reset();
        _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
        _device.SetDriverFeatures(toDevice);
        _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
        if ((_device.GetStatus() & VirtioStatus.FEATURES_OK) == 0)
        {
            _log($"the device refused features 0x{toDevice:x} (FEATURES_OK not set)");
            return false;
        }
        _features = acked;
        SyncConfig(inject: false);
        return true;
    }

    private void Start()
    {
        RescanIotlb(fromKick: false);
        bool packed = VirtioFeature.Has(_features, VirtioFeature.F_RING_PACKED);
        var relaySet = new List<(int, EventFd)>();
        int started = 0;
        for (int q = 0; q < _spec.VqNum; q++)
        {
            var info = _kernel.GetVqInfo((uint)q);
            if (!info.Ready)
            {
                continue;
            }
            string? bad = CheckQueue(q, info, packed);
            if (bad is not null)
            {
                throw new VdpaException(bad);
            }
            ReportUnmappedRings(q, info, packed);
            _device.SetVqNum(q, info.Num);
            _device.SetVqAddress(q, info.DescAddr, info.DriverAddr, info.DeviceAddr);
            _device.SetVqState(q, packed
                ? VdpaVqState.Packed((ushort)(info.PackedAvailIdx & 0x7fff), (info.PackedAvailCounter & 1) != 0,
                    (ushort)(info.PackedUsedIdx & 0x7fff), (info.PackedUsedCounter & 1) != 0)
                : VdpaVqState.Split(info.SplitAvailIndex, info.SplitAvailIndex));
            _device.SetVqCallback(q, _irqs[q]);
            _device.SetVqReady(q, true);
            var kick = EventFd.Create();
            _kicks[q] = kick;
            _kernel.SetupKickFd((uint)q, kick.Fd);
            relaySet.Add((q, kick));
            started++;
        }
        _device.SetConfigCallback(_configCallback);
        _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
        _relay ??= new EventFdFanIn($"vduse-kick-{_spec.Name}", OnKick,
            (q, e) => LogOnce($"kick-{q}", $"vq {q}: kick relay: {e.Message}"),
            q => LogOnce($"kick-broken-{q}", $"vq {q}: kick eventfd hung up"), _log);
        _running = true; // before the relay runs: a kick may rescan the IOTLB
        _relay.Update([.. relaySet]);
        SyncConfig(inject: false);
        _log($"device {_device.Name} running on the vDPA bus as {_spec.Name}: {started} queues, features 0x{_features:x}, {_iotlb.Count} IOTLB regions mapped");
    }

    /// <summary>
    /// Names, once per queue, a ring area that no single mapped IOTLB region holds at DRIVER_OK (the device
    /// will stop that queue with NEEDS_RESET when it reaches it), with the regions that are mapped.
    /// </summary>
    private void ReportUnmappedRings(int q, VduseVqInfoView info, bool packed)
    {
        int n = (int)info.Num;
        var areas = packed
            ? new[] { ("descriptor ring", info.DescAddr, (ulong)(n * PackedRing.DescSize)), ("driver area", info.DriverAddr, 4UL), ("device area", info.DeviceAddr, 4UL) }
            : new[] { ("descriptor table", info.DescAddr, (ulong)SplitRing.DescTableBytes(n)), ("avail ring", info.DriverAddr, (ulong)SplitRing.AvailBytes(n)), ("used ring", info.DeviceAddr, (ulong)SplitRing.UsedBytes(n)) };
        foreach (var (what, addr, len) in areas)
        {
            if (!_iotlb.CoversRange(addr, len))
            {
                LogOnce($"ring-unmapped-{q}", $"vq {q}: {what} [0x{addr:x}, +0x{len:x}) is not inside one mapped IOTLB region; mapped: {_iotlb.Describe()}");
                return;
            }
        }
    }

    /// <summary>A ready queue as the kernel describes it: null when the device can take it, else why not.</summary>
    public static string? CheckQueue(int q, VduseVqInfoView info, bool packed, ushort maxSize)
    {
        if (info.Num == 0 || info.Num > maxSize)
        {
            return $"vq {q}: size {info.Num} (1-{maxSize})";
        }
        if (!packed && (info.Num & (info.Num - 1)) != 0)
        {
            return $"vq {q}: split ring size {info.Num} is not a power of 2";
        }
        if (info.DescAddr == 0 || info.DriverAddr == 0 || info.DeviceAddr == 0)
        {
            return $"vq {q}: ring address missing (desc 0x{info.DescAddr:x}, driver 0x{info.DriverAddr:x}, device 0x{info.DeviceAddr:x})";
        }
        return null;
    }

    private string? CheckQueue(int q, VduseVqInfoView info, bool packed) => CheckQueue(q, info, packed, _spec.VqMaxSize);

    /// <summary>Maximum kicks that scan the IOTLB for new regions before the bounce map (IOVA 0) shows up.</summary>
    public const int MaxKickRescans = 1000;

    private void OnKick(int q)
    {
        Interlocked.Increment(ref _kicksRelayed);
        if (!_bounceMapped && Interlocked.Increment(ref _kickRescans) <= MaxKickRescans)
        {
            // With virtio_vdpa the kernel creates its bounce map (IOVA 0, 64 MiB by default) at the first
            // buffer it maps, which is after DRIVER_OK and before that buffer's kick: look again here, so the
            // device finds the buffer mapped. Once the region at IOVA 0 is there, kicks go straight through.
            try
            {
                RescanIotlb(fromKick: true);
            }
            catch (Exception e) when (e is VdpaException or IOException or ArgumentException)
            {
                LogOnce("rescan", $"IOTLB scan at a kick: {e.Message}");
            }
        }
        _device.KickVq(q);
    }

    private void RescanIotlb(bool fromKick)
    {
        lock (_iotlbLock)
        {
            if (fromKick && !_running)
            {
                return; // stopped meanwhile: Stop unmaps everything
            }
            _iotlb.MapRange(0, ulong.MaxValue);
            _bounceMapped = _iotlb.Covers(0);
        }
    }

    /// <summary>The device's used-buffer interrupt: injected into the kernel's callback (datapath worker; no allocation).</summary>
    private void Inject(uint q)
    {
        int e = _kernel.InjectVqIrq(q);
        if (e == 0)
        {
            Interlocked.Increment(ref _interrupts);
        }
        else if (Interlocked.Exchange(ref _irqErrorLogged, 1) == 0)
        {
            _log($"vq {q}: VDUSE_VQ_INJECT_IRQ failed (errno {e}; logged once)");
        }
    }

    private void OnConfigChanged()
    {
        if (!_disposed)
        {
            SyncConfig(inject: _running);
        }
    }

    /// <summary>Copies the device's config space into the kernel's when it changed, then raises the config interrupt.</summary>
    private void SyncConfig(bool inject)
    {
        lock (_configLock)
        {
            SyncConfigLocked(inject);
        }
    }

    private void SyncConfigLocked(bool inject)
    {
        var now = new byte[_config.Length];
        try
        {
            _device.GetConfig(0, now);
        }
        catch (VdpaException e)
        {
            LogOnce("config-read", $"config read failed: {e.Message}");
            return;
        }
        if (now.AsSpan().SequenceEqual(_config))
        {
            return;
        }
        try
        {
            _kernel.SetConfig(0, now);
        }
        catch (IOException e)
        {
            LogOnce("config-set", $"VDUSE_DEV_SET_CONFIG failed: {e.Message}");
            return;
        }
        _config = now;
        if (inject)
        {
            int err = _kernel.InjectConfigIrq();
            if (err != 0)
            {
                LogOnce("config-irq", $"VDUSE_DEV_INJECT_CONFIG_IRQ failed (errno {err})");
            }
        }
    }

    private void GetVqState(VduseRequest req, Span<byte> reply)
    {
        if (req.VqIndex >= (uint)_spec.VqNum)
        {
            LogOnce("vq-index", $"GET_VQ_STATE for vq {req.VqIndex} (device has {_spec.VqNum}): FAILED reply");
            VduseMessages.EncodeResult(reply, req.RequestId, ok: false);
            return;
        }
        try
        {
            var st = _device.GetVqState((int)req.VqIndex);
            if (VirtioFeature.Has(_features, VirtioFeature.F_RING_PACKED))
            {
                VduseMessages.EncodePackedState(reply, req.RequestId, req.VqIndex, st.AvailWrapCounter, st.AvailIndex, st.UsedWrapCounter, st.UsedIndex);
            }
            else
            {
                VduseMessages.EncodeSplitState(reply, req.RequestId, req.VqIndex, st.AvailIndex);
            }
        }
        catch (VdpaException e)
        {
            _log($"GET_VQ_STATE vq {req.VqIndex}: {e.Message}");
            VduseMessages.EncodeResult(reply, req.RequestId, ok: false);
        }
    }

    private bool UpdateIotlb(ulong start, ulong last)
    {
        if (start > last)
        {
            LogOnce("iotlb-range", $"UPDATE_IOTLB with a bad range [0x{start:x}, 0x{last:x}] (start after last): FAILED reply");
            return false;
        }
        try
        {
            lock (_iotlbLock)
            {
                _iotlb.Unmap(start, last, out ulong spanStart, out ulong spanLast);
                if (_running)
                {
                    _iotlb.MapRange(spanStart, spanLast);
                }
                _bounceMapped = _iotlb.Covers(0);
            }
            return true;
        }
        catch (Exception e) when (e is VdpaException or IOException or ArgumentException)
        {
            _log($"UPDATE_IOTLB [0x{start:x}, 0x{last:x}]: {e.Message}");
            return false;
        }
    }

    /// <summary>Stops the datapath: kicks de-assigned, callbacks removed, device reset, every region unmapped.</summary>
    private void Stop()
    {
        bool was = _running;
        _running = false;
        _relay?.Update([]);
        for (int q = 0; q < _kicks.Length; q++)
        {
            if (_kicks[q] is { } k)
            {
                try
                {
                    _kernel.SetupKickFd((uint)q, -1);
                }
                catch (IOException)
                {
                    // the kernel drops its kick fds at reset anyway
                }
                k.Dispose();
                _kicks[q] = null;
            }
        }
        if (was)
        {
            try
            {
                _device.SetConfigCallback(null);
                _device.Reset();
                for (int q = 0; q < _spec.VqNum; q++)
                {
                    _device.SetVqCallback(q, null);
                }
            }
            catch (VdpaException e)
            {
                _log($"device reset: {e.Message}");
            }
            _log($"device {_device.Name} stopped");
        }
        lock (_iotlbLock)
        {
            _iotlb.Clear();
            _bounceMapped = false;
            _kickRescans = 0;
        }
    }

    private void LogOnce(string key, string message)
    {
        if (_logged.Add(key))
        {
            _log(message + " (logged once)");
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            Stop();
            _relay?.Dispose();
            _relay = null;
        }
    }
}
