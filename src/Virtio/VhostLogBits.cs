using System.Runtime.InteropServices;

namespace IfcVdpa.Virtio;

/// <summary>
/// Setting bits in a vhost dirty log (one bit per 4 KiB guest page, bit n of byte n/8) that the front-end
/// reads and clears concurrently: every set is atomic. Used by the device model's log (through its IOVA map)
/// and by the back-end's log (the front-end's mapped file), which differ only in how they reach the bytes.
/// </summary>
public static class VhostLogBits
{
    /// <summary>VHOST_LOG_PAGE as a shift: 4 KiB.</summary>
    public const int PageShift = 12;

    /// <summary>Sets bit <paramref name="bit"/> (0..31) of the 4-byte word <paramref name="word"/> with one atomic OR; true when it was clear.</summary>
    public static bool SetInWord(Span<byte> word, int bit)
    {
        uint mask = 1u << bit;
        return (Interlocked.Or(ref MemoryMarshal.Cast<byte, uint>(word)[0], mask) & mask) == 0;
    }

    /// <summary>Sets <paramref name="mask"/> in one byte with a compare-and-swap (where no aligned word fits); true when it was clear.</summary>
    public static bool SetInByte(ref byte target, byte mask)
    {
        byte old = Volatile.Read(ref target);
        while ((old & mask) == 0)
        {
            byte seen = Interlocked.CompareExchange(ref target, (byte)(old | mask), old);
            if (seen == old)
            {
                return true;
            }
            old = seen;
        }
        return false;
    }
}
