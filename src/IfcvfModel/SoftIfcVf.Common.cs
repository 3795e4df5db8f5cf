using System.Buffers.Binary;
using System.Diagnostics;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioPci;

namespace IfcVdpa.IfcvfModel;

/// <summary>Virtio common configuration, device status, ISR and device configuration.</summary>
public sealed partial class SoftIfcVf
{
    private sealed class Queue(ushort maxSize)
    {
        public readonly ushort MaxSize = maxSize;
        public ushort Size;
        public ushort Vector;
        public bool Enabled;
        public ulong Desc;
        public ulong Avail;
        public ulong Used;
        /// <summary>True while the datapath owns the rings (enabled + DRIVER_OK + healthy).</summary>
        public bool Running;

        public void Reset()
        {
            Size = MaxSize;
            Vector = NoVector;
            Enabled = false;
            Desc = Avail = Used = 0;
            Running = false;
        }
    }

    private uint _deviceFeatureSelect;
    private uint _driverFeatureSelect;
    private ulong _driverFeatures;
    private ushort _msixConfig;
    private byte _status;
    private byte _generation;
    private ushort _queueSelect;
    private byte _isr;
    private long _resetDoneAt;
    private byte _statusDuringReset;
    private int _churnLeft;
    private bool _resetUnread; // written 0, not read back as 0 yet (VIRTIO 1.2 §4.1.4.3.2)
    private readonly byte[] _mac;
    private readonly ushort _mtu;
    private bool _linkUp = true;
    private bool _announce;

    /// <summary>The device status byte as the device holds it (not delayed by a reset in progress).</summary>
    public byte Status
    {
        get { lock (_regs) { return _status; } }
    }

    /// <summary>Features the driver wrote (meaningful once FEATURES_OK is set).</summary>
    public ulong DriverFeatures
    {
        get { lock (_regs) { return _driverFeatures; } }
    }

    public byte ConfigGeneration
    {
        get { lock (_regs) { return _generation; } }
    }

    private void ResetRegisters()
    {
        _deviceFeatureSelect = 0;
        _driverFeatureSelect = 0;
        _driverFeatures = 0;
        _msixConfig = NoVector;
        _status = 0;
        _queueSelect = 0;
        _isr = 0;
        _announce = false;
        NeedsResetReason = null;
        foreach (var q in _queues)
        {
            q.Reset();
        }
        ResetLm();
        _churnLeft = _options.ConfigChurnReads;
    }

    /// <summary>The natural width of the common-config field at <paramref name="off"/> (64-bit fields: their 32-bit halves), 0 inside a field.</summary>
    private static int FieldWidth(int off) => off switch
    {
        DeviceFeatureSelect or DeviceFeature or DriverFeatureSelect or DriverFeature => 4,
        MsixConfig or VirtioPci.NumQueues or QueueSelect or QueueSize or QueueMsixVector or QueueEnable or QueueNotifyOff => 2,
        DeviceStatus or VirtioPci.ConfigGeneration => 1,
        >= QueueDescLo and < CommonCfgSize when off % 4 == 0 => 4,
        _ => 0,
    };

    private void CheckWidth(int off, int size, bool write)
    {
        if (FieldWidth(off) != size)
        {
            Violation(SpecRule.AccessWidth, $"{size}-byte {(write ? "write" : "read")} at common config 0x{off:x2}");
        }
    }

