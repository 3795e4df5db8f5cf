using IfcVdpa.Pci;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel;

/// <summary>MSI-X: table and PBA in BAR0, delivery to the sinks installed through <see cref="EnableMsix"/>.</summary>
public sealed partial class SoftIfcVf
{
    private struct MsixEntry
    {
        public uint AddrLo;
        public uint AddrHi;
        public uint Data;
        public uint Control; // bit 0: masked
    }

    private readonly MsixEntry[] _msixTable;
    private readonly bool[] _msixPending;
    private readonly IMsixSink?[] _sinks;
    private volatile bool _msixEnabled;
    private volatile bool _msixFunctionMask;
    private long _interruptsDelivered;
    private long _interruptsDropped;

    public int MsixVectorCount { get; }

    public bool MsixEnabled => _msixEnabled;

    /// <summary>Interrupt messages delivered to a sink, and raised interrupts that had nowhere to go.</summary>
    public (long Delivered, long Dropped) InterruptCounts =>
        (Interlocked.Read(ref _interruptsDelivered), Interlocked.Read(ref _interruptsDropped));

    public void EnableMsix(IReadOnlyList<IMsixSink?> sinks)
    {
        if (sinks.Count > MsixVectorCount)
        {
            throw new ArgumentException($"{sinks.Count} MSI-X vectors requested, the function has {MsixVectorCount}");
        }
        lock (_regs)
        {
            for (int i = 0; i < _sinks.Length; i++)
            {
                _sinks[i] = i < sinks.Count ? sinks[i] : null;
                // Like VFIO_DEVICE_SET_IRQS: a vector with a trigger is unmasked, the others masked.
                _msixTable[i].Control = _sinks[i] is null ? 1u : 0u;
            }
            _msixFunctionMask = false;
            _msixEnabled = true;
            DeliverPending();
        }
    }

    public void DisableMsix()
    {
        lock (_regs)
        {
            _msixEnabled = false;
            Array.Clear(_sinks);
            Array.Clear(_msixPending);
        }
    }

    /// <summary>Raises an MSI-X vector: delivered, held pending while masked, or dropped.</summary>
    public void RaiseInterrupt(int vector)
    {
        if ((uint)vector >= (uint)MsixVectorCount || !_msixEnabled)
        {
            Interlocked.Increment(ref _interruptsDropped);
            return;
        }
        if (_msixFunctionMask || (Volatile.Read(ref _msixTable[vector].Control) & 1) != 0)
        {
            _msixPending[vector] = true;
            return;
        }
        var sink = Volatile.Read(ref _sinks[vector]);
        if (sink is null)
        {
            Interlocked.Increment(ref _interruptsDropped);
            return;
        }
        sink.Signal();
        Interlocked.Increment(ref _interruptsDelivered);
    }

    /// <summary>Used-buffer notification for a queue, through its vector (datapath).</summary>
    public void RaiseQueueInterrupt(int queue)
    {
        _isr |= VirtioPci.IsrQueue;
        ushort v = Volatile.Read(ref _queues[queue].Vector);
        if (v == VirtioPci.NoVector)
        {
            Interlocked.Increment(ref _interruptsDropped);
            return;
        }
        RaiseInterrupt(v);
    }

    /// <summary>Configuration-change notification through msix_config.</summary>
    private void SignalConfigChange()
    {
        _isr |= VirtioPci.IsrConfig;
        if (_msixConfig != VirtioPci.NoVector)
        {
            RaiseInterrupt(_msixConfig);
        }
    }

    private void DeliverPending()
    {
        for (int i = 0; i < _msixPending.Length; i++)
        {
            if (_msixPending[i] && !_msixFunctionMask && (_msixTable[i].Control & 1) == 0)
            {
                _msixPending[i] = false;
                RaiseInterrupt(i);
            }
        }
    }

    private uint ReadMsixTable(ulong off, int size)
    {
        ulong idx = off / 16;
        if (size != 4 || idx >= (ulong)_msixTable.Length)
        {
            return 0;
        }
        ref var e = ref _msixTable[idx];
        return (off % 16) switch
        {
            0 => e.AddrLo,
            4 => e.AddrHi,
            8 => e.Data,
            12 => e.Control,
            _ => 0,
        };
    }

    private void WriteMsixTable(ulong off, int size, uint value)
    {
        ulong idx = off / 16;
        if (size != 4 || idx >= (ulong)_msixTable.Length)
        {
            BadAccess();
            return;
        }
        ref var e = ref _msixTable[idx];
        switch (off % 16)
        {
            case 0: e.AddrLo = value & ~3u; break;
            case 4: e.AddrHi = value; break;
            case 8: e.Data = value; break;
            case 12:
                Volatile.Write(ref e.Control, value & 1);
                DeliverPending();
                break;
            default: BadAccess(); break;
        }
    }

    private uint ReadMsixPba(ulong off, int size)
    {
        uint v = 0;
        for (int bit = 0; bit < size * 8; bit++)
        {
            ulong vec = (off * 8) + (ulong)bit;
            if (vec < (ulong)_msixPending.Length && _msixPending[vec])
            {
                v |= 1u << bit;
            }
        }
        return v;
    }
}
