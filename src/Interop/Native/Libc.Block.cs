using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Native;

/// <summary>open(2) with O_DIRECT, fdatasync(2), fallocate(2), lseek(2): the block backend's image file.</summary>
internal static partial class Libc
{
    public const int O_RDONLY = 0x0;
    public const int O_DIRECT = 0x4000;
    public const int SEEK_END = 2;
    public const int FALLOC_FL_KEEP_SIZE = 0x01;
    public const int FALLOC_FL_PUNCH_HOLE = 0x02;
    public const int FALLOC_FL_ZERO_RANGE = 0x10;

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open_file(string path, int flags, int mode);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int fdatasync(int fd);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int fallocate(int fd, int mode, long offset, long len);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial long lseek(int fd, long offset, int whence);
}