    private uint ReadCommon(int off, int size)
    {
        CheckWidth(off, size, write: false);
        switch (off)
        {
            case DeviceFeatureSelect when size == 4:
                return _deviceFeatureSelect;
            case DeviceFeature when size == 4:
                return _deviceFeatureSelect switch
                {
                    0 => (uint)DeviceFeatures,
                    1 => (uint)(DeviceFeatures >> 32),
                    _ => 0,
                };
            case DriverFeatureSelect when size == 4:
                return _driverFeatureSelect;
            case DriverFeature when size == 4:
                return _driverFeatureSelect switch
                {
                    0 => (uint)_driverFeatures,
                    1 => (uint)(_driverFeatures >> 32),
                    _ => 0,
                };
            case MsixConfig when size == 2:
                return _msixConfig;
            case VirtioPci.NumQueues when size == 2:
                return (uint)OfferedQueues;
            case DeviceStatus when size == 1:
                return ReadStatusRegister();
            case VirtioPci.ConfigGeneration when size == 1:
                return _generation;
            case QueueSelect when size == 2:
                return _queueSelect;
        }
        var q = SelectedQueue;
        if (q is null)
        {
            return 0; // a queue that does not exist reads as size 0: "unavailable"
        }
        return (off, size) switch
        {
            (QueueSize, 2) => q.Size,
            (QueueMsixVector, 2) => q.Vector,
            (QueueEnable, 2) => q.Enabled ? 1u : 0u,
            (QueueNotifyOff, 2) => _queueSelect,
            (QueueDescLo, 4) => (uint)q.Desc,
            (QueueDescHi, 4) => (uint)(q.Desc >> 32),
            (QueueAvailLo, 4) => (uint)q.Avail,
            (QueueAvailHi, 4) => (uint)(q.Avail >> 32),
            (QueueUsedLo, 4) => (uint)q.Used,
            (QueueUsedHi, 4) => (uint)(q.Used >> 32),
            _ => BadAccess(),
        };
    }

    private uint BadAccess()
    {
        Interlocked.Increment(ref _registerErrors);
        return 0;
    }

    private Queue? SelectedQueue => _queueSelect < OfferedQueues ? _queues[_queueSelect] : null;

    private void WriteCommon(int off, int size, uint value)
    {
        CheckWidth(off, size, write: true);
        if (off is DeviceFeature or VirtioPci.NumQueues or VirtioPci.ConfigGeneration or QueueNotifyOff)
        {
            Violation(SpecRule.ReadOnlyWrite, $"write of 0x{value:x} to the read-only field at common config 0x{off:x2}");
            BadAccess();
            return;
        }
        switch (off, size)
        {
            case (DeviceFeatureSelect, 4):
                _deviceFeatureSelect = value;
                return;
            case (DriverFeatureSelect, 4):
                _driverFeatureSelect = value;
                return;
            case (DriverFeature, 4):
                if ((_status & VirtioStatus.FEATURES_OK) != 0)
                {
                    uint held = _driverFeatureSelect switch { 0 => (uint)_driverFeatures, 1 => (uint)(_driverFeatures >> 32), _ => 0 };
                    if (value != held)
                    {
                        Violation(SpecRule.FeaturesAfterFeaturesOk, $"driver_feature[{_driverFeatureSelect}] = 0x{value:x} after FEATURES_OK (holds 0x{held:x})");
                    }
                    BadAccess(); // features are frozen once FEATURES_OK is accepted
                    return;
                }
                if (_driverFeatureSelect == 0)
                {
                    _driverFeatures = (_driverFeatures & 0xFFFF_FFFF_0000_0000UL) | value;
                }
                else if (_driverFeatureSelect == 1)
                {
                    _driverFeatures = (_driverFeatures & 0xFFFF_FFFFUL) | ((ulong)value << 32);
                }
                return;
            case (MsixConfig, 2):
                CheckVector("msix_config", (ushort)value);
                _msixConfig = AcceptVector((ushort)value);
                return;
            case (DeviceStatus, 1):
                WriteStatus((byte)value);
                return;
            case (QueueSelect, 2):
                _queueSelect = (ushort)value;
                return;
        }
        var q = SelectedQueue;
        if (q is null)
        {
            BadAccess();
            return;
        }
        int qi = _queueSelect;
        switch (off, size)
        {
            case (QueueMsixVector, 2):
                CheckVector($"queue {qi} vector", (ushort)value);
                if (q.Enabled)
                {
                    Violation(SpecRule.VectorWriteWhileEnabled, $"queue {qi} vector 0x{value:x} written while the queue is enabled");
                }
                q.Vector = AcceptVector((ushort)value);
                return;
            case (QueueEnable, 2):
                if (value == 1 && _options.RefuseQueueEnable?.Contains(qi) == true)
                {
                    return; // fault injection: the queue will not enable
                }
                if (value == 1)
                {
                    if ((_status & VirtioStatus.FEATURES_OK) == 0 && !q.Enabled)
                    {
                        Violation(SpecRule.QueueEnableBeforeFeaturesOk, $"queue {qi} enabled with status 0x{_status:x2}");
                    }
                    EnableQueue(qi);
                }
                else if (value == 0)
                {
                    // The IFC VF's own queue stop (its drivers rely on it); virtio 1.x forbids the write.
                    ReportViolation(SpecRule.QueueEnableZero, $"queue_enable = 0 for queue {qi}");
                    DisableQueue(qi);
                }
                else
                {
                    Violation(SpecRule.QueueEnableValue, $"queue_enable = 0x{value:x} for queue {qi}");
                    BadAccess();
                }
                return;
        }
        if (q.Enabled)
        {
            if (size == FieldWidth(off))
            {
                Violation(SpecRule.QueueWriteWhileEnabled, $"queue {qi} register at 0x{off:x2} = 0x{value:x} while the queue is enabled");
            }
            BadAccess(); // ring layout is frozen while the queue is enabled
            return;
        }
        switch (off, size)
        {
            case (QueueSize, 2):
                if (value > q.MaxSize)
                {
                    Violation(SpecRule.QueueSizeTooLarge, $"queue {qi} size {value} above its maximum {q.MaxSize}");
                }
                else if (value == 0 || (!RingsPacked && (value & (value - 1)) != 0))
                {
                    Violation(SpecRule.QueueSizeInvalid, $"queue {qi} size {value}{(value == 0 ? "" : " (split rings need a power of 2)")}");
                }
                if (value == 0 || value > q.MaxSize)
                {
                    BadAccess();
                }
                else
                {
                    q.Size = (ushort)value;
                }
                return;
            case (QueueDescLo, 4): q.Desc = SetLow(q.Desc, value); return;
            case (QueueDescHi, 4): q.Desc = SetHigh(q.Desc, value); return;
            case (QueueAvailLo, 4): q.Avail = SetLow(q.Avail, value); return;
            case (QueueAvailHi, 4): q.Avail = SetHigh(q.Avail, value); return;
            case (QueueUsedLo, 4): q.Used = SetLow(q.Used, value); return;
            case (QueueUsedHi, 4): q.Used = SetHigh(q.Used, value); return;
            default: BadAccess(); return;
        }
    }

