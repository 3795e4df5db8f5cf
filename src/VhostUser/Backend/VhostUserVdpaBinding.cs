using System.Globalization;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The binding of one vhost-user session to an <see cref="IVdpaDevice"/>, the way DPDK's ifc driver does
/// it: it keeps what the front-end described (negotiated features and status, the memory table, the
/// rings) and, once the rings are ready (and DRIVER_OK, with STATUS), maps guest memory into the device
/// (IOVA = guest-physical), programs every enabled queue, binds each queue's interrupt to the front-end's
/// call eventfd, relays kicks and offers doorbell pages (host notifiers). Every change is followed by
/// <see cref="Reevaluate"/>, which starts or stops the device and single rings. The device is left reset
/// with nothing mapped by <see cref="Dispose"/>. Values reach it already checked
/// (<see cref="VdpaBackendHandler"/>); what the device refuses propagates as its exception.
/// Live migration (the hardware-log path of DPDK's ifc driver): the front-end's dirty log
/// (<see cref="SetLogBase"/>) is DMA-mapped for the device at an IOVA above guest memory and programmed
/// through <see cref="IVdpaDirtyLog"/> while VHOST_F_LOG_ALL is acked and the device runs; the device marks
/// the packet buffers it writes, and the used ring of every queue stopped while logging is marked here
/// (IFC hardware does not log its used-ring writes; they are final only once the queue stops, which is
/// before the front-end's last log sync). SEND_RARP goes to <see cref="IVdpaFrameInjection"/>.
/// </summary>
public sealed partial class VhostUserVdpaBinding : IDisposable
{
    /// <summary>Replaced call eventfds kept open before the oldest is closed.</summary>
    private const int MaxRetiredCalls = 64;

    /// <summary>
    /// The two IOVAs the dirty log is DMA-mapped at for the device (DPDK's IFCVF_LOG_BASE, and a second slot
    /// so a new log is mapped and programmed before the old one goes). Guest memory must lie below.
    /// </summary>
    public const ulong LogIovaA = 0x1000_0000_0000;

    public const ulong LogIovaB = 0x1800_0000_0000;

    private readonly IVdpaDevice _device;
    private readonly VhostUserSessionOptions _options;
    private readonly VhostUserBackendChannel _channel;
    private readonly Action<string> _log;
    private readonly Vring[] _rings;
    private readonly List<EventFd> _retiredCalls = [];
    private readonly List<(ulong Iova, ulong Size)> _dmaMapped = [];
    private GuestMemoryTable _memory = new();
    private KickRelay? _relay;
    private readonly HostNotifierOffers _notifiers;
    private ulong _acked;
    private bool _featuresSet;
    private ulong _protocol;
    private byte _status;
    private bool _configured;
    private bool _stateFallbackLogged;
    private bool _disposed;
    private readonly bool _block;
    private readonly IVdpaDirtyLog? _hwLog;
    private readonly IVdpaFrameInjection? _inject;
    private DirtyLogRegion? _dirtyLog;   // the latest SET_LOG_BASE
    private DirtyLogRegion? _deviceLog;  // the one the device logs into, DMA-mapped at _deviceLogIova
    private ulong _deviceLogIova;
    private SafeFd? _logFd;
    private VringRelay? _vringRelay; // the software relay's thread and mediated rings (device without a dirty log)
    private bool _relayOn;           // rings start relayed (logging requested on a device without a log)
    private bool _wireOff;           // the device's wire carrier is off since a stop while logging (switch-over)

    public VhostUserVdpaBinding(IVdpaDevice device, VhostUserBackendChannel channel, VhostUserSessionOptions options, Action<string> log)
    {
        _device = device;
        _channel = channel;
        _options = options;
        _log = log;
        // virtio-net: the front-end keeps the control queue, rings are the data queue pairs; virtio-blk:
        // every request queue is a ring, and GET_QUEUE_NUM counts queues (what vhost-user-blk expects).
        bool block = _block = device.GetDeviceId() == VirtioBlk.DeviceId;
        QueuePairs = block ? Math.Max(1, device.NumVqs) : Math.Max(1, device.NumVqs / 2);
        _rings = new Vring[block ? QueuePairs : QueuePairs * 2];
        for (int i = 0; i < _rings.Length; i++)
        {
            _rings[i] = new Vring();
        }
        DeviceFeatures = device.GetDeviceFeatures();
        _notifiers = new HostNotifierOffers(device, channel, _rings.Length, log);
        _hwLog = device is IVdpaDirtyLog { CanLogDirtyPages: true } hw ? hw : null;
        _inject = device is IVdpaFrameInjection { CanInjectFrames: true } inj ? inj : null;
    }

