namespace IfcVdpa.Virtio;

/// <summary>
/// Picks a queue pair for a frame so that one flow stays on one queue (like a NIC's RSS, simplified):
/// a hash of the IPv4 addresses and ports when present, else of the destination MAC.
/// </summary>
public static class FlowHash
{
    public static uint Compute(ReadOnlySpan<byte> frame)
    {
        // Ethernet (14) + IPv4 header: addresses at 26..33, then (for a 20-byte header) ports at 34..37.
        bool ipv4 = frame.Length >= 38 && frame[12] == 0x08 && frame[13] == 0x00;
        var key = ipv4 ? frame.Slice(26, 12) : frame[..Math.Min(6, frame.Length)];
        uint h = 2166136261;
        foreach (byte b in key)
        {
            h = (h ^ b) * 16777619;
        }
        // FNV's low bits are a plain parity of the input's low bits: mix before taking a modulus.
        h ^= h >> 15;
        h *= 0x2C1B3C6D;
        h ^= h >> 12;
        return h;
    }

    /// <summary>The queue pair (0..pairs-1) for a frame.</summary>
    public static int Pair(ReadOnlySpan<byte> frame, int pairs) => pairs <= 1 ? 0 : (int)(Compute(frame) % (uint)pairs);
}
