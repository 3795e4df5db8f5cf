using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.VhostUser.Frontend;

/// <summary>
/// A vhost-user FRONT-END presented as a vDPA device (what DPDK's virtio-user is): any
/// <see cref="IVdpaDevice"/> consumer, e.g. the in-process <c>VirtioNetDriver</c>, runs over any vhost-user
/// back-end (this project's <see cref="VhostUserBackend"/>, DPDK's vhost PMD, a vDPA back-end with host
/// notifiers).
///
/// How the vDPA operations map onto the protocol:
/// <list type="bullet">
/// <item>features: the back-end's, minus what a front-end must emulate itself (the control queue and every
/// feature that needs it: this front-end has no control-queue emulation, so the driver runs one queue pair)
/// and minus ACCESS_PLATFORM towards the back-end (no IOTLB messages). The driver is offered ACCESS_PLATFORM:
/// the back-end reaches only the memory the driver DMA-maps, at the driver's IOVAs (IOVA = guest-physical).
/// SET_FEATURES is sent when the driver sets FEATURES_OK.</item>
/// <item>DMA map: the range must be memfd-backed (<see cref="MappedMemory.CreateShared"/>); it is sent as
/// a memory region (GPA = IOVA, UVA = host address) with ADD_MEM_REG, or the whole table with SET_MEM_TABLE.</item>
/// <item>queues: size, base, addresses (IOVA translated to this process's VA through the DMA table), call
/// and kick eventfds are sent when the driver sets DRIVER_OK (or when a queue is enabled afterwards), then
/// SET_STATUS and SET_VRING_ENABLE; disabling a queue is GET_VRING_BASE, which also saves its state.</item>
/// <item>kicks: a 16-bit write of the queue index to the back-end's host-notifier page when it sent one
/// (VRING_HOST_NOTIFIER_MSG: the doorbell of the real device), otherwise a write to the kick eventfd.</item>
/// <item>interrupts: one thread polls every queue's call eventfd and runs the driver's handler; an eventfd
/// callback is handed to the back-end directly.</item>
/// <item>dirty logging (LOG_ALL, LOG_SHMFD) as a migrating front-end does it: see <see cref="StartDirtyLog"/>.</item>
/// </list>
/// Everything the back-end sends is validated (reply codes, flags, sizes, descriptors, host-notifier areas);
/// a reply that is late, malformed or missing breaks the connection with an <see cref="IOException"/>
/// that says why, and a refused request (REPLY_ACK non-zero) is an <see cref="InvalidOperationException"/>.
/// Teardown (<see cref="Reset"/>, <see cref="DmaUnmap"/>, <see cref="Dispose"/>) never throws because of
/// the back-end: it logs and cleans up locally.
///
/// Not supported: the control queue (CTRL_VQ and MQ, so one queue pair), IOTLB (ACCESS_PLATFORM towards
/// the back-end), inflight tracking, in-band notifications, postcopy, reconnecting after the back-end leaves. Packed rings are passed through (ring state encoded
/// as the spec says) but <c>VirtioNetDriver</c> only uses split rings.
///
/// Threading: control operations are serialised; <see cref="KickVq"/> takes no lock and may be called
/// from any thread, but not concurrently with <see cref="Reset"/> or <see cref="Dispose"/> (host-notifier
/// pages are unmapped there).
/// </summary>
public sealed partial class VhostUserFrontend : IVdpaDevice, IDisposable
{
    /// <summary>Protocol features this front-end knows how to use.</summary>
    public const ulong SupportedProtocolFeatures =
        (1UL << VhostUserProtocolFeature.MQ) | (1UL << VhostUserProtocolFeature.REPLY_ACK) |
        (1UL << VhostUserProtocolFeature.MTU) | (1UL << VhostUserProtocolFeature.BACKEND_REQ) |
        (1UL << VhostUserProtocolFeature.BACKEND_SEND_FD) | (1UL << VhostUserProtocolFeature.HOST_NOTIFIER) |
        (1UL << VhostUserProtocolFeature.CONFIG) | (1UL << VhostUserProtocolFeature.RESET_DEVICE) |
        (1UL << VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS) | (1UL << VhostUserProtocolFeature.STATUS) |
        (1UL << VhostUserProtocolFeature.LOG_SHMFD);

    /// <summary>virtio-net config bytes exposed: mac (6), status (2), max_virtqueue_pairs (2), mtu (2).</summary>
    public const int ConfigBytes = FrontendConfigSpace.Size;

