using IfcVdpa.Pci;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.Ifcvf;

/// <summary>
/// The IFC VF as a vDPA device (Linux ifcvf_main, "immediate" model of Linux ≥ 6.5): every vq op
/// writes the registers at once through <see cref="IfcvfHw"/>; vq state lives in the BAR4
/// live-migration block; interrupts are set up on entering DRIVER_OK and released on leaving it.
/// Control ops are serialised by one lock (the register file has a queue_select); <see cref="KickVq"/>
/// and the interrupt handlers take no lock.
/// </summary>
/// <remarks>
/// Ops table (vdpa_config_ops → here): get/set_status, reset, get_device_features, set/get_driver_features,
/// get_vq_num_max/min, get_vq_size, set_vq_num, set_vq_address, set/get_vq_ready, set/get_vq_state (LM
/// block), set_vq_cb, kick_vq, get_vq_notification, get_generation, get_device_id, get_vendor_id,
/// get_vq_align, get_config_size, get/set_config, set_config_cb, dma_map/unmap (to the PCI function's
/// IOMMU domain), vendor vq stats, suspend/resume (with the LM block: every enabled queue is disabled,
/// which makes the VF store its ring state in BAR4, and re-enabled from that state). Optional ops:
/// <see cref="IVdpaDirtyLog"/> (the LM block's dirty-page log, as DPDK's ifc driver uses it) and
/// <see cref="IVdpaFrameInjection"/> (only the software VF can send a frame outside its rings).
/// </remarks>
public sealed partial class IfcvfAdapter : IVdpaDevice, IVdpaDeviceDiagnostics, IVdpaDirtyLog, IVdpaFrameInjection, IDisposable
{
    /// <summary>IFCVF_MIN_VQ_SIZE.</summary>
    public const ushort MinVqSize = 64;

    /// <summary>get_vq_align: PAGE_SIZE.</summary>
    public const uint VqAlign = 4096;

    /// <summary>VIRTIO_ID_NET.</summary>
    public const uint VirtioIdNet = 1;

    private readonly Lock _ctl = new();
    private readonly IfcvfHw _hw;
    private readonly IPciFunction _pci;
    private readonly bool _useLm;
    private readonly ushort[] _maxSize;
    private readonly ushort _maxVqNum;
    private readonly ushort? _mtu;
    private readonly ushort? _maxVqPairs;
    private readonly long[] _kicks;
    private readonly bool[] _softStopped; // plain virtio: queue "stopped" until the next reset (no queue_enable=0)
    private readonly long[] _interrupts;
    private readonly bool[] _suspended; // queues Suspend disabled and Resume re-enables
    private readonly int[] _deferredKick; // 1: a kick arrived while the queue was suspended or the device not running (rung later)
    private int _kickGate;                // 1 while DRIVER_OK is set: kicks go to the doorbell; 0: they wait (KickVq)
    private int _kicksInFlight;           // KickVq calls past the gate check (CloseKickGate waits for them)
    private bool _dirtyLogOn;
    private readonly Dictionary<(ulong Iova, ulong Size), bool> _dmaMaps = [];
    private bool _removed;