    private static ulong SetLow(ulong v, uint lo) => (v & 0xFFFF_FFFF_0000_0000UL) | lo;

    private static ulong SetHigh(ulong v, uint hi) => (v & 0xFFFF_FFFFUL) | ((ulong)hi << 32);

    private void CheckVector(string what, ushort v)
    {
        if (v != NoVector && v >= MsixVectorCount)
        {
            Violation(SpecRule.VectorOutOfRange, $"{what} {v} beyond the {MsixVectorCount}-entry MSI-X table");
        }
    }

    /// <summary>A vector the device cannot use reads back as NO_VECTOR (VIRTIO 1.2 §4.1.5.1.2).</summary>
    private ushort AcceptVector(ushort v) => v != NoVector && v < MsixVectorCount ? v : NoVector;

    // ---- status -------------------------------------------------------------------------------

    private byte ReadStatusRegister()
    {
        if (_resetDoneAt != 0)
        {
            if (_options.NeverCompleteReset || Stopwatch.GetTimestamp() < _resetDoneAt)
            {
                return _statusDuringReset;
            }
            _resetDoneAt = 0;
        }
        if (_status == 0)
        {
            _resetUnread = false; // the driver saw the reset complete
        }
        return _status;
    }

    private void WriteStatus(byte v)
    {
        if (v == 0)
        {
            DeviceReset();
            return;
        }
        bool reinitEarly = _resetUnread;
        _resetUnread = false;
        byte old = _status;
        byte driverBits = (byte)(v & ~VirtioStatus.NEEDS_RESET); // NEEDS_RESET belongs to the device
        byte oldDriver = (byte)(old & ~VirtioStatus.NEEDS_RESET);
        if (driverBits == oldDriver)
        {
            return; // repeated write of the same status
        }
        bool cleared = (driverBits & oldDriver) != oldDriver;
        if (cleared)
        {
            BadAccess(); // a driver may not clear bits except by writing 0; the device keeps them
        }
        byte next = (byte)(driverBits | oldDriver);
        bool featuresOkNow = (next & VirtioStatus.FEATURES_OK) != 0 && (old & VirtioStatus.FEATURES_OK) == 0;
        if (featuresOkNow && !FeaturesAcceptable(_driverFeatures))
        {
            next = (byte)(next & ~VirtioStatus.FEATURES_OK); // driver reads it back and gives up
        }
        next |= (byte)(old & VirtioStatus.NEEDS_RESET);
        _status = next;
        // The spec checks, once the register holds the new value (strict mode may add NEEDS_RESET to it).
        if (reinitEarly)
        {
            Violation(SpecRule.ReinitBeforeResetDone, $"status 0x{v:x2} written before device_status was read back as 0 after the reset");
        }
        if (cleared)
        {
            Violation(SpecRule.StatusBitCleared, $"status 0x{v:x2} written over 0x{old:x2}");
        }
        CheckStatusOrder(oldDriver, (byte)(driverBits | oldDriver));
        if (featuresOkNow)
        {
            CheckAcceptedFeatures(_driverFeatures);
        }
        if ((next & VirtioStatus.DRIVER_OK) != 0 && (old & VirtioStatus.DRIVER_OK) == 0 && (next & VirtioStatus.FEATURES_OK) == 0)
        {
            // Tolerant or strict: a device whose features were never negotiated cannot run.
            ReportViolation(SpecRule.DriverOkWithoutFeaturesOk, $"status 0x{v:x2} over 0x{old:x2}");
            RaiseNeedsReset("DRIVER_OK set without FEATURES_OK");
            return;
        }
        UpdateRunning();
    }