    /// <summary>VIRTIO_ID_NET.</summary>
    private const uint DeviceIdNet = 1;

    /// <summary>
    /// Device features a front-end cannot pass through without emulating them: the control queue and what
    /// rides on it (CTRL_GUEST_OFFLOADS, CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR,
    /// VQ/notification coalescing, RSS), the vhost-only bits (LOG_ALL, PROTOCOL_FEATURES) and ACCESS_PLATFORM
    /// (the back-end would need IOTLB messages; the driver is offered it separately).
    /// </summary>
    private const ulong FrontendHandled =
        (1UL << NET_F_CTRL_GUEST_OFFLOADS) | (1UL << NET_F_CTRL_VQ) | (1UL << NET_F_CTRL_RX) | (1UL << NET_F_CTRL_VLAN) |
        (1UL << 20) | (1UL << NET_F_GUEST_ANNOUNCE) | (1UL << NET_F_MQ) | (1UL << NET_F_CTRL_MAC_ADDR) |
        (1UL << 52) | (1UL << 53) | (1UL << 60) |
        (1UL << F_LOG_ALL) | (1UL << F_PROTOCOL_FEATURES) | (1UL << F_ACCESS_PLATFORM);

    /// <summary>Host-notifier areas larger than this many pages are refused (one doorbell needs one page).</summary>
    public const int MaxNotifierPages = HostNotifierTable.MaxPages;

    private readonly VhostUserClient _client;
    private readonly VhostUserFrontendOptions _options;
    private readonly Lock _ctl = new();
    private readonly Vq[] _vqs;
    private readonly FrontendMemory _memory;
    private readonly HostNotifierTable _notifiers;
    private readonly FrontendConfigSpace _config;
    private EventFdFanIn? _calls;
    private BackendChannelServer? _channelServer;
    private byte _status;
    private ulong _driverFeatures;
    private bool _suspended;
    private VdpaCallback? _configCallback;
    private int _generation;
    private volatile bool _disposed;

    private VhostUserFrontend(UnixSocket socket, string path, VhostUserFrontendOptions options)
    {
        _client = new VhostUserClient(socket, path, options);
        _options = options;
        if (options.MaxQueueSize == 0 || (options.MaxQueueSize & (options.MaxQueueSize - 1)) != 0 || options.MaxQueueSize > VhostUserWire.MaxRingSize)
        {
            throw new ArgumentException($"MaxQueueSize {options.MaxQueueSize} must be a power of two up to {VhostUserWire.MaxRingSize}");
        }
        _config = new FrontendConfigSpace(_client, options);
        _vqs = new Vq[2];
        for (int i = 0; i < _vqs.Length; i++)
        {
            _vqs[i] = new Vq();
        }
        _memory = new FrontendMemory(_client);
        _notifiers = new HostNotifierTable(_vqs.Length);
    }

    /// <summary>
    /// Connects to the back-end listening at <paramref name="socketPath"/> (client mode), retrying for
    /// <see cref="VhostUserFrontendOptions.ConnectTimeout"/> while nobody listens, and negotiates.
    /// </summary>
    public static VhostUserFrontend Connect(string socketPath, VhostUserFrontendOptions? options = null)
    {
        options ??= new VhostUserFrontendOptions();
        UnixSocket.CheckPath(socketPath);
        long deadline = Environment.TickCount64 + (long)options.ConnectTimeout.TotalMilliseconds;
        while (true)
        {
            if (UnixSocket.TryConnect(socketPath, out var s, out int errno))
            {
                return Open(s!, socketPath, options);
            }
            if (Environment.TickCount64 >= deadline)
            {
                throw new IOException(
                    $"{options.Name}: no vhost-user back-end accepts connections at {socketPath} (errno {errno}) after {options.ConnectTimeout.TotalSeconds} s");
            }
            Thread.Sleep(50);
        }
    }

    /// <summary>Negotiates over an already connected socket (an in-process back-end, tests); the result owns it.</summary>
    public static VhostUserFrontend Connect(UnixSocket connected, VhostUserFrontendOptions? options = null) =>
        Open(connected, "(connected socket)", options ?? new VhostUserFrontendOptions());

    private static VhostUserFrontend Open(UnixSocket s, string path, VhostUserFrontendOptions options)
    {
        VhostUserFrontend? fe = null;
        try
        {
            fe = new VhostUserFrontend(s, path, options);
            fe._client.Negotiate(SupportedProtocolFeatures, ConfigBytes);
            fe.StartThreads();
            return fe;
        }
        catch
        {
            if (fe is null)
            {
                s.Dispose();
            }
            else
            {
                fe.Dispose();
            }
            throw;
        }
    }