    private IfcvfAdapter(IPciFunction pci, IfcvfHw hw, IfcvfAdapterOptions options, bool isIfc, ushort subsystemVendor)
    {
        _pci = pci;
        _hw = hw;
        Name = options.Name;
        IsIfc = isIfc;
        SubsystemVendorId = subsystemVendor;
        RequireAccessPlatform = options.RequireAccessPlatform;
        // A plain virtio-net function has no IFC live-migration block: BAR4 (if any) is something else.
        _useLm = isIfc && hw.HasLm;
        NumVqs = hw.NumQueues;
        DeviceClass = ClassOf(pci);
        if (DeviceClass == IfcDeviceClass.Block)
        {
            if (NumVqs < 1)
            {
                throw new IfcvfProbeException($"{pci.Address}: a virtio-blk device needs at least one request queue");
            }
        }
        else if (NumVqs < 2)
        {
            throw new IfcvfProbeException($"{pci.Address}: {NumVqs} virtqueue(s); a virtio-net device needs at least one RX/TX pair");
        }
        // Start from a clean device: whatever a previous owner left running stops here.
        hw.SetConfigVector(VirtioPci.NoVector);
        hw.Reset();
        _maxSize = new ushort[NumVqs];
        for (int q = 0; q < NumVqs; q++)
        {
            _maxSize[q] = hw.GetVqMaxSize(q);
            _maxVqNum = Math.Max(_maxVqNum, _maxSize[q]);
        }
        if (_maxVqNum == 0)
        {
            throw new IfcvfProbeException($"{pci.Address}: every queue reports size 0 (no usable virtqueue)");
        }
        _kicks = new long[NumVqs];
        _softStopped = new bool[NumVqs];
        _interrupts = new long[NumVqs];
        _suspended = new bool[NumVqs];
        _deferredKick = new int[NumVqs];
        _vqCallbacks = new VdpaCallback?[NumVqs];
        HardwareFeatures = hw.GetDeviceFeatures();
        DeviceFeatures = HardwareFeatures;
        Provision(options, out _mtu, out _maxVqPairs);
    }

    /// <summary>Probes a PCI function: identity check, capability walk, reset, queue geometry, provisioning.</summary>
    /// <exception cref="IfcvfProbeException">Not an IFC VF (or not a usable one).</exception>
    /// <exception cref="VdpaException">A provisioning attribute the VF cannot honour.</exception>
    public static IfcvfAdapter Probe(IPciFunction pci, IfcvfAdapterOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(pci);
        options ??= new IfcvfAdapterOptions();
        var (isIfc, subVendor) = CheckIdentity(pci, options.AcceptGenericVirtioNet);
        var hwOptions = options.Hw;
        if (ClassOf(pci) == IfcDeviceClass.Block && hwOptions.LmLayout == LmLayout.PairBlocks)
        {
            // A block VF keeps one ring-state slot per queue (DPDK's ifc driver for block VFs).
            hwOptions = hwOptions with { LmLayout = LmLayout.PerQueueBlocks };
        }
        var hw = IfcvfHw.Init(pci, hwOptions);
        return new IfcvfAdapter(pci, hw, options, isIfc, subVendor);
    }

    /// <summary>
    /// What a management device reports for a function before any vDPA device exists on it (`vdpa mgmtdev
    /// show`: supported features, max vqs): identity check, capability walk and device_feature, nothing written.
    /// </summary>
    public static (ulong SupportedFeatures, int MaxSupportedVqs) DescribeFunction(IPciFunction pci, bool acceptGenericVirtioNet)
    {
        CheckIdentity(pci, acceptGenericVirtioNet);
        var hw = IfcvfHw.Init(pci);
        return (hw.GetDeviceFeatures(), hw.NumQueues);
    }

    /// <summary>
    /// The PCI ID table (ifcvf_pci_ids): N3000 1AF4:1041 sub 8086:001A, C5000X-PL net 1AF4:1000 sub
    /// 8086:0001 (driven in modern mode only); optionally any modern virtio-net 1AF4:1041.
    /// </summary>
    public static (bool IsIfc, ushort SubsystemVendor) CheckIdentity(IPciFunction pci, bool acceptGenericVirtioNet)
    {
        ArgumentNullException.ThrowIfNull(pci);
        ushort vendor = pci.ReadConfig16(PciConfig.VendorId);
        ushort device = pci.ReadConfig16(PciConfig.DeviceId);
        ushort subVendor = pci.ReadConfig16(PciConfig.SubsystemVendorId);
        ushort subDevice = pci.ReadConfig16(PciConfig.SubsystemId);
        string id = $"{vendor:x4}:{device:x4} subsystem {subVendor:x4}:{subDevice:x4}";
        if (vendor != VirtioPci.VendorId)
        {
            throw new IfcvfProbeException($"{pci.Address}: {id} is not a virtio function (vendor must be 1af4)");
        }
        switch (IfcPciIds.Find(vendor, device, subVendor, subDevice)?.Class)
        {
            case IfcDeviceClass.Net:
                return (true, subVendor);
            case IfcDeviceClass.Block:
                return (true, subVendor);
        }
        if (device == VirtioPci.ModernNetDeviceId)
        {
            if (acceptGenericVirtioNet)
            {
                return (false, subVendor);
            }
            throw new IfcvfProbeException($"{pci.Address}: {id} is a generic virtio-net function, not an IFC VF (accept it with the generic-virtio-net option, like DPDK's vdpa=1)");
        }
        throw new IfcvfProbeException($"{pci.Address}: {id} is not an IFC VF (expected 1af4:1041 subsystem 8086:001a, 1af4:1000 subsystem 8086:0001, or the block VF 1af4:1042 / 1af4:1001 subsystem 8086:0002)");
    }