    /// <summary>
    /// Whether the front-end can log (VHOST_F_LOG_ALL and LOG_SHMFD): always, through the device's own log
    /// when it keeps one (<see cref="HasDeviceLog"/>), else through the software relay.
    /// </summary>
    public bool CanLog => true;

    /// <summary>Whether the device keeps the dirty log itself (the IFC LM block); else the software relay logs.</summary>
    public bool HasDeviceLog => _hwLog is not null;

    /// <summary>Whether rings run through the software relay right now.</summary>
    public bool Relaying => _relayOn && _configured;

    /// <summary>Used entries the software relay moved to guest rings (0 when it never ran).</summary>
    public long RelayedEntries => _relayedBefore + (_vringRelay?.Relayed ?? 0);

    private long _relayedBefore;

    /// <summary>Whether the device can send a frame on the guest's behalf (RARP is offered only then).</summary>
    public bool CanSendRarp => _inject is not null;

    /// <summary>VHOST_F_LOG_ALL acked and a log given: every write the device makes is logged.</summary>
    public bool LoggingRequested => Acked(VirtioFeature.F_LOG_ALL) && _dirtyLog is not null;

    /// <summary>Whether every page the device writes is logged right now (its LM block programmed with our log, or the relay running).</summary>
    public bool DeviceLogging => _deviceLog is not null || (Relaying && LoggingRequested);

    /// <summary>Used-ring pages marked here (at ring stops), in the current log.</summary>
    public long UsedRingPagesMarked => _dirtyLog?.PagesMarked ?? 0;

    /// <summary>The current log, if any (size and offset for diagnostics).</summary>
    public DirtyLogRegion? DirtyLog => _dirtyLog;

    public IVdpaDevice Device => _device;

    /// <summary>The device's own features (read once).</summary>
    public ulong DeviceFeatures { get; }

    /// <summary>Queue pairs (net) or request queues (block): what GET_QUEUE_NUM reports.</summary>
    public int QueuePairs { get; }

    public int RingCount => _rings.Length;

    public ulong AckedFeatures => _acked;

    /// <summary>True once SET_FEATURES was accepted (until a reset).</summary>
    public bool FeaturesSet => _featuresSet;

    /// <summary>True while the device is programmed and running for this front-end.</summary>
    public bool Configured => _configured;

    public GuestMemoryTable Memory => _memory;

    /// <summary>Kicks relayed to the device so far (0 when no relay ran).</summary>
    public long RelayedKicks => _relay?.Kicks ?? 0;

    /// <summary>True when the ring layout in use is packed (F_RING_PACKED acked).</summary>
    public bool Packed => Acked(VirtioFeature.F_RING_PACKED);

    public bool Acked(int feature) => (_acked & (1UL << feature)) != 0;

    private bool Has(int protocolFeature) => (_protocol & (1UL << protocolFeature)) != 0;

    internal Vring Ring(int q) => _rings[q];

    // ---- negotiation state ----

    /// <summary>SET_FEATURES (checked): a change while running restarts the device.</summary>
    public void SetFeatures(ulong features)
    {
        // LOG_ALL toggles while running (migration starts, or is cancelled): rings must not stop for it.
        ulong logAll = VirtioFeature.Bit(VirtioFeature.F_LOG_ALL);
        bool changed = _featuresSet && ((features ^ _acked) & ~logAll) != 0;
        if ((features & logAll) != 0 && _dirtyLog is { } log)
        {
            CheckLogCovers(log, _memory);
        }
        _acked = features;
        _featuresSet = true;
        if (!Acked(VirtioFeature.F_PROTOCOL_FEATURES))
        {
            // Without bit 30 rings start enabled (vhost-user.rst "Ring states").
            foreach (var r in _rings)
            {
                r.Enabled = true;
            }
        }
        if (changed && _configured)
        {
            _log("features changed while running: restarting the device");
            Deconfigure();
        }
        Reevaluate();
        UpdateDirtyLog();
    }

    public void SetProtocolFeatures(ulong features) => _protocol = features;