    // ---- what was negotiated --------------------------------------------------------------------

    public string Name => _options.Name;

    /// <summary>One queue pair: without control-queue emulation a driver cannot switch more on.</summary>
    public int NumVqs => _vqs.Length;

    /// <summary>Virtio features the back-end offered (GET_FEATURES).</summary>
    public ulong BackendFeatures => _client.BackendFeatures;

    /// <summary>Protocol features in use (SET_PROTOCOL_FEATURES).</summary>
    public ulong ProtocolFeatures => _client.ProtocolFeatures;

    /// <summary>Queue pairs the back-end has (GET_QUEUE_NUM, 1 without MQ); only the first is used.</summary>
    public int BackendQueuePairs => _client.BackendPairs;

    /// <summary>True when config space is read from the back-end (GET_CONFIG), false when synthesized.</summary>
    public bool ConfigFromBackend => _client.ConfigFromBackend;

    /// <summary>Why the connection is unusable, or null while it works.</summary>
    public string? BrokenReason => _client.BrokenReason;

    /// <summary>Requests received on the back-end channel.</summary>
    public long BackendChannelMessages => _channelServer?.Messages ?? 0;

    /// <summary>Back-end channel requests that were refused (bad host-notifier areas, unknown requests).</summary>
    public long BackendChannelErrors => _channelServer?.Errors ?? 0;

    /// <summary>DMA mappings known to this front-end.</summary>
    public int DmaRegionCount
    {
        get
        {
            lock (_ctl)
            {
                return _memory.Count;
            }
        }
    }

    private bool HasProtocol(int bit) => _client.HasProtocol(bit);

    private bool RingsNeedEnable => Has(_client.BackendFeatures, F_PROTOCOL_FEATURES);

    private void Log(string s) => _options.Log($"{Name}: {s}");