    /// <summary>The device class an IFC VF's IDs say (anything not in the table is driven as net).</summary>
    public static IfcDeviceClass ClassOf(IPciFunction pci)
    {
        ArgumentNullException.ThrowIfNull(pci);
        return IfcPciIds.Find(pci.ReadConfig16(PciConfig.VendorId), pci.ReadConfig16(PciConfig.DeviceId),
            pci.ReadConfig16(PciConfig.SubsystemVendorId), pci.ReadConfig16(PciConfig.SubsystemId))?.Class ?? IfcDeviceClass.Net;
    }

    private void Provision(IfcvfAdapterOptions o, out ushort? mtu, out ushort? maxVqPairs)
    {
        mtu = null;
        maxVqPairs = null;
        if (DeviceClass == IfcDeviceClass.Block && (o.Mac is not null || o.Mtu is not null || o.MaxVqPairs is not null))
        {
            throw new VdpaException($"{_pci.Address} is a block VF: mac, mtu and max_vqp are virtio-net attributes");
        }
        if (o.DeviceFeatures is ulong want)
        {
            ulong extra = want & ~HardwareFeatures;
            if (extra != 0)
            {
                throw new VdpaException($"device_features 0x{want:x} are not a subset of what {_pci.Address} offers (0x{HardwareFeatures:x}): {string.Join(' ', Names(extra))} not supported");
            }
            if (!Has(want, F_VERSION_1))
            {
                throw new VdpaException($"device_features 0x{want:x} lack VERSION_1: the IFC VF is a modern (virtio 1.x) device only");
            }
            DeviceFeatures = want;
        }
        int hwPairs = NumVqs / 2;
        bool hasCvq = NumVqs % 2 == 1;
        if (o.MaxVqPairs is ushort pairs)
        {
            if (pairs < 1 || pairs > hwPairs)
            {
                throw new VdpaException($"max_vqp {pairs} out of range: {_pci.Address} has {hwPairs} queue pair(s)");
            }
            if (pairs < hwPairs && hasCvq)
            {
                throw new VdpaException($"max_vqp {pairs} below the VF's {hwPairs}: its control queue sits at index {2 * hwPairs}, so the pair count is fixed by hardware");
            }
            maxVqPairs = pairs;
        }
        if (o.Mtu is ushort m)
        {
            if (!Has(DeviceFeatures, NET_F_MTU))
            {
                throw new VdpaException("mtu cannot be provisioned: the device features lack MTU");
            }
            Span<byte> b = stackalloc byte[2];
            _hw.ReadDeviceConfig(VirtioNetConfig.Mtu, b);
            ushort hwMtu = (ushort)(b[0] | (b[1] << 8));
            if (m < 68 || m > hwMtu)
            {
                throw new VdpaException($"mtu {m} out of range: {_pci.Address} supports 68..{hwMtu}");
            }
            mtu = m;
        }
        if (o.Mac is { } macMem)
        {
            var mac = macMem.Span;
            if (mac.Length != 6)
            {
                throw new VdpaException($"mac must be 6 bytes, not {mac.Length}");
            }
            if (!MacAddress.IsUnicast(mac))
            {
                throw new VdpaException($"mac {MacAddress.Format(mac)} is not a unicast address");
            }
            if (!Has(DeviceFeatures, NET_F_MAC))
            {
                throw new VdpaException("mac cannot be provisioned: the device features lack MAC");
            }
            _hw.WriteDeviceConfig(VirtioNetConfig.Mac, mac);
            Span<byte> back = stackalloc byte[6];
            _hw.ReadDeviceConfig(VirtioNetConfig.Mac, back);
            if (!back.SequenceEqual(mac))
            {
                throw new IfcvfDeviceException($"{_pci.Address}: the VF did not take mac {MacAddress.Format(mac)} (reads {MacAddress.Format(back)})");
            }
        }
    }

