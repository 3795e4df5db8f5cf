using System.Diagnostics;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioPci;

namespace IfcVdpa.Ifcvf;

/// <summary>Driver-side choices that hardware cannot tell us.</summary>
public sealed record IfcvfHwOptions
{
    /// <summary>Layout of the ring-state words in the LM block (firmware generation).</summary>
    public LmLayout LmLayout { get; init; } = LmLayout.PairBlocks;

    /// <summary>How long a reset may take before the device is declared dead (polled every 1 ms).</summary>
    public TimeSpan ResetTimeout { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Device-config reads retried at most this often while config_generation moves.</summary>
    public int ConfigReadRetries { get; init; } = 32;

    /// <summary>Polls (10 ms apart) for queue_enable to read 0 after a queue is disabled (DPDK: 10).</summary>
    public int QueueStopPolls { get; init; } = 10;
}

/// <summary>
/// The IFC VF hardware layer (Linux/DPDK ifcvf_base): capability walk, common config, doorbells,
/// ISR, device config, and the BAR4 live-migration block. Registers only: no policy, no threads.
/// Not thread-safe: queue_select makes every per-queue access a two-step sequence; the caller serialises.
/// </summary>
public sealed class IfcvfHw
{
    private readonly IPciFunction _pci;
    private readonly VirtioRegion _common;
    private readonly VirtioRegion _device;
    private readonly VirtioRegion _isr;
    private readonly VirtioRegion _notify;
    private readonly ushort[] _notifyOff;

    private IfcvfHw(IPciFunction pci, VirtioCapabilities caps, IfcvfHwOptions options)
    {
        _pci = pci;
        Options = options;
        Capabilities = caps;
        _common = caps.Common;
        _device = caps.Device;
        _isr = caps.Isr;
        _notify = caps.Notify;
        NumQueues = R16(NumQueuesOff);
        // DPDK treats a missing BAR4 as "no LM block and no MQ register"; so do we, and a BAR4 too small
        // for every queue's ring-state word counts as missing.
        HasLm = pci.FindBar(IfcLiveMigration.Bar) is { } lm &&
                (ulong)IfcLiveMigration.BlockSize(options.LmLayout, NumQueues) <= lm.Size;
        HasDirtyLog = HasLm && ProbeDirtyLog();
        _notifyOff = new ushort[NumQueues];
        for (int q = 0; q < NumQueues; q++)
        {
            W16(QueueSelect, (ushort)q);
            _notifyOff[q] = R16(QueueNotifyOff);
            ulong doorbell = (ulong)_notifyOff[q] * caps.NotifyOffMultiplier;
            if (doorbell + 2 > _notify.Length)
            {
                throw new IfcvfProbeException($"{pci.Address}: queue {q}'s doorbell (notify_off {_notifyOff[q]}) lies outside the notify region");
            }
        }
    }

    private const int NumQueuesOff = VirtioPci.NumQueues;

    public IfcvfHwOptions Options { get; }

    public VirtioCapabilities Capabilities { get; }

    public IPciFunction Pci => _pci;

    /// <summary>Number of virtqueues the device reports (num_queues).</summary>
    public int NumQueues { get; }

    /// <summary>True when BAR4 holds a live-migration block big enough for every queue.</summary>
    public bool HasLm { get; }

    /// <summary>
    /// True when the LM block has working dirty-log registers: a log base written (logging off) reads back.
    /// A block without them (a VF whose firmware keeps ring state only) reads 0: migration then needs a
    /// software relay in the consumer.
    /// </summary>
    public bool HasDirtyLog { get; }