    private void StartThreads()
    {
        _calls = new EventFdFanIn($"{Name} calls", Interrupt,
            (q, e) => Log($"queue {q}: callback failed: {e.Message}"), _ => { }, Log,
            [.. _vqs.Select((v, q) => (q, v.Call))]);
        if (_client.Channel is { } channel)
        {
            _channelServer = new BackendChannelServer(Name, channel, _notifiers,
                HasProtocol(VhostUserProtocolFeature.HOST_NOTIFIER), ConfigChanged, Log);
        }
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    // ---- identity --------------------------------------------------------------------------------

    public uint GetDeviceId() => DeviceIdNet;

    /// <summary>The virtio PCI vendor (there is no PCI function here).</summary>
    public uint GetVendorId() => 0x1AF4;

    public uint GetVqAlign() => 4096;

    // ---- features --------------------------------------------------------------------------------

    /// <summary>
    /// The back-end's features without <see cref="FrontendHandled"/>, plus ACCESS_PLATFORM (the driver's
    /// IOVAs are the back-end's guest-physical addresses, and it reaches only DMA-mapped memory), plus MAC
    /// and STATUS when config space is synthesized (as virtio-user does).
    /// </summary>
    public ulong GetDeviceFeatures()
    {
        ulong f = (_client.BackendFeatures & ~FrontendHandled) | Bit(F_ACCESS_PLATFORM);
        if (!_client.ConfigFromBackend)
        {
            f |= Bit(NET_F_MAC) | Bit(NET_F_STATUS);
        }
        return f;
    }

    public void SetDriverFeatures(ulong features)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            if ((_status & VirtioStatus.FEATURES_OK) != 0)
            {
                throw new InvalidOperationException($"{Name}: driver features are frozen once FEATURES_OK is set (reset first)");
            }
            ulong extra = features & ~GetDeviceFeatures();
            if (extra != 0)
            {
                throw new ArgumentException($"{Name}: driver features 0x{features:x} include bits the device does not offer: {string.Join(' ', Names(extra))}");
            }
            _driverFeatures = features;
        }
    }

    public ulong GetDriverFeatures()
    {
        lock (_ctl)
        {
            return _driverFeatures;
        }
    }

    /// <summary>What SET_FEATURES carries: the driver's choice the back-end offered, never ACCESS_PLATFORM, plus bit 30.</summary>
    private ulong BackendAck =>
        (_driverFeatures & _client.BackendFeatures & ~Bit(F_ACCESS_PLATFORM) & ~Bit(F_LOG_ALL)) |
        (_client.BackendFeatures & Bit(F_PROTOCOL_FEATURES)) | LogAllBit;

    private bool Packed => Has(_driverFeatures, F_RING_PACKED);

    // ---- status ----------------------------------------------------------------------------------

    public byte GetStatus()
    {
        lock (_ctl)
        {
            return _status;
        }
    }

    /// <summary>
    /// FEATURES_OK sends SET_FEATURES (and NET_SET_MTU); if the back-end refuses, FEATURES_OK does not
    /// stick (the driver sees it missing). DRIVER_OK starts every ready queue, then SET_STATUS, then
    /// SET_VRING_ENABLE. With the STATUS protocol feature every change is also sent as SET_STATUS.
    /// </summary>
    public void SetStatus(byte status)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            if (status == 0)
            {
                ResetLocked();
                return;
            }
            byte old = _status;
            if (status == old)
            {
                return;
            }
            _client.ThrowIfBroken();
            byte s = status;
            if ((s & VirtioStatus.FEATURES_OK) != 0 && (old & VirtioStatus.FEATURES_OK) == 0 && !SendFeatures())
            {
                s &= unchecked((byte)~(VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK));
            }
            bool startNow = (s & VirtioStatus.DRIVER_OK) != 0 && (old & VirtioStatus.DRIVER_OK) == 0;
            var started = new List<int>();
            if (startNow && !_suspended)
            {
                if (_driverFeatures == 0 || (s & VirtioStatus.FEATURES_OK) == 0)
                {
                    throw new InvalidOperationException($"{Name}: DRIVER_OK without FEATURES_OK");
                }
                _memory.EnsureAtBackend();
                for (int q = 0; q < _vqs.Length; q++)
                {
                    if (_vqs[q].Ready && !_vqs[q].Started)
                    {
                        StartQueue(q);
                        started.Add(q);
                    }
                }
            }
            if (HasProtocol(VhostUserProtocolFeature.STATUS))
            {
                _client.SendU64(VhostUserRequest.SET_STATUS, s);
                if ((s & VirtioStatus.FEATURES_OK) != 0 && (old & VirtioStatus.FEATURES_OK) == 0)
                {
                    ulong back = _client.GetU64(VhostUserRequest.GET_STATUS);
                    if (back > 0xFF)
                    {
                        throw _client.Broken($"GET_STATUS answered 0x{back:x}, not a status byte");
                    }
                    if ((back & VirtioStatus.FEATURES_OK) == 0)
                    {
                        Log($"the back-end cleared FEATURES_OK (status 0x{back:x}): features 0x{BackendAck:x} refused");
                        s &= unchecked((byte)~(VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK));
                    }
                }
            }
            foreach (int q in started)
            {
                EnableQueue(q, true);
            }
            _status = s;
        }
    }

    /// <summary>SET_FEATURES (+ NET_SET_MTU); false when the back-end refused them.</summary>
    private bool SendFeatures()
    {
        ulong f = BackendAck;
        try
        {
            _client.SendU64(VhostUserRequest.SET_FEATURES, f);
        }
        catch (InvalidOperationException e)
        {
            Log(e.Message);
            return false;
        }
        if (Has(f, NET_F_MTU) && HasProtocol(VhostUserProtocolFeature.MTU))
        {
            ushort mtu = _config.Mtu();
            try
            {
                _client.SendU64(VhostUserRequest.NET_SET_MTU, mtu);
            }
            catch (InvalidOperationException e)
            {
                Log(e.Message);
                return false;
            }
        }
        Log($"features 0x{f:x} set");
        return true;
    }

    public void Reset()
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            ResetLocked();
        }
    }

    /// <summary>
    /// Stops running queues (GET_VRING_BASE), SET_STATUS 0, RESET_DEVICE when negotiated (the back-end
    /// then forgets the memory table too: it is sent again before the next start), and forgets status,
    /// features, queue setup, callbacks and host notifiers. DMA mappings stay (they belong to the IOMMU
    /// domain, not to the device status). Back-end errors are logged, never thrown.
    /// </summary>
    private void ResetLocked()
    {
        if (!_client.IsBroken)
        {
            try
            {
                for (int q = 0; q < _vqs.Length; q++)
                {
                    if (_vqs[q].Started)
                    {
                        StopQueue(q);
                    }
                }
                if (HasProtocol(VhostUserProtocolFeature.STATUS))
                {
                    _client.SendU64(VhostUserRequest.SET_STATUS, 0);
                }
                if (HasProtocol(VhostUserProtocolFeature.RESET_DEVICE))
                {
                    _client.Request(VhostUserRequest.RESET_DEVICE, []);
                    _memory.BackendReset();
                }
            }
            catch (Exception e) when (e is IOException or InvalidOperationException)
            {
                Log($"reset: {e.Message}");
            }
        }
        _status = 0;
        _driverFeatures = 0;
        _suspended = false;
        _logging = false; // the back-end forgot the features with LOG_ALL; the log itself stays until the next start
        foreach (var v in _vqs)
        {
            v.Num = 0;
            v.Desc = v.Avail = v.Used = 0;
            v.Ready = false;
            v.Started = false;
            v.State = default;
            v.SentCall = null;
            Volatile.Write(ref v.Callback, null);
        }
        Volatile.Write(ref _configCallback, null);
        _notifiers.Drop();
    }

    /// <summary>Stops every running queue (their state is saved); <see cref="Resume"/> restarts them.</summary>
    public void Suspend()
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            _client.ThrowIfBroken();
            for (int q = 0; q < _vqs.Length; q++)
            {
                if (_vqs[q].Started)
                {
                    StopQueue(q);
                }
            }
            _suspended = true;
        }
    }

    public void Resume()
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            _client.ThrowIfBroken();
            if (!_suspended)
            {
                return;
            }
            _suspended = false;
            if ((_status & VirtioStatus.DRIVER_OK) == 0)
            {
                return;
            }
            _memory.EnsureAtBackend();
            for (int q = 0; q < _vqs.Length; q++)
            {
                if (_vqs[q].Ready && !_vqs[q].Started)
                {
                    StartQueue(q);
                    EnableQueue(q, true);
                }
            }
        }
    }

    // ---- config space ----------------------------------------------------------------------------

    public uint GetGeneration() => (uint)Volatile.Read(ref _generation);

    public uint GetConfigSize() => ConfigBytes;

    /// <summary>Reads config space: GET_CONFIG from the back-end when it serves it, else the synthesized one.</summary>
    public void GetConfig(uint offset, Span<byte> buffer)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            _config.Read(offset, buffer);
        }
    }

    /// <summary>SET_CONFIG when the back-end serves config space; otherwise only the synthesized MAC is writable.</summary>
    public void SetConfig(uint offset, ReadOnlySpan<byte> buffer)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            _config.Write(offset, buffer);
        }
    }

    public void SetConfigCallback(VdpaCallback? callback) => Volatile.Write(ref _configCallback, callback);

    /// <summary>A CONFIG_CHANGE_MSG arrived: run the config callback off the back-end channel's thread.</summary>
    private void ConfigChanged()
    {
        Interlocked.Increment(ref _generation);
        ThreadPool.QueueUserWorkItem(_ =>
        {
            if (_disposed)
            {
                return;
            }
            try
            {
                Volatile.Read(ref _configCallback)?.Invoke();
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Log($"config callback failed: {e.Message}");
            }
        });
    }

    // ---- DMA -------------------------------------------------------------------------------------

    /// <summary>
    /// Gives the back-end [iova, iova+size) as a memory region (GPA = IOVA, UVA = host address): the memory
    /// must be a live <see cref="MappedMemory.CreateShared"/> region, because vhost-user passes memory by
    /// file descriptor. The back-end can write every region (vhost-user has no read-only regions).
    /// </summary>
    public void DmaMap(ulong iova, MemorySlice memory, bool writable)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            _memory.Map(iova, memory);
            if (_logging)
            {
                EnsureLogCovers(); // pages of the new mapping must have bits before the device writes them
            }
        }
    }

    /// <summary>Removes the mapping made with exactly this IOVA and size; back-end errors are logged, not thrown.</summary>
    public void DmaUnmap(ulong iova, ulong size)
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            _memory.Unmap(iova, size, Log);
        }
    }

    // ---- teardown --------------------------------------------------------------------------------

    /// <summary>
    /// Closes the connection (the back-end sees the front-end leave and stops), stops the threads, unmaps
    /// host notifiers and closes every descriptor. Sends nothing, so it cannot hang on a stuck back-end.
    /// </summary>
    public void Dispose()
    {
        lock (_ctl)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
        }
        _client.Shutdown();
        _calls?.Dispose();
        _channelServer?.Dispose();
        _client.Dispose();
        _notifiers.Drop(close: true);
        foreach (var v in _vqs)
        {
            v.Kick.Dispose();
            v.Call.Dispose();
        }
        lock (_ctl)
        {
            _memory.Dispose();
            _dirtyLog?.Dispose();
        }
    }
}