    // ---- identity and properties ---------------------------------------------------------------

    public string Name { get; }

    public int NumVqs { get; }

    /// <summary>True for an IFC VF; false for a generic virtio-net accepted with the vdpa=1-style option.</summary>
    public bool IsIfc { get; }

    /// <summary>Whether vq state is served from the BAR4 live-migration block.</summary>
    public bool HasLiveMigrationBlock => _useLm;

    public ushort SubsystemVendorId { get; }

    /// <summary>Everything the VF offers (the management device's supported features).</summary>
    public ulong HardwareFeatures { get; }

    /// <summary>What this vDPA device offers: the provisioned device_features (default: all of the VF's).</summary>
    public ulong DeviceFeatures { get; private set; }

    /// <summary>Kernel-style interface: driver features must include ACCESS_PLATFORM (the vhost-user consumer clears this).</summary>
    public bool RequireAccessPlatform { get; set; }

    public IPciFunction Function => _pci;

    public IfcvfHw Hw => _hw;

    /// <summary>Net or block (from the PCI IDs).</summary>
    public IfcDeviceClass DeviceClass { get; }

    public uint GetDeviceId() => DeviceClass == IfcDeviceClass.Block ? VirtioBlk.DeviceId : VirtioIdNet;

    public uint GetVendorId() => SubsystemVendorId;

    public uint GetVqAlign() => VqAlign;

    // ---- features ------------------------------------------------------------------------------

    public ulong GetDeviceFeatures() => DeviceFeatures;