    /// <summary>SET_STATUS (a checked status byte): anything without DRIVER_OK stops the device.</summary>
    public void SetStatus(byte status)
    {
        if ((status & VirtioStatus.FEATURES_OK) != 0 && !_featuresSet)
        {
            status &= unchecked((byte)~VirtioStatus.FEATURES_OK); // nothing negotiated: FEATURES_OK does not stick
        }
        _status = status;
        if (status == 0 || (status & VirtioStatus.DRIVER_OK) == 0)
        {
            if (_configured)
            {
                WireOffAtSwitchOver(); // QEMU 7.2 stops a logging device this way at the switch-over
            }
            Deconfigure();
        }
        Reevaluate();
    }

    /// <summary>The status byte as GET_STATUS reports it: what was set, plus NEEDS_RESET from a running device.</summary>
    public byte GetStatus() =>
        _configured && (_device.GetStatus() & VirtioStatus.NEEDS_RESET) != 0 ? (byte)(_status | VirtioStatus.NEEDS_RESET) : _status;

    /// <summary>RESET_OWNER / RESET_DEVICE: stop the device and forget rings, memory, features and status.</summary>
    public void Reset()
    {
        Deconfigure();
        WireOn();
        CloseRings();
        _dirtyLog?.Dispose();
        _dirtyLog = null;
        _logFd?.Dispose();
        _logFd = null;
        _memory.Dispose();
        _memory = new GuestMemoryTable();
        _acked = 0;
        _featuresSet = false;
        _status = 0;
    }

    // ---- memory ----

    /// <summary>SET_MEM_TABLE: an unchanged layout keeps the mapping; otherwise the device restarts on the new table.</summary>
    public void SetMemTable(IReadOnlyList<MemoryRegionDesc> descs, IReadOnlyList<SafeFd> fds)
    {
        if (_memory.Count > 0 && _memory.SameLayout(descs))
        {
            _log("SET_MEM_TABLE unchanged: kept the current mapping");
            return;
        }
        var table = new GuestMemoryTable();
        try
        {
            for (int i = 0; i < descs.Count; i++)
            {
                table.Add(GuestMemoryRegion.Map(descs[i], fds[i]));
            }
        }
        catch
        {
            table.Dispose();
            throw;
        }
        bool wasConfigured = _configured;
        Deconfigure();
        _memory.Dispose();
        _memory = table;
        _log($"memory table: {Describe(table)}{(wasConfigured ? " (device restarted)" : "")}");
        Reevaluate();
    }

    /// <summary>ADD_MEM_REG: a region added again (another vhost device of the front-end) only counts a reference.</summary>
    public void AddMemReg(MemoryRegionDesc d, SafeFd fd)
    {
        if (_memory.FindIdentical(d) is { } same)
        {
            // Another of the front-end's vhost devices (one per queue pair in QEMU) adds the same region.
            same.References++;
            _log($"region GPA 0x{d.GuestPhysAddr:x} size 0x{d.Size:x} added again ({same.References} references)");
            return;
        }
        if (_memory.Count >= _options.MaxMemSlots)
        {
            throw new VhostUserRequestException($"all {_options.MaxMemSlots} memory slots are in use");
        }
        var r = GuestMemoryRegion.Map(d, fd);
        try
        {
            _memory.Add(r);
        }
        catch
        {
            r.Dispose();
            throw;
        }
        if (_configured)
        {
            MapForDevice(r);
        }
        _vringRelay?.SetMemory(_memory.Regions);
        _log($"added region GPA 0x{d.GuestPhysAddr:x} size 0x{d.Size:x}");
        Reevaluate();
    }

    /// <summary>REM_MEM_REG: the last reference stops the device, removes the region and restarts with the rest.</summary>
    public void RemMemReg(MemoryRegionDesc d)
    {
        var existing = _memory.Find(d)
            ?? throw new VhostUserRequestException($"no region at GPA 0x{d.GuestPhysAddr:x} VA 0x{d.UserAddr:x} size 0x{d.Size:x}");
        if (existing.References > 1)
        {
            existing.References--;
            _log($"region GPA 0x{d.GuestPhysAddr:x} size 0x{d.Size:x} still referenced {existing.References} time(s)");
            return;
        }
        // The device may be using the region: stop it, remove, restart with what is left.
        Deconfigure();
        _memory.Remove(d);
        existing.Dispose();
        _log($"removed region GPA 0x{d.GuestPhysAddr:x} size 0x{d.Size:x}");
        Reevaluate();
    }

