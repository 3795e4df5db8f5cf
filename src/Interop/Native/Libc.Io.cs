using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Native;

/// <summary>pread(2)/pwrite(2) (VFIO region access).</summary>
internal static partial class Libc
{
    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial nint pread(int fd, void* buf, nuint count, long offset);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial nint pwrite(int fd, void* buf, nuint count, long offset);
}
