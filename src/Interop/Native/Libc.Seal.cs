using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Native;

/// <summary>memfd sealing (fcntl(2) F_ADD_SEALS): memory shared with a peer process must not shrink under us.</summary>
internal static partial class Libc
{
    public const uint MFD_ALLOW_SEALING = 0x2;
    public const int F_ADD_SEALS = 1033;
    public const int F_GET_SEALS = 1034;
    public const int F_SEAL_SEAL = 0x1;
    public const int F_SEAL_SHRINK = 0x2;
    public const int F_SEAL_GROW = 0x4;

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int fcntl(int fd, int cmd, int arg);
}