    private static string Describe(GuestMemoryTable t) => string.Join(", ",
        t.Regions.Select(r => $"GPA 0x{r.GuestPhysAddr:x} VA 0x{r.UserAddr:x} size 0x{r.Size:x} offset 0x{r.Desc.MmapOffset:x}"));

    /// <summary>The one place guest memory is handed to the device (IOVA = guest-physical).</summary>
    private void MapForDevice(GuestMemoryRegion r)
    {
        _device.DmaMap(r.GuestPhysAddr, r.Memory, writable: true);
        _dmaMapped.Add((r.GuestPhysAddr, r.Size));
    }

    // ---- rings ----

    /// <summary>Changes ring <paramref name="q"/> (size, addresses, base, kick): a running ring stops first.</summary>
    internal void Change(int q, Action<Vring> change)
    {
        StopIfRunning(q);
        change(_rings[q]);
        Reevaluate();
    }

    /// <summary>SET_VRING_ADDR (checked): a change of only the log flag or log address keeps a running ring running.</summary>
    internal void SetAddr(int q, VringAddr addr)
    {
        var r = _rings[q];
        if (r.Running && r.Addr is { } cur && cur.Desc == addr.Desc && cur.Avail == addr.Avail && cur.Used == addr.Used)
        {
            r.Addr = addr;
            return;
        }
        Change(q, x => x.Addr = addr);
    }

    /// <summary>SET_VRING_CALL: a running ring's interrupt is re-bound at once (QEMU swaps irqfds at runtime).</summary>
    public void SetCall(int q, EventFd? call)
    {
        var r = _rings[q];
        var old = r.Call;
        r.Call = call;
        r.CallSet = true;
        if (r.Running && !r.Relayed)
        {
            _device.SetVqCallback(q, CallbackOf(r)); // a relayed ring's device interrupt goes to the relay, which signals r.Call
        }
        if (old is not null)
        {
            // It may still be signalled by an interrupt that raced the re-bind: closed at the next device
            // stop (or when many pile up, the oldest).
            _retiredCalls.Add(old);
            if (_retiredCalls.Count > MaxRetiredCalls)
            {
                _retiredCalls[0].Dispose();
                _retiredCalls.RemoveAt(0);
            }
        }
        Reevaluate();
    }

    /// <summary>SET_VRING_ENABLE.</summary>
    public void SetEnabled(int q, bool enabled)
    {
        _rings[q].Enabled = enabled;
        Reevaluate();
    }

    /// <summary>GET_VRING_BASE: stops the ring and forgets its addresses and kick (stale rings must not look ready after a reboot).</summary>
    public uint GetBase(int q)
    {
        var r = _rings[q];
        bool wasRunning = r.Running;
        if (wasRunning)
        {
            // The first ring QEMU stops while logging is the switch-over: the wire goes off before the ring
            // stops, so no frame reaches this port in the window while the other rings are still stopped.
            WireOffAtSwitchOver();
            StopQueue(q);
        }
        r.Addr = null;
        r.Kick?.Dispose();
        r.Kick = null;
        r.KickNoFd = false;
        _log(wasRunning ? $"ring {q} stopped at {r.Base}" : $"ring {q}: base {r.Base} reported (already stopped)");
        return r.Base;
    }

    private static VdpaCallback? CallbackOf(Vring r) => r.Call is null ? null : VdpaCallback.ForEventFd(r.Call);

    /// <summary>Front-end VAs of ring <paramref name="q"/> -> guest-physical (see <see cref="GuestMemoryTable.TranslateRing"/>).</summary>
    public string? TranslateRing(int q, VringAddr a, uint num, out (ulong Desc, ulong Avail, ulong Used) gpa) =>
        _memory.TranslateRing(q, a, num, Packed, Acked(VirtioFeature.F_RING_EVENT_IDX), out gpa);

    // ---- starting and stopping the device ----

    private bool StatusGate => !Has(VhostUserProtocolFeature.STATUS) || (_status & VirtioStatus.DRIVER_OK) != 0;

    private bool ShouldRun(int q) => _rings[q].Ready && _rings[q].Enabled && TranslateRing(q, _rings[q].Addr!.Value, _rings[q].Num, out _) is null;

    /// <summary>Net: the first queue pair runs (DPDK's "ready"); block: the first request queue.</summary>
    private bool ReadyToConfigure() => _featuresSet && _memory.Count > 0 && StatusGate && ShouldRun(0) && (_block || ShouldRun(1));