    public void SetDriverFeatures(ulong features)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            if ((_hw.GetStatus() & VirtioStatus.FEATURES_OK) != 0)
            {
                throw new VdpaException($"{Name}: driver features are frozen once FEATURES_OK is set (reset first)");
            }
            if (features != 0)
            {
                if (!Has(features, F_VERSION_1))
                {
                    throw new VdpaException($"{Name}: driver features 0x{features:x} lack VERSION_1: the IFC VF is a modern (virtio 1.x) device only");
                }
                if (RequireAccessPlatform && !Has(features, F_ACCESS_PLATFORM))
                {
                    throw new VdpaException($"{Name}: driver features 0x{features:x} lack ACCESS_PLATFORM, which vDPA requires (the device reaches memory only through its IOMMU domain)");
                }
                ulong extra = features & ~DeviceFeatures;
                if (extra != 0)
                {
                    throw new VdpaException($"{Name}: driver features 0x{features:x} include bits the device does not offer: {string.Join(' ', Names(extra))}");
                }
            }
            _hw.SetDriverFeatures(features);
        }
    }

    public ulong GetDriverFeatures()
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            return _hw.GetDriverFeatures();
        }
    }

    // ---- status --------------------------------------------------------------------------------

    public byte GetStatus()
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            return _hw.GetStatus();
        }
    }

    /// <summary>
    /// set_status: an unchanged status is a no-op; 0 is a reset; entering DRIVER_OK sets up the interrupts
    /// first (if that fails the status is not written); leaving DRIVER_OK releases them. The status byte
    /// itself goes to the device unchanged, which validates FEATURES_OK on its own.
    /// </summary>
    public void SetStatus(byte status)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            byte old = _hw.GetStatus();
            if (status == old)
            {
                return;
            }
            if (status == 0)
            {
                ResetLocked();
                return;
            }
            bool hadOk = (old & VirtioStatus.DRIVER_OK) != 0;
            bool wantOk = (status & VirtioStatus.DRIVER_OK) != 0;
            if (wantOk && !hadOk)
            {
                RequestIrqs();
                if (_useLm)
                {
                    // As DPDK's ifc driver does on start: the firmware learns how many queue pairs are in use.
                    _hw.SetMq(EnabledQueuePairs());
                }
            }
            else if (!wantOk && hadOk)
            {
                CloseKickGate();
                QuiesceIrqs();
            }
            _hw.SetStatus(status);
            if (wantOk && !hadOk)
            {
                OpenKickGate();
            }
        }
    }

    /// <summary>
    /// Kicks reach the doorbell only while DRIVER_OK is set (VIRTIO 1.2 §3.1.1: no notification before it).
    /// Closing waits for kicks already past the check, so none lands on a device being reset or stopped.
    /// </summary>
    private void CloseKickGate()
    {
        Interlocked.Exchange(ref _kickGate, 0);
        var spin = default(SpinWait);
        while (Volatile.Read(ref _kicksInFlight) != 0)
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>Opens the gate at DRIVER_OK and rings, once, what was kicked while it was closed (queues enabled only).</summary>
    private void OpenKickGate()
    {
        Interlocked.Exchange(ref _kickGate, 1);
        var spin = default(SpinWait);
        while (Volatile.Read(ref _kicksInFlight) != 0)
        {
            spin.SpinOnce(sleep1Threshold: -1); // a kick that saw the gate closed records itself before it leaves
        }
        for (int q = 0; q < NumVqs; q++)
        {
            if (!Volatile.Read(ref _suspended[q]) && _hw.GetVqReady(q))
            {
                RingDeferredKick(q);
            }
        }
    }

    /// <summary>
    /// reset: quiesce interrupts (every vector NO_VECTOR, MSI-X disabled, callbacks cleared as Linux does),
    /// then reset the device and wait (bounded) until it reads 0.
    /// </summary>
    public void Reset()
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            ResetLocked();
        }
    }

    private void ResetLocked()
    {
        CloseKickGate();
        QuiesceIrqs();
        for (int q = 0; q < NumVqs; q++)
        {
            Volatile.Write(ref _vqCallbacks[q], null);
        }
        Volatile.Write(ref _configCallback, null);
        _hw.Reset();
        Array.Clear(_softStopped);
        Array.Clear(_suspended);
        Array.Clear(_deferredKick);
        _dirtyLogOn = false;
    }

    /// <summary>Whether <see cref="Suspend"/> stopped the device and <see cref="Resume"/> has not restarted it.</summary>
    public bool Suspended
    {
        get { lock (_ctl) { return Array.IndexOf(_suspended, true) >= 0; } }
    }

    /// <summary>
    /// suspend (what vhost-vdpa calls before it reads the ring state for a migration): the IFC VF has no
    /// device-wide stop, so every enabled queue is disabled and waited for, which makes the VF finish its
    /// in-flight work and store the queue's ring state in the LM block. Status, features, interrupts, DMA
    /// mappings and the dirty log stay; <see cref="GetVqState"/> then reads where each queue stopped, and
    /// <see cref="GetVqReady"/> still reports the queue ready (it is stopped, not unconfigured). A plain
    /// virtio function (no LM block) cannot stop a queue and keep its state: not supported.
    /// </summary>
    public void Suspend()
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            RequireLiveMigrationBlock("suspend");
            for (int q = 0; q < NumVqs; q++)
            {
                if (!_suspended[q] && _hw.GetVqReady(q))
                {
                    Volatile.Write(ref _suspended[q], true); // first: kicks from now on wait for Resume (KickVq)
                    _hw.DisableVqAndWait(q);
                }
            }
        }
    }

    /// <summary>resume: re-enables the queues <see cref="Suspend"/> stopped; each continues from its saved ring state (or one set meanwhile).</summary>
    public void Resume()
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            RequireLiveMigrationBlock("resume");
            for (int q = 0; q < NumVqs; q++)
            {
                if (!_suspended[q])
                {
                    continue;
                }
                _hw.SetVqReady(q, true);
                if (!_hw.GetVqReady(q))
                {
                    throw new IfcvfDeviceException($"{Name}: queue {q} did not enable again on resume");
                }
                Volatile.Write(ref _suspended[q], false); // after the enable: KickVq rings the doorbell again
                RingDeferredKick(q);
            }
        }
    }

    // ---- config space --------------------------------------------------------------------------

    public uint GetGeneration()
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            return _hw.GetConfigGeneration();
        }
    }

    /// <summary>min(DEVICE_CFG capability length, sizeof(virtio_net_config) or sizeof(virtio_blk_config)).</summary>
    public uint GetConfigSize() =>
        Math.Min(_hw.DeviceConfigSize, (uint)(DeviceClass == IfcDeviceClass.Block ? VirtioBlkConfig.Size : VirtioNetConfig.Size));

    /// <summary>Byte-wise read inside the generation retry loop, with the provisioned mtu / max_vqp shown.</summary>
    public void GetConfig(uint offset, Span<byte> buffer)
    {
        CheckConfigRange(offset, buffer.Length);
        lock (_ctl)
        {
            ThrowIfRemoved();
            _hw.ReadDeviceConfig(offset, buffer);
        }
        if (_mtu is ushort mtu)
        {
            Patch16(offset, buffer, VirtioNetConfig.Mtu, mtu);
        }
        if (_maxVqPairs is ushort pairs)
        {
            Patch16(offset, buffer, VirtioNetConfig.MaxVirtqueuePairs, pairs);
        }
    }

    public void SetConfig(uint offset, ReadOnlySpan<byte> buffer)
    {
        CheckConfigRange(offset, buffer.Length);
        lock (_ctl)
        {
            ThrowIfRemoved();
            _hw.WriteDeviceConfig(offset, buffer);
        }
    }

    private void CheckConfigRange(uint offset, int length)
    {
        if ((ulong)offset + (ulong)length > GetConfigSize())
        {
            throw new VdpaException($"{Name}: config [{offset}, +{length}) beyond the {GetConfigSize()}-byte config space");
        }
    }

    private static void Patch16(uint offset, Span<byte> buffer, int field, ushort value)
    {
        for (int i = 0; i < 2; i++)
        {
            long pos = field + i - (long)offset;
            if (pos >= 0 && pos < buffer.Length)
            {
                buffer[(int)pos] = (byte)(value >> (8 * i));
            }
        }
    }

    private uint EnabledQueuePairs()
    {
        if (DeviceClass == IfcDeviceClass.Block)
        {
            uint queues = 0; // a block VF's MQ register counts queues, not pairs
            for (int q = 0; q < NumVqs; q++)
            {
                queues += _hw.GetVqReady(q) ? 1u : 0u;
            }
            return queues;
        }
        int dataQueues = NumVqs - (NumVqs % 2); // the control queue (odd count) is not a pair
        uint pairs = 0;
        for (int q = 0; q < dataQueues; q += 2)
        {
            if (_hw.GetVqReady(q) || _hw.GetVqReady(q + 1))
            {
                pairs++;
            }
        }
        return pairs;
    }

    // ---- removal -------------------------------------------------------------------------------

    /// <summary>
    /// Removes the device (dev del): quiesces interrupts, resets the VF (which stops its datapath) and
    /// removes every DMA mapping made through it. The PCI function itself stays with its owner.
    /// </summary>
    public void Dispose()
    {
        lock (_ctl)
        {
            if (_removed)
            {
                return;
            }
            _removed = true;
            Exception? failure = null;
            try
            {
                ResetLocked();
            }
            catch (IfcvfDeviceException e)
            {
                failure = e; // a dead device: still release what we own
                QuiesceIrqsBestEffort();
            }
            foreach (var (iova, size) in _dmaMaps.Keys)
            {
                try
                {
                    _pci.DmaUnmap(iova, size);
                }
                catch (ArgumentException)
                {
                    // already gone from the function's domain; nothing left to release
                }
            }
            _dmaMaps.Clear();
            if (failure is not null)
            {
                throw new IfcvfDeviceException($"{Name}: removed, but the device did not reset: {failure.Message}");
            }
        }
    }

    private void ThrowIfRemoved() => ObjectDisposedException.ThrowIf(_removed, this);
}