    private bool ProbeDirtyLog()
    {
        const uint Pattern = 0x5A5A_5000; // page-aligned: a plausible log base
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.LoggingCtrl, IfcLiveMigration.LoggingDisable);
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.BaseAddrLow, Pattern);
        bool sticks = _pci.ReadBar32(IfcLiveMigration.Bar, IfcLiveMigration.BaseAddrLow) == Pattern;
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.BaseAddrLow, 0);
        return sticks;
    }

    /// <summary>Walks the capabilities and reads the queue geometry (ifcvf_init_hw).</summary>
    public static IfcvfHw Init(IPciFunction pci, IfcvfHwOptions? options = null)
    {
        var caps = CapabilityWalk.Run(pci);
        return new IfcvfHw(pci, caps, options ?? new IfcvfHwOptions());
    }

    // ---- raw accessors ------------------------------------------------------------------------

    private byte R8(int off) => _pci.ReadBar8(_common.Bar, _common.Offset + (ulong)off);
    private ushort R16(int off) => _pci.ReadBar16(_common.Bar, _common.Offset + (ulong)off);
    private uint R32(int off) => _pci.ReadBar32(_common.Bar, _common.Offset + (ulong)off);
    private void W8(int off, byte v) => _pci.WriteBar8(_common.Bar, _common.Offset + (ulong)off, v);
    private void W16(int off, ushort v) => _pci.WriteBar16(_common.Bar, _common.Offset + (ulong)off, v);
    private void W32(int off, uint v) => _pci.WriteBar32(_common.Bar, _common.Offset + (ulong)off, v);

    private void W64(int loOff, ulong v)
    {
        W32(loOff, (uint)v);
        W32(loOff + 4, (uint)(v >> 32));
    }

    private void CheckQueue(int q)
    {
        if ((uint)q >= (uint)NumQueues)
        {
            throw new ArgumentOutOfRangeException(nameof(q), $"queue {q} does not exist (device has {NumQueues})");
        }
    }

    private void Select(int q)
    {
        CheckQueue(q);
        W16(QueueSelect, (ushort)q);
    }

    // ---- status / reset -----------------------------------------------------------------------

    public byte GetStatus() => R8(DeviceStatus);

    public void SetStatus(byte status) => W8(DeviceStatus, status);

    /// <summary>Writes 0 and polls every millisecond until the device reads 0, bounded by the reset timeout.</summary>
    public void Reset()
    {
        SetStatus(0);
        var sw = Stopwatch.StartNew();
        while (GetStatus() != 0)
        {
            if (sw.Elapsed > Options.ResetTimeout)
            {
                throw new IfcvfDeviceException($"{_pci.Address}: device did not finish reset within {Options.ResetTimeout.TotalMilliseconds:0} ms (status still 0x{GetStatus():x2})");
            }
            Thread.Sleep(1);
        }
    }

    // ---- features -----------------------------------------------------------------------------

    public ulong GetDeviceFeatures()
    {
        W32(DeviceFeatureSelect, 0);
        ulong lo = R32(DeviceFeature);
        W32(DeviceFeatureSelect, 1);
        ulong hi = R32(DeviceFeature);
        return lo | (hi << 32);
    }

    public void SetDriverFeatures(ulong features)
    {
        W32(DriverFeatureSelect, 0);
        W32(DriverFeature, (uint)features);
        W32(DriverFeatureSelect, 1);
        W32(DriverFeature, (uint)(features >> 32));
    }

    /// <summary>Reads the driver features back from the device (strict: uses driver_feature_select).</summary>
    public ulong GetDriverFeatures()
    {
        W32(DriverFeatureSelect, 0);
        ulong lo = R32(DriverFeature);
        W32(DriverFeatureSelect, 1);
        ulong hi = R32(DriverFeature);
        return lo | (hi << 32);
    }

    // ---- device config ------------------------------------------------------------------------

    public byte GetConfigGeneration() => R8(VirtioPci.ConfigGeneration);

    public uint DeviceConfigSize => _device.Length;

    /// <summary>
    /// Reads device config byte by byte inside a config_generation retry loop (bounded: a device whose
    /// config never settles is an error, not a hang).
    /// </summary>
    public void ReadDeviceConfig(uint offset, Span<byte> destination)
    {
        CheckConfigRange(offset, destination.Length);
        for (int attempt = 0; attempt < Options.ConfigReadRetries; attempt++)
        {
            byte g0 = GetConfigGeneration();
            for (int i = 0; i < destination.Length; i++)
            {
                destination[i] = _pci.ReadBar8(_device.Bar, _device.Offset + offset + (ulong)i);
            }
            if (GetConfigGeneration() == g0)
            {
                return;
            }
        }
        throw new IfcvfDeviceException($"{_pci.Address}: device config kept changing during {Options.ConfigReadRetries} reads (config_generation never settled)");
    }

    public void WriteDeviceConfig(uint offset, ReadOnlySpan<byte> source)
    {
        CheckConfigRange(offset, source.Length);
        for (int i = 0; i < source.Length; i++)
        {
            _pci.WriteBar8(_device.Bar, _device.Offset + offset + (ulong)i, source[i]);
        }
    }

    private void CheckConfigRange(uint offset, int length)
    {
        if ((ulong)offset + (ulong)length > _device.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"config [{offset}, +{length}) beyond the {_device.Length}-byte device config");
        }
    }

    /// <summary>Reads (and clears) the ISR status byte.</summary>
    public byte ReadIsr() => _pci.ReadBar8(_isr.Bar, _isr.Offset);

    // ---- vectors ------------------------------------------------------------------------------

    /// <summary>Writes msix_config and returns what the device read back (NO_VECTOR = refused).</summary>
    public ushort SetConfigVector(ushort vector)
    {
        W16(MsixConfig, vector);
        return R16(MsixConfig);
    }

    /// <summary>Writes the queue's vector and returns the read-back (NO_VECTOR = refused).</summary>
    public ushort SetVqVector(int q, ushort vector)
    {
        Select(q);
        W16(QueueMsixVector, vector);
        return R16(QueueMsixVector);
    }

    /// <summary>The queue's vector as the device holds it.</summary>
    public ushort GetVqVector(int q)
    {
        Select(q);
        return R16(QueueMsixVector);
    }

    // ---- queues -------------------------------------------------------------------------------

    /// <summary>The queue's maximum size (queue_size after reset; 0 = queue unavailable).</summary>
    public ushort GetVqMaxSize(int q)
    {
        Select(q);
        return R16(QueueSize);
    }

    public void SetVqNum(int q, ushort size)
    {
        Select(q);
        W16(QueueSize, size);
    }

    public ushort GetVqNum(int q)
    {
        Select(q);
        return R16(QueueSize);
    }

    public void SetVqAddress(int q, ulong desc, ulong avail, ulong used)
    {
        Select(q);
        W64(QueueDescLo, desc);
        W64(QueueAvailLo, avail);
        W64(QueueUsedLo, used);
    }

    public (ulong Desc, ulong Avail, ulong Used) GetVqAddress(int q)
    {
        Select(q);
        ulong Rd(int lo) => R32(lo) | ((ulong)R32(lo + 4) << 32);
        return (Rd(QueueDescLo), Rd(QueueAvailLo), Rd(QueueUsedLo));
    }

    public void SetVqReady(int q, bool ready)
    {
        Select(q);
        W16(QueueEnable, ready ? (ushort)1 : (ushort)0);
    }

    public bool GetVqReady(int q)
    {
        Select(q);
        return R16(QueueEnable) != 0;
    }

    /// <summary>
    /// Disables a queue and waits (bounded) for queue_enable to read 0: the device has then stored the
    /// queue's ring state in the LM block (DPDK 518a27ef6b).
    /// </summary>
    public void DisableVqAndWait(int q)
    {
        SetVqReady(q, false);
        for (int i = 0; i <= Options.QueueStopPolls; i++)
        {
            if (!GetVqReady(q))
            {
                return;
            }
            Thread.Sleep(10);
        }
        throw new IfcvfDeviceException($"{_pci.Address}: queue {q} still enabled {Options.QueueStopPolls * 10} ms after disable");
    }

    // ---- doorbells ----------------------------------------------------------------------------

    /// <summary>Offset of the queue's doorbell inside the notify BAR.</summary>
    public ulong DoorbellOffset(int q)
    {
        CheckQueue(q);
        return _notify.Offset + ((ulong)_notifyOff[q] * Capabilities.NotifyOffMultiplier);
    }

    /// <summary>Rings the queue's doorbell: a 16-bit write of the queue index.</summary>
    public void NotifyQueue(int q) => _pci.WriteBar16(_notify.Bar, DoorbellOffset(q), (ushort)q);

    /// <summary>Doorbell location for direct mapping: BAR, offset, size (the multiplier, or a page if 0).</summary>
    public (int Bar, ulong Offset, ulong Size) GetVqNotification(int q) =>
        (_notify.Bar, DoorbellOffset(q), Capabilities.NotifyOffMultiplier == 0 ? 0x1000UL : Capabilities.NotifyOffMultiplier);

    // ---- live-migration block -----------------------------------------------------------------

    private void RequireLm()
    {
        if (!HasLm)
        {
            throw new IfcvfDeviceException($"{_pci.Address}: no live-migration block in BAR4 (ring state unavailable)");
        }
    }

    /// <summary>The queue's ring state: (last_avail_idx, last_used_idx). Compact layout has only the avail index.</summary>
    public (ushort LastAvail, ushort LastUsed) GetVqRingState(int q)
    {
        CheckQueue(q);
        RequireLm();
        ulong off = (ulong)IfcLiveMigration.RingStateOffset(Options.LmLayout, q);
        if (Options.LmLayout == LmLayout.Compact)
        {
            ushort a = _pci.ReadBar16(IfcLiveMigration.Bar, off);
            return (a, a);
        }
        uint word = _pci.ReadBar32(IfcLiveMigration.Bar, off);
        return ((ushort)word, (ushort)(word >> 16));
    }

    /// <summary>Restores a queue's ring state before it is enabled.</summary>
    public void SetVqState(int q, ushort lastAvail, ushort lastUsed)
    {
        CheckQueue(q);
        RequireLm();
        ulong off = (ulong)IfcLiveMigration.RingStateOffset(Options.LmLayout, q);
        if (Options.LmLayout == LmLayout.Compact)
        {
            _pci.WriteBar16(IfcLiveMigration.Bar, off, lastAvail);
        }
        else
        {
            _pci.WriteBar32(IfcLiveMigration.Bar, off, IfcLiveMigration.Pack(lastAvail, lastUsed));
        }
    }

    /// <summary>Programs the dirty-page log (bitmap at IOVA <paramref name="logBase"/>, <paramref name="logSize"/> bytes) and enables it.</summary>
    public void EnableDirtyLog(ulong logBase, ulong logSize)
    {
        RequireLm();
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.BaseAddrLow, (uint)logBase);
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.BaseAddrHigh, (uint)(logBase >> 32));
        ulong end = logBase + logSize;
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.EndAddrLow, (uint)end);
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.EndAddrHigh, (uint)(end >> 32));
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.LoggingCtrl, IfcLiveMigration.LoggingEnableVf);
    }

    public void DisableDirtyLog()
    {
        RequireLm();
        _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.LoggingCtrl, IfcLiveMigration.LoggingDisable);
    }

    /// <summary>Writes the MQ register (queue pairs in use). Only the pair-blocks firmware has one.</summary>
    public void SetMq(uint queuePairs)
    {
        if (HasLm && IfcLiveMigration.HasMqRegister(Options.LmLayout))
        {
            _pci.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.MqRegister, queuePairs);
        }
    }
}