    /// <summary>After every state change: start the device when ready, start/stop individual rings when running.</summary>
    private void Reevaluate()
    {
        if (!_configured)
        {
            if (ReadyToConfigure())
            {
                Configure();
            }
            return;
        }
        bool changed = false;
        for (int q = 0; q < _rings.Length; q++)
        {
            bool should = ShouldRun(q);
            if (should != _rings[q].Running)
            {
                if (should)
                {
                    StartQueue(q);
                }
                else
                {
                    StopQueue(q);
                }
                _log($"ring {q} {(should ? "started" : "stopped")} at {_rings[q].Base}");
                changed = true;
            }
        }
        if (changed)
        {
            UpdateRelay();
        }
    }

    private void Configure()
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp(); // the start's share of a migrated guest's outage
        try
        {
            _device.Reset();
            _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
            ulong toDevice = (_acked & DeviceFeatures) | (DeviceFeatures & VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM));
            _device.SetDriverFeatures(toDevice);
            _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
            if ((_device.GetStatus() & VirtioStatus.FEATURES_OK) == 0)
            {
                throw new VhostUserRequestException($"the device refused features 0x{toDevice:x} (FEATURES_OK not set)");
            }
            foreach (var r in _memory.Regions)
            {
                MapForDevice(r);
            }
            _configured = true;
            UpdateDirtyLog(); // before the queues run: the first buffer written is logged
            int started = 0;
            for (int q = 0; q < _rings.Length; q++)
            {
                if (ShouldRun(q))
                {
                    StartQueue(q);
                    started++;
                }
            }
            if (_channel.IsOpen && Has(VhostUserProtocolFeature.BACKEND_REQ))
            {
                _device.SetConfigCallback(VdpaCallback.ForHandler(_channel.SendConfigChange));
            }
            _device.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
            _relay ??= new KickRelay(_device, _options.Name, _log);
            UpdateRelay();
            _log($"device {_device.Name} running: {started} rings, features 0x{toDevice:x} (started in {System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalMilliseconds:0.0} ms)");
            WireOn();
        }
        catch
        {
            Deconfigure();
            throw;
        }
    }

    private void StartQueue(int q)
    {
        var r = _rings[q];
        string? bad = TranslateRing(q, r.Addr!.Value, r.Num, out var gpa);
        if (bad is not null)
        {
            throw new VhostUserRequestException(bad);
        }
        _device.SetVqNum(q, r.Num);
        if (_relayOn)
        {
            StartRelayedQueue(q, gpa);
            WireOn();
            return;
        }
        _device.SetVqAddress(q, gpa.Desc, gpa.Avail, gpa.Used);
        _device.SetVqState(q, ResumeState(q, gpa.Used));
        _device.SetVqCallback(q, CallbackOf(r));
        _device.SetVqReady(q, true);
        r.Running = true;
        _notifiers.Offer(q, _protocol);
        WireOn();
    }

    /// <summary>Where ring <paramref name="q"/> resumes: its base, for a split ring reconciled with used->idx.</summary>
    private VdpaVqState ResumeState(int q, ulong usedGpa)
    {
        uint num = _rings[q].Base;
        if (!Packed)
        {
            ushort availBase = (ushort)num;
            ushort usedIdx = _memory.TryReadUsedIdx(usedGpa, out ushort published) ? published : availBase;
            if (usedIdx != availBase)
            {
                // As DPDK does: in-flight buffers are lost, resume from the used index (TX resent, RX dropped).
                _log($"ring {q}: base {availBase} differs from used->idx {usedIdx}; resuming from {usedIdx}");
            }
            num = usedIdx;
        }
        return VringBase.FromFrontEnd(num, Packed);
    }

    /// <summary>The ring base as GET_VRING_BASE reports it, from the device's saved state.</summary>
    private uint SavedBase(int q)
    {
        try
        {
            return VringBase.ToWire(_device.GetVqState(q), Packed);
        }
        catch (VdpaNotSupportedException e)
        {
            // A device that cannot report its ring state (a plain virtio function without the IFC LM block):
            // as vhost-vdpa does for a device it could not suspend, resume from what the device published,
            // used->idx in guest memory (in-flight buffers are lost: TX resent, RX dropped).
            uint fallback = _rings[q].Base;
            if (!Packed && _rings[q].Addr is { } a && TranslateRing(q, a, _rings[q].Num, out var gpa) is null &&
                _memory.TryReadUsedIdx(gpa.Used, out ushort published))
            {
                fallback = published;
            }
            if (!_stateFallbackLogged)
            {
                _stateFallbackLogged = true;
                _log($"ring state not readable ({e.Message}); reporting the used index from guest memory as the base");
            }
            return fallback;
        }
    }

    private void StopQueue(int q)
    {
        var r = _rings[q];
        r.Running = false;
        _notifiers.Remove(q);
        UpdateRelay();
        _vringRelay?.Detach(q);
        _device.SetVqReady(q, false);
        if (r.Relayed)
        {
            _device.SetVqCallback(q, null);
            FinishRelayedQueue(q); // the device's last used entries reach the guest before the base is read
        }
        r.Base = SavedBase(q);
        _device.SetVqCallback(q, null);
        MarkUsedRing(q);
    }

    private void StopIfRunning(int q)
    {
        if (_rings[q].Running)
        {
            StopQueue(q);
        }
    }

    private void UpdateRelay()
    {
        var set = new List<(int, EventFd)>();
        for (int q = 0; q < _rings.Length; q++)
        {
            if (_rings[q].Running && !_rings[q].Relayed && _rings[q].Kick is { } k)
            {
                set.Add((q, k));
            }
        }
        _relay?.Update([.. set]);
    }

    /// <summary>Stops every ring (saving its base), resets the device and removes every DMA mapping.</summary>
    private void Deconfigure()
    {
        if (!_configured)
        {
            return;
        }
        _configured = false;
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp(); // at a switch-over: the back-end's share of QEMU's downtime
        _relay?.Update([]);
        for (int q = 0; q < _rings.Length; q++)
        {
            if (_rings[q].Running)
            {
                _rings[q].Running = false;
                _notifiers.Remove(q);
                int ring = q;
                _vringRelay?.Detach(q);
                Teardown($"ring {q}: stop", () =>
                {
                    _device.SetVqReady(ring, false);
                    if (_rings[ring].Relayed)
                    {
                        _vringRelay!.Drain(ring);
                    }
                    _rings[ring].Base = SavedBase(ring);
                });
                MarkUsedRing(q);
            }
        }
        long tRings = System.Diagnostics.Stopwatch.GetTimestamp();
        StopDeviceLog();
        long tLog = System.Diagnostics.Stopwatch.GetTimestamp();
        ResetDevice();
        long tReset = System.Diagnostics.Stopwatch.GetTimestamp();
        ReleaseRelay();
        static double Ms(long from, long to) => System.Diagnostics.Stopwatch.GetElapsedTime(from, to).TotalMilliseconds;
        _log(string.Create(CultureInfo.InvariantCulture,
            $"device {_device.Name} stopped (in {Ms(t0, System.Diagnostics.Stopwatch.GetTimestamp()):0.0} ms: rings {Ms(t0, tRings):0.0}, dirty log {Ms(tRings, tLog):0.0}, reset {Ms(tLog, tReset):0.0})"));
    }

    private void ResetDevice()
    {
        Teardown("device reset", () =>
        {
            _device.SetConfigCallback(null);
            _device.Reset();
        });
        foreach (var (iova, size) in _dmaMapped)
        {
            Teardown($"DMA unmap of 0x{iova:x}", () => _device.DmaUnmap(iova, size));
        }
        _dmaMapped.Clear();
        foreach (var c in _retiredCalls)
        {
            c.Dispose();
        }
        _retiredCalls.Clear();
    }

    /// <summary>One teardown step: whatever the device says, the teardown goes on (reset and DMA unmap must still happen).</summary>
    private void Teardown(string what, Action step)
    {
        try
        {
            step();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            _log($"{what} failed: {e.Message}");
        }
    }

    // ---- teardown ----

    private void CloseRings()
    {
        for (int i = 0; i < _rings.Length; i++)
        {
            _rings[i].Dispose();
            _rings[i] = new Vring();
        }
    }

    /// <summary>Stops the device, resets it (also when never configured: the next front-end starts from a reset device) and closes everything.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Deconfigure();
        WireOn();
        _channel.Flush(askAcks: false); // nobody reads acks any more
        _relay?.Dispose();
        _relay = null;
        ResetDevice();
        ReleaseInflight();
        ReleaseRelay();
        CloseRings();
        _memory.Dispose();
        _dirtyLog?.Dispose();
        _dirtyLog = null;
        _logFd?.Dispose();
    }
}