    /// <summary>VIRTIO 1.2 §3.1.1: ACKNOWLEDGE, then DRIVER, then FEATURES_OK (DRIVER_OK without FEATURES_OK is its own rule).</summary>
    private void CheckStatusOrder(byte before, byte after)
    {
        byte added = (byte)(after & ~before);
        if (((added & VirtioStatus.DRIVER) != 0 && (after & VirtioStatus.ACKNOWLEDGE) == 0) ||
            ((added & VirtioStatus.FEATURES_OK) != 0 && (after & VirtioStatus.DRIVER) == 0) ||
            ((added & VirtioStatus.DRIVER_OK) != 0 && (after & VirtioStatus.FEATURES_OK) != 0 && (after & VirtioStatus.DRIVER) == 0))
        {
            Violation(SpecRule.StatusOutOfOrder, $"status 0x{after:x2} set over 0x{before:x2}");
        }
    }

    /// <summary>VIRTIO 1.2 §2.2.1: only offered features, and none without the feature it requires (§5.1.3.1).</summary>
    private void CheckAcceptedFeatures(ulong f)
    {
        ulong extra = f & ~DeviceFeatures;
        if (extra != 0)
        {
            Violation(SpecRule.UnofferedFeature, $"FEATURES_OK with 0x{f:x}: 0x{extra:x} ({string.Join(' ', VirtioFeature.Names(extra))}) not offered");
        }
        if (!_options.IsBlock && SpecRules.MissingNetDependency(f) is { } dep)
        {
            Violation(SpecRule.FeatureDependency, $"FEATURES_OK with {string.Join(' ', VirtioFeature.Names(VirtioFeature.Bit(dep.Feature)))} but without {string.Join(' ', VirtioFeature.Names(VirtioFeature.Bit(dep.Requires)))}");
        }
    }

    private bool FeaturesAcceptable(ulong f) =>
        (f & ~DeviceFeatures) == 0 && VirtioFeature.Has(f, VirtioFeature.F_VERSION_1);

