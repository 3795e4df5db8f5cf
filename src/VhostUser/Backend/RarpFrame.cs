using System.Buffers.Binary;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The announce a back-end sends for a migrated guest that cannot announce itself (SEND_RARP): a broadcast
/// RARP "request reverse" (RFC 903) from the guest's MAC, so switches learn the port it now sits behind.
/// </summary>
public static class RarpFrame
{
    /// <summary>Ethertype of RARP.</summary>
    public const ushort EtherType = 0x8035;

    /// <summary>ARP opcode 3: request reverse.</summary>
    public const ushort OpRequestReverse = 3;

    /// <summary>Minimum Ethernet frame without the FCS: the frame is padded to it.</summary>
    public const int Length = 60;

    /// <summary>
    /// Builds the frame: destination broadcast, source = <paramref name="mac"/>, ethertype 0x8035; hardware
    /// type 1 (Ethernet), protocol 0x0800, lengths 6 and 4, opcode 3, sender and target hardware address =
    /// the MAC, both protocol addresses 0.0.0.0, zero padding to 60 bytes.
    /// </summary>
    public static byte[] Build(ReadOnlySpan<byte> mac)
    {
        if (mac.Length != 6)
        {
            throw new ArgumentException($"a MAC is 6 bytes, not {mac.Length}", nameof(mac));
        }
        var f = new byte[Length];
        f.AsSpan(0, 6).Fill(0xFF);
        mac.CopyTo(f.AsSpan(6));
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), EtherType);
        var arp = f.AsSpan(14);
        BinaryPrimitives.WriteUInt16BigEndian(arp, 1);          // htype Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(arp[2..], 0x0800); // ptype IPv4
        arp[4] = 6;
        arp[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(arp[6..], OpRequestReverse);
        mac.CopyTo(arp[8..]);   // sender hardware address; sender protocol address 0.0.0.0
        mac.CopyTo(arp[18..]);  // target hardware address; target protocol address 0.0.0.0
        return f;
    }
}
