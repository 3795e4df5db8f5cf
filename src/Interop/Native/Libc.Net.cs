using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Native;

/// <summary>TUN/TAP (linux/if_tun.h), ETHTOOL_GLINK, open(2), ioctl(2), sched_setaffinity(2) and sched_getaffinity(2).</summary>
internal static partial class Libc
{
    public const int O_RDWR = 0x2;
    public const int O_NONBLOCK = 0x800;
    public const int O_CLOEXEC = 0x80000;

    // linux/if_tun.h
    public const uint TUNSETIFF = 0x400454ca;
    public const uint TUNSETVNETHDRSZ = 0x400454d8;
    public const uint TUNSETOFFLOAD = 0x400454d0;
    public const uint TUNSETCARRIER = 0x400454e2; // _IOW('T', 226, int), Linux 4.19+
    public const short IFF_TAP = 0x0002;
    public const short IFF_NO_PI = 0x1000;
    public const short IFF_VNET_HDR = 0x4000;
    public const int IFNAMSIZ = 16;

    // linux/sockios.h, linux/ethtool.h
    public const uint SIOCETHTOOL = 0x8946;
    public const uint ETHTOOL_GLINK = 0x0000000a;

    /// <summary>struct ifreq as TUNSETIFF reads it: the name, then ifr_flags; 40 bytes in all.</summary>
    [StructLayout(LayoutKind.Sequential, Size = 40)]
    public unsafe struct IfReq
    {
        public fixed byte Name[IFNAMSIZ];
        public short Flags;
    }

    /// <summary>struct ifreq with ifr_data (a pointer to the request), as SIOCETHTOOL reads it; 40 bytes.</summary>
    [StructLayout(LayoutKind.Sequential, Size = 40)]
    public unsafe struct IfReqData
    {
        public fixed byte Name[IFNAMSIZ];
        public void* Data;
    }

    /// <summary>struct ethtool_value: a command and its one 32-bit value.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct EthtoolValue
    {
        public uint Cmd;
        public uint Data;
    }

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string path, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial int ioctl(int fd, nuint request, void* arg);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial int sched_setaffinity(int pid, nuint cpusetsize, ulong* mask);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial int sched_getaffinity(int pid, nuint cpusetsize, ulong* mask);
}
