using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>TUNSETCARRIER: the TAP's carrier (operstate) follows the device's link status.</summary>
public static class TapCarrier
{
    /// <summary>_IOW('T', 226, int) from linux/if_tun.h.</summary>
    private const uint TUNSETCARRIER = 0x400454e2;

    /// <summary>Sets carrier on or off. Returns false if the kernel refused (errno kept).</summary>
    public static unsafe bool SetCarrier(this TapDevice tap, bool up)
    {
        int on = up ? 1 : 0;
        return Libc.ioctl(tap.Fd, TUNSETCARRIER, &on) == 0;
    }
}
