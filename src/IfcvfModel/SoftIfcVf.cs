using System.Buffers.Binary;
using System.Diagnostics;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel;

/// <summary>
/// The software IFC VF: PCI identity, capability list, BARs with the virtio 1.x common config, notify
/// doorbells, ISR, virtio-net device config, MSI-X table and the IFC live-migration block in BAR4.
/// Register semantics follow VIRTIO 1.2 §4.1 and the IFC facts; the datapath is an
/// <see cref="IVirtqueueEngine"/> that sees memory only through <see cref="Dma"/>.
/// </summary>
public sealed partial class SoftIfcVf : IPciFunction
{
    private readonly Lock _regs = new();
    private readonly SoftIfcVfOptions _options;
    private readonly PciBar[] _bars;
    private readonly Queue[] _queues;
    private readonly long[] _doorbells;
    private IVirtqueueEngine? _engine;
    private bool _disposed;

    public SoftIfcVf(SoftIfcVfOptions? options = null)
    {
        _options = options ?? new SoftIfcVfOptions();
        _options.Validate();
        NumQueues = _options.NumQueues;
        DeviceFeatures = _options.EffectiveFeatures;
        MsixVectorCount = _options.MsixVectors ?? (NumQueues + 1);
        _queues = new Queue[NumQueues];
        for (int i = 0; i < NumQueues; i++)
        {
            _queues[i] = new Queue(_options.MaxQueueSize);
        }
        _doorbells = new long[NumQueues];
        ulong bar2 = IfcvfLayout.RoundUpPow2((ulong)NumQueues * IfcvfLayout.NotifyOffMultiplier, 0x1000);
        ulong bar4 = IfcvfLayout.RoundUpPow2((ulong)IfcLiveMigration.BlockSize(_options.LmLayout, NumQueues), 0x1000);
        _bars =
        [
            new PciBar(0, IfcvfLayout.Bar0Size, true, false, IfcvfLayout.BusAddresses[0]),
            new PciBar(2, bar2, true, false, IfcvfLayout.BusAddresses[2]),
            new PciBar(4, bar4, true, false, IfcvfLayout.BusAddresses[4]),
        ];
        _lmState = new uint[NumQueues];
        _msixTable = new MsixEntry[MsixVectorCount];
        _msixPending = new bool[MsixVectorCount];
        _sinks = new IMsixSink?[MsixVectorCount];
        _mac = _options.Mac.ToArray();
        _mtu = _options.Mtu;
        BuildConfigSpace();
        ResetRegisters();
    }

    public SoftIfcVfOptions Options => _options;

    public string Address => _options.Address;

    public int NumQueues { get; }

    public ulong DeviceFeatures { get; private set; }

    public IReadOnlyList<PciBar> Bars => _bars;

    /// <summary>The device's DMA address space: the only memory its datapath can reach.</summary>
    public IovaMap Dma { get; } = new();

    public int DmaMapCount => Dma.Count;

    /// <summary>Doorbell writes seen for a queue (observable by tests and the datapath).</summary>
    public long DoorbellCount(int queue) => Interlocked.Read(ref _doorbells[queue]);

    /// <summary>Called on every doorbell write with the queue index (tests, tracing).</summary>
    public Action<int>? DoorbellObserver { get; set; }

    /// <summary>Register writes the device ignored because the driver broke a rule (counted, not fatal).</summary>
    public long RegisterErrors => Interlocked.Read(ref _registerErrors);

    private long _registerErrors;

    /// <summary>Why the device last set NEEDS_RESET (null if it never did since reset).</summary>
    public string? NeedsResetReason { get; private set; }

    /// <summary>Attaches the datapath. Only while the device is reset.</summary>
    public void AttachEngine(IVirtqueueEngine? engine)
    {
        lock (_regs)
        {
            if (_status != 0)
            {
                throw new InvalidOperationException("attach the datapath engine while the device is reset");
            }
            _engine = engine;
        }
    }

    // ---- BAR dispatch -------------------------------------------------------------------------

    public byte ReadBar8(int bar, ulong offset) => (byte)ReadBar(bar, offset, 1);

    public ushort ReadBar16(int bar, ulong offset) => (ushort)ReadBar(bar, offset, 2);

    public uint ReadBar32(int bar, ulong offset) => ReadBar(bar, offset, 4);

    public void WriteBar8(int bar, ulong offset, byte value) => WriteBar(bar, offset, 1, value);

    public void WriteBar16(int bar, ulong offset, ushort value) => WriteBar(bar, offset, 2, value);

    public void WriteBar32(int bar, ulong offset, uint value) => WriteBar(bar, offset, 4, value);

    private PciBar CheckBar(int bar, ulong offset, int size)
    {
        foreach (var b in _bars)
        {
            if (b.Index == bar)
            {
                if (offset > b.Size || (ulong)size > b.Size - offset)
                {
                    throw new ArgumentOutOfRangeException(nameof(offset), $"BAR{bar} access at 0x{offset:x} (+{size}) beyond its 0x{b.Size:x} bytes");
                }
                return b;
            }
        }
        throw new ArgumentOutOfRangeException(nameof(bar), $"BAR{bar} is not implemented by this device");
    }

