using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Native;

/// <summary>statx(2), chmod(2) and chown(2): file type/size of paths and received descriptors.</summary>
internal static partial class LibcFile
{
    private const string Lib = "libc";
    public const int ENOENT = 2;

    public const int AT_FDCWD = -100;
    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const int AT_EMPTY_PATH = 0x1000;
    public const uint STATX_TYPE = 0x1;
    public const uint STATX_MODE = 0x2;
    public const uint STATX_SIZE = 0x200;
    public const uint S_IFMT = 0xF000;
    public const uint S_IFSOCK = 0xC000;
    public const uint S_IFREG = 0x8000;

    /// <summary>Size of struct statx (architecture independent).</summary>
    public const int StatxSize = 256;
    public const int StatxBlksizeOffset = 4;
    public const int StatxModeOffset = 28;
    public const int StatxSizeOffset = 40;

    [LibraryImport(Lib, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static unsafe partial int statx(int dirfd, string path, int flags, uint mask, byte* buf);

    [LibraryImport(Lib, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chmod(string path, uint mode);

    /// <summary>chown(2); uint.MaxValue ((uid_t)-1) leaves that id unchanged.</summary>
    [LibraryImport(Lib, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chown(string path, uint owner, uint group);
}
