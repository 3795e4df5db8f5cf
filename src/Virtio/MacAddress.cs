using System.Globalization;

namespace IfcVdpa.Virtio;

/// <summary>Ethernet MAC addresses as the CLI, the daemon and the logs write them: six hex pairs and colons.</summary>
public static class MacAddress
{
    public const int Length = 6;

    /// <summary>
    /// Parses "xx:xx:xx:xx:xx:xx" (one or two hex digits per byte, either case); null when it is not one. Whether a
    /// multicast or zero address is acceptable is the caller's rule (see <see cref="IsUnicast"/>).
    /// </summary>
    public static byte[]? TryParse(string? s)
    {
        if (s is null)
        {
            return null;
        }
        var parts = s.Split(':');
        if (parts.Length != Length)
        {
            return null;
        }
        var mac = new byte[Length];
        for (int i = 0; i < Length; i++)
        {
            if (parts[i].Length is not (1 or 2) ||
                !byte.TryParse(parts[i], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out mac[i]))
            {
                return null;
            }
        }
        return mac;
    }

    /// <summary>True for an address a device may own: not multicast/broadcast, not all zeros.</summary>
    public static bool IsUnicast(ReadOnlySpan<byte> mac) =>
        mac.Length == Length && (mac[0] & 1) == 0 && mac.ContainsAnyExcept((byte)0);

    /// <summary>"02:00:00:00:00:01" (lower case); anything but 6 bytes prints as "&lt;N bytes&gt;".</summary>
    public static string Format(ReadOnlySpan<byte> mac) =>
        mac.Length == Length ? $"{mac[0]:x2}:{mac[1]:x2}:{mac[2]:x2}:{mac[3]:x2}:{mac[4]:x2}:{mac[5]:x2}" : $"<{mac.Length} bytes>";
}
