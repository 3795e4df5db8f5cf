using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.IfcLiveMigration;

namespace IfcVdpa.IfcvfModel;

/// <summary>The IFC live-migration block at BAR4 offset 0: dirty-log registers, MQ register, ring state.</summary>
public sealed partial class SoftIfcVf
{
    private readonly uint[] _lmState;
    private RingIndices[] _runIndices = [];
    private uint _lmCtrl;
    private ulong _lmBase;
    private ulong _lmEnd;
    private uint _mq;

    /// <summary>Dirty-page logging as programmed by the driver: (enabled, base IOVA, end IOVA exclusive).</summary>
    public (bool Enabled, ulong Base, ulong End) DirtyLog
    {
        get { lock (_regs) { return (_lmCtrl == LoggingEnableVf, _lmBase, _lmEnd); } }
    }

    /// <summary>Value of the MQ register (pair- and per-queue-blocks layouts).</summary>
    public uint MqRegister
    {
        get { lock (_regs) { return _mq; } }
    }

    private void ResetLm()
    {
        if (_runIndices.Length != _queues.Length)
        {
            _runIndices = new RingIndices[_queues.Length];
        }
        Array.Clear(_lmState);
        Array.Clear(_runIndices);
        _lmCtrl = 0;
        _lmBase = 0;
        _lmEnd = 0;
        _mq = 0;
    }

    /// <summary>Finds the queue whose ring-state word covers a BAR4 offset; returns the byte within the word.</summary>
    private int LmQueueAt(int off, out int byteInWord)
    {
        byteInWord = 0;
        if (off < RingStateBase)
        {
            return -1;
        }
        int rel = off - RingStateBase;
        int q;
        if (_options.LmLayout == LmLayout.PerQueueBlocks)
        {
            int inBlock = rel % PairBlockSize;
            if (inBlock >= 4)
            {
                return -1;
            }
            q = rel / PairBlockSize;
            byteInWord = inBlock;
        }
        else if (_options.LmLayout == LmLayout.PairBlocks)
        {
            int within = rel % PairBlockSize;
            if (within >= 8)
            {
                return -1;
            }
            q = (rel / PairBlockSize * 2) + (within / 4);
            byteInWord = within % 4;
        }
        else
        {
            q = rel / 4;
            byteInWord = rel % 4;
            if (byteInWord >= 2)
            {
                return -1; // compact layout: 16-bit words only
            }
        }
        return q < _queues.Length ? q : -1;
    }

    private uint LiveWord(int q)
    {
        if (!_queues[q].Running)
        {
            return _lmState[q];
        }
        return ToRingStateWord(_engine?.PeekQueue(q) ?? _runIndices[q]);
    }

    // The ring-state register word (the IFC LM block's format, which the driver relies on): last_avail in
    // bits 0-15, last_used in bits 16-31 (the compact layout keeps last_avail only and uses it for both).
    // With packed rings each half is a ring position in bits 0-14 and its wrap counter in bit 15 (what a
    // vhost-user front-end sends as the ring base). This is the only place the model packs or unpacks it.

    private bool RingsPacked => VirtioFeature.Has(_driverFeatures, VirtioFeature.F_RING_PACKED);

    /// <summary>The ring state the driver restored (or the device saved) for a queue about to run.</summary>
    private RingIndices SavedRingState(int q)
    {
        uint word = _lmState[q];
        ushort avail = (ushort)word;
        ushort used = _options.LmLayout == LmLayout.Compact ? avail : (ushort)(word >> 16);
        return RingsPacked
            ? new RingIndices((ushort)(avail & 0x7FFF), (avail & 0x8000) != 0, (ushort)(used & 0x7FFF), (used & 0x8000) != 0)
            : RingIndices.Split(avail, used);
    }

    /// <summary>Stores a stopped queue's ring state for the driver to read back.</summary>
    private void SaveRingState(int q, RingIndices idx) => _lmState[q] = ToRingStateWord(idx);

    private static uint ToRingStateWord(RingIndices idx) =>
        Pack(WithWrap(idx.LastAvail, idx.AvailWrap), WithWrap(idx.LastUsed, idx.UsedWrap));

    private static ushort WithWrap(ushort index, bool wrap) => (ushort)(index | (wrap ? 0x8000 : 0));

    private uint ReadLm(int off, int size)
    {
        if (!_options.DirtyLog && off < RingStateBase)
        {
            return 0; // no dirty-log registers in this VF's LM block
        }
        switch (off, size)
        {
            case (LoggingCtrl, 4): return _lmCtrl;
            case (BaseAddrLow, 4): return (uint)_lmBase;
            case (BaseAddrHigh, 4): return (uint)(_lmBase >> 32);
            case (EndAddrLow, 4): return (uint)_lmEnd;
            case (EndAddrHigh, 4): return (uint)(_lmEnd >> 32);
            case (IfcLiveMigration.MqRegister, _) when HasMqRegister(_options.LmLayout): return size == 4 ? _mq : (ushort)_mq;
        }
        int q = LmQueueAt(off, out int b);
        if (q < 0 || b + size > 4 || b % size != 0)
        {
            return 0;
        }
        uint word = LiveWord(q);
        if (_options.LmLayout == LmLayout.Compact)
        {
            word &= 0xFFFF;
        }
        return size == 4 ? word : (word >> (8 * b)) & (size == 2 ? 0xFFFFu : 0xFFu);
    }

    private void WriteLm(int off, int size, uint value)
    {
        if (!_options.DirtyLog && off < RingStateBase)
        {
            return; // no dirty-log registers: writes are dropped, the VF never logs
        }
        switch (off, size)
        {
            case (LoggingCtrl, 4): _lmCtrl = value; return;
            case (BaseAddrLow, 4): _lmBase = (_lmBase & 0xFFFF_FFFF_0000_0000UL) | value; return;
            case (BaseAddrHigh, 4): _lmBase = (_lmBase & 0xFFFF_FFFFUL) | ((ulong)value << 32); return;
            case (EndAddrLow, 4): _lmEnd = (_lmEnd & 0xFFFF_FFFF_0000_0000UL) | value; return;
            case (EndAddrHigh, 4): _lmEnd = (_lmEnd & 0xFFFF_FFFFUL) | ((ulong)value << 32); return;
            case (IfcLiveMigration.MqRegister, 4 or 2) when HasMqRegister(_options.LmLayout): _mq = value; return;
        }
        int q = LmQueueAt(off, out int b);
        if (q < 0 || b + size > 4 || b % size != 0 || size == 1)
        {
            BadAccess();
            return;
        }
        if (_queues[q].Enabled)
        {
            BadAccess(); // ring state is restored before enable and owned by the device after
            return;
        }
        uint word = _lmState[q];
        if (size == 4)
        {
            word = _options.LmLayout == LmLayout.Compact ? (word & 0xFFFF_0000u) | (value & 0xFFFF) : value;
        }
        else if (b == 0)
        {
            word = (word & 0xFFFF_0000u) | (value & 0xFFFF);
        }
        else
        {
            word = (word & 0xFFFFu) | ((value & 0xFFFF) << 16);
        }
        _lmState[q] = word;
    }
}
