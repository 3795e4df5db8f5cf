using System.Runtime.CompilerServices;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// Live migration: the dirty bitmap as the driver programmed it (vhost-user log format: bit n = 4 KiB page
/// n). The IFC VF logs the buffers it writes; the driver marks used rings itself.
/// </summary>
internal readonly struct DirtyLog
{
    private readonly IovaMap _dma;
    private readonly ulong _base;
    private readonly ulong _end;

    private DirtyLog(IovaMap dma, ulong logBase, ulong logEnd)
    {
        _dma = dma;
        _base = logBase;
        _end = logEnd;
    }

    /// <summary>Whether logging is on; read once per packet or burst.</summary>
    public static bool TryOpen(IVirtqueueDevice dev, IovaMap dma, out DirtyLog log)
    {
        bool on = dev.TryGetDirtyLog(out ulong b, out ulong e);
        log = on ? new DirtyLog(dma, b, e) : default;
        return on;
    }

    /// <summary>
    /// Marks the pages of a buffer the device wrote (one bit per 4 KiB page of its IOVA, which is the guest
    /// physical address for a vhost-user front-end). Bits outside [base, end) or in an unmapped log are
    /// skipped, so nothing outside the log is ever written. Every bit is set with an atomic OR, since the
    /// front-end reads and clears the bitmap concurrently: a 32-bit OR when the aligned word lies inside the
    /// log, else a compare-and-swap on the byte. Returns the pages whose bit was clear (for the statistics).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public int Mark(ulong iova, uint len)
    {
        if (len == 0)
        {
            return 0;
        }
        int marked = 0;
        ulong last = (iova + len - 1) >> 12;
        for (ulong page = iova >> 12; page <= last; page++)
        {
            ulong byteIova = _base + (page >> 3);
            if (byteIova < _base || byteIova >= _end)
            {
                continue;
            }
            ulong wordIova = byteIova & ~3UL;
            int shift = (int)(((byteIova - wordIova) * 8) + (page & 7));
            if (wordIova >= _base && wordIova + 4 <= _end && _dma.TryTranslate(wordIova, 4, true, out var word))
            {
                if (VhostLogBits.SetInWord(word, shift))
                {
                    marked++;
                }
            }
            else if (_dma.TryTranslate(byteIova, 1, true, out var b) && VhostLogBits.SetInByte(ref b[0], (byte)(1 << (int)(page & 7))))
            {
                marked++;
            }
        }
        return marked;
    }
}