    private uint ReadBar(int bar, ulong offset, int size)
    {
        CheckBar(bar, offset, size);
        lock (_regs)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            switch (bar)
            {
                case IfcvfLayout.CommonBar:
                    if (offset < IfcvfLayout.CommonOffset + VirtioPci.CommonCfgSize)
                    {
                        return ReadCommon((int)(offset - IfcvfLayout.CommonOffset), size);
                    }
                    if (offset >= IfcvfLayout.IsrOffset && offset < IfcvfLayout.IsrOffset + IfcvfLayout.IsrLength)
                    {
                        return offset == IfcvfLayout.IsrOffset ? ReadIsr() : 0u;
                    }
                    if (offset >= IfcvfLayout.DeviceCfgOffset && offset < IfcvfLayout.DeviceCfgOffset + (ulong)DeviceConfigLength)
                    {
                        return ReadDeviceConfig((int)(offset - IfcvfLayout.DeviceCfgOffset), size);
                    }
                    if (offset >= IfcvfLayout.MsixTableOffset && offset < IfcvfLayout.MsixPbaOffset)
                    {
                        return ReadMsixTable(offset - IfcvfLayout.MsixTableOffset, size);
                    }
                    if (offset >= IfcvfLayout.MsixPbaOffset)
                    {
                        return ReadMsixPba(offset - IfcvfLayout.MsixPbaOffset, size);
                    }
                    return 0;
                case IfcvfLayout.NotifyBar:
                    return 0; // doorbells are write-only
                default:
                    return ReadLm((int)offset, size);
            }
        }
    }

    private void WriteBar(int bar, ulong offset, int size, uint value)
    {
        CheckBar(bar, offset, size);
        if (bar == IfcvfLayout.NotifyBar)
        {
            Doorbell(offset, size, value);
            return;
        }
        lock (_regs)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (bar == IfcvfLayout.CommonBar)
            {
                if (offset < IfcvfLayout.CommonOffset + VirtioPci.CommonCfgSize)
                {
                    WriteCommon((int)(offset - IfcvfLayout.CommonOffset), size, value);
                }
                else if (offset >= IfcvfLayout.DeviceCfgOffset && offset < IfcvfLayout.DeviceCfgOffset + (ulong)DeviceConfigLength)
                {
                    WriteDeviceConfig((int)(offset - IfcvfLayout.DeviceCfgOffset), size, value);
                }
                else if (offset >= IfcvfLayout.MsixTableOffset && offset < IfcvfLayout.MsixPbaOffset)
                {
                    WriteMsixTable(offset - IfcvfLayout.MsixTableOffset, size, value);
                }
                // ISR and PBA are read-only.
            }
            else
            {
                WriteLm((int)offset, size, value);
            }
        }
    }

    private void Doorbell(ulong offset, int size, uint value)
    {
        // A doorbell is a 16-bit write of the queue index at notify_off * multiplier (no NOTIFICATION_DATA).
        ulong q = offset / IfcvfLayout.NotifyOffMultiplier;
        if (size != 2 || offset % IfcvfLayout.NotifyOffMultiplier != 0 || q >= (ulong)NumQueues || value != q)
        {
            Interlocked.Increment(ref _registerErrors);
            BadDoorbell(offset, size, value);
            return;
        }
        int queue = (int)q;
        Interlocked.Increment(ref _doorbells[queue]);
        DoorbellObserver?.Invoke(queue);
        if (Volatile.Read(ref _queues[queue].Running))
        {
            _engine?.Notify(queue);
        }
        else
        {
            NotifyNotRunning(queue);
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private void BadDoorbell(ulong offset, int size, uint value)
    {
        ulong q = offset / IfcvfLayout.NotifyOffMultiplier;
        if (offset % IfcvfLayout.NotifyOffMultiplier != 0 || q >= (ulong)NumQueues)
        {
            Violation(SpecRule.NotifyUnknownQueue, $"{size}-byte notification 0x{value:x} at notify offset 0x{offset:x} (queue doorbells are {IfcvfLayout.NotifyOffMultiplier} bytes apart, {NumQueues} queues)");
        }
        else
        {
            Violation(SpecRule.NotifyData, $"{size}-byte notification 0x{value:x} on queue {q}'s doorbell");
        }
    }

    /// <summary>A well-formed doorbell for a queue that is not running: a violation unless the device stopped it itself.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private void NotifyNotRunning(int queue)
    {
        byte status = Volatile.Read(ref _status);
        if ((status & VirtioStatus.DRIVER_OK) == 0)
        {
            Violation(SpecRule.NotifyBeforeDriverOk, $"notification for queue {queue} with status 0x{status:x2}");
        }
        else if (!Volatile.Read(ref _queues[queue].Enabled))
        {
            Violation(SpecRule.NotifyDisabledQueue, $"notification for queue {queue}, which is not enabled");
        }
    }

    private static uint Extract(ReadOnlySpan<byte> bytes, int offset, int size)
    {
        if (offset < 0 || offset + size > bytes.Length)
        {
            return 0;
        }
        var s = bytes.Slice(offset, size);
        return size switch
        {
            1 => s[0],
            2 => BinaryPrimitives.ReadUInt16LittleEndian(s),
            _ => BinaryPrimitives.ReadUInt32LittleEndian(s),
        };
    }

    // ---- DMA ----------------------------------------------------------------------------------

    public void DmaMap(ulong iova, MemorySlice memory, bool writable) => Dma.Map(iova, memory, writable);

    public void DmaUnmap(ulong iova, ulong size)
    {
        if (!Dma.Unmap(iova, size))
        {
            throw new ArgumentException($"no DMA mapping at IOVA 0x{iova:x} of 0x{size:x} bytes");
        }
    }

    public void Dispose()
    {
        lock (_regs)
        {
            if (_disposed)
            {
                return;
            }
            StopAllQueues(saveState: false);
            _disposed = true;
            Array.Clear(_sinks);
            _msixEnabled = false;
            Dma.Clear();
        }
    }

    private static long Now => Stopwatch.GetTimestamp();
}