    private bool DeviceLive =>
        (_status & VirtioStatus.DRIVER_OK) != 0 &&
        (_status & (VirtioStatus.FAILED | VirtioStatus.NEEDS_RESET)) == 0;

    private void DeviceReset()
    {
        byte before = _status;
        StopAllQueues(saveState: false);
        ResetRegisters();
        _resetUnread = true;
        if (_options.NeverCompleteReset || _options.ResetLatency > TimeSpan.Zero)
        {
            _statusDuringReset = before == 0 ? VirtioStatus.ACKNOWLEDGE : before;
            _resetDoneAt = Stopwatch.GetTimestamp() + (long)(_options.ResetLatency.TotalSeconds * Stopwatch.Frequency) + 1;
        }
        // MSI-X enable state belongs to PCI config space: a virtio reset leaves it alone.
    }

    /// <summary>
    /// Marks the device broken (VIRTIO 1.2 §2.1.2): sets NEEDS_RESET, stops every queue and raises the
    /// config interrupt. Called by the datapath on a malformed ring, and by the register file.
    /// </summary>
    public void RaiseNeedsReset(string reason) => RaiseNeedsReset(reason, evenIfReset: false);

    /// <param name="reason">Why (NeedsResetReason).</param>
    /// <param name="evenIfReset">Also on a device in reset (status 0): a strict-mode violation by the driver, not a stale datapath error.</param>
    private void RaiseNeedsReset(string reason, bool evenIfReset)
    {
        lock (_regs)
        {
            if ((_status & VirtioStatus.NEEDS_RESET) != 0 || (_status == 0 && !evenIfReset))
            {
                return;
            }
            NeedsResetReason = reason;
            _needsResetEvents++; // under the register lock; read with Volatile by the stats path
            _status |= VirtioStatus.NEEDS_RESET;
            UpdateRunning();
            SignalConfigChange();
        }
    }

    private void EnableQueue(int qi)
    {
        var q = _queues[qi];
        if (q.Enabled)
        {
            return;
        }
        if (q.Size == 0 || (q.Size & (q.Size - 1)) != 0)
        {
            BadAccess();
            return;
        }
        q.Enabled = true;
        UpdateRunning();
    }

    private void DisableQueue(int qi)
    {
        var q = _queues[qi];
        if (!q.Enabled)
        {
            return;
        }
        // The device stops executing the queue, stores its ring state in the LM block, and only
        // then reports queue_enable = 0 (DPDK 518a27ef6b relies on that order).
        StopQueue(qi, saveState: true);
        q.Enabled = false;
    }

    /// <summary>Starts or stops queues so that exactly the enabled queues of a live device run.</summary>
    private void UpdateRunning()
    {
        bool live = DeviceLive;
        for (int i = 0; i < _queues.Length; i++)
        {
            var q = _queues[i];
            bool want = live && q.Enabled;
            if (want && !q.Running)
            {
                var start = SavedRingState(i);
                _runIndices[i] = start;
                _engine?.StartQueue(this, new QueueStart(i, q.Size, q.Desc, q.Avail, q.Used, start, _driverFeatures));
                Volatile.Write(ref q.Running, true);
            }
            else if (!want && q.Running)
            {
                StopQueue(i, saveState: true);
            }
        }
    }

    private void StopQueue(int qi, bool saveState)
    {
        var q = _queues[qi];
        if (!q.Running)
        {
            return;
        }
        Volatile.Write(ref q.Running, false);
        var idx = _engine?.StopQueue(qi) ?? _runIndices[qi];
        if (saveState)
        {
            SaveRingState(qi, idx);
        }
    }

    private void StopAllQueues(bool saveState)
    {
        for (int i = 0; i < _queues.Length; i++)
        {
            StopQueue(i, saveState);
        }
    }

    /// <summary>Whether a queue's datapath is running (tests and `dev show`).</summary>
    public bool IsQueueRunning(int queue) => Volatile.Read(ref _queues[queue].Running);

    /// <summary>The queue's current MSI-X vector (NO_VECTOR if none).</summary>
    public ushort QueueVector(int queue)
    {
        lock (_regs)
        {
            return _queues[queue].Vector;
        }
    }

    // ---- ISR ----------------------------------------------------------------------------------

    private uint ReadIsr()
    {
        byte v = _isr;
        _isr = 0; // read to clear
        return v;
    }

    // ---- device config (struct virtio_net_config) ---------------------------------------------

    private uint ReadDeviceConfig(int off, int size)
    {
        if (_churnLeft != 0)
        {
            // Fault injection: config that keeps changing under the reader.
            if (_churnLeft > 0)
            {
                _churnLeft--;
            }
            _generation++;
        }
        Span<byte> cfg = stackalloc byte[DeviceConfigLength];
        FillDeviceConfig(cfg);
        return Extract(cfg, off, size);
    }

    private void FillNetConfig(Span<byte> cfg)
    {
        cfg.Clear();
        _mac.CopyTo(cfg[VirtioNetConfig.Mac..]);
        ushort st = (ushort)((_linkUp ? VirtioNetConfig.S_LINK_UP : 0) | (_announce ? VirtioNetConfig.S_ANNOUNCE : 0));
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[VirtioNetConfig.Status..], st);
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[VirtioNetConfig.MaxVirtqueuePairs..], (ushort)_options.QueuePairs);
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[VirtioNetConfig.Mtu..], _mtu);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[VirtioNetConfig.Speed..], 100_000); // Mb/s, unknown = -1
        cfg[VirtioNetConfig.Duplex] = 1; // full
    }

    private void WriteDeviceConfig(int off, int size, uint value)
    {
        // Only the MAC is writable (legacy-style writes that Linux ifcvf set_config issues byte-wise); a
        // block VF has nothing writable (writeback needs CONFIG_WCE, which it does not offer).
        if (_options.IsBlock || off < VirtioNetConfig.Mac || off + size > VirtioNetConfig.Mac + 6)
        {
            Violation(SpecRule.DeviceConfigWrite, $"{size}-byte write of 0x{value:x} at device config 0x{off:x}");
            BadAccess();
            return;
        }
        ReportViolation(SpecRule.MacConfigWrite, $"{size}-byte write at device config 0x{off:x}");
        for (int i = 0; i < size; i++)
        {
            _mac[off + i] = (byte)(value >> (8 * i));
        }
        ConfigChanged(interrupt: false);
    }

    private void ConfigChanged(bool interrupt)
    {
        _generation++;
        if (interrupt)
        {
            SignalConfigChange();
        }
    }

    /// <summary>The whole device config as the driver would read it.</summary>
    public byte[] ReadNetConfigSnapshot()
    {
        lock (_regs)
        {
            var b = new byte[VirtioNetConfig.Size];
            FillNetConfig(b);
            return b;
        }
    }

    /// <summary>Link state as the backend sees it; a change bumps the generation and raises the config vector.</summary>
    public void SetLinkUp(bool up)
    {
        lock (_regs)
        {
            if (_linkUp == up)
            {
                return;
            }
            _linkUp = up;
            ConfigChanged(interrupt: true);
        }
    }

    public bool LinkUp
    {
        get { lock (_regs) { return _linkUp; } }
    }

    /// <summary>The device's MAC (control queue MAC_ADDR_SET and config writes change it).</summary>
    public void SetMac(ReadOnlySpan<byte> mac)
    {
        lock (_regs)
        {
            if (mac.Length != 6)
            {
                throw new ArgumentException("MAC must be 6 bytes");
            }
            if (mac.SequenceEqual(_mac))
            {
                return;
            }
            mac.CopyTo(_mac);
            ConfigChanged(interrupt: true);
        }
    }

    public byte[] Mac
    {
        get { lock (_regs) { return (byte[])_mac.Clone(); } }
    }

    /// <summary>Sets VIRTIO_NET_S_ANNOUNCE (after migration) or clears it (driver's ANNOUNCE_ACK).</summary>
    public void SetAnnounce(bool on)
    {
        lock (_regs)
        {
            if (_announce == on)
            {
                return;
            }
            _announce = on;
            ConfigChanged(interrupt: on);
        }
    }
}
