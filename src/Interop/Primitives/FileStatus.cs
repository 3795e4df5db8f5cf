using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>File type, size and block size of a path or an open descriptor (statx(2)).</summary>
public readonly record struct FileStatus(uint Mode, ulong Size, uint BlockSize)
{
    public bool IsSocket => (Mode & LibcFile.S_IFMT) == LibcFile.S_IFSOCK;

    public bool IsRegular => (Mode & LibcFile.S_IFMT) == LibcFile.S_IFREG;

    /// <summary>Status of a path (symbolic links are not followed); null if it does not exist.</summary>
    public static FileStatus? OfPath(string path) => Stat(LibcFile.AT_FDCWD, path, LibcFile.AT_SYMLINK_NOFOLLOW);

    /// <summary>Status of an open descriptor.</summary>
    public static FileStatus OfFd(int fd) =>
        Stat(fd, "", LibcFile.AT_EMPTY_PATH) ?? throw Errno.Exception($"statx(fd {fd})");

    private static unsafe FileStatus? Stat(int dirfd, string path, int flags)
    {
        byte* buf = stackalloc byte[LibcFile.StatxSize];
        if (LibcFile.statx(dirfd, path, flags, LibcFile.STATX_TYPE | LibcFile.STATX_MODE | LibcFile.STATX_SIZE, buf) != 0)
        {
            if (Errno.Last == LibcFile.ENOENT)
            {
                return null;
            }
            throw Errno.Exception($"statx({path})");
        }
        return new FileStatus(*(ushort*)(buf + LibcFile.StatxModeOffset), *(ulong*)(buf + LibcFile.StatxSizeOffset),
            *(uint*)(buf + LibcFile.StatxBlksizeOffset));
    }

    /// <summary>chmod(2) without the platform analyzer ceremony of File.SetUnixFileMode.</summary>
    public static void SetMode(string path, uint mode)
    {
        if (LibcFile.chmod(path, mode) != 0)
        {
            throw Errno.Exception($"chmod({path})");
        }
    }

    /// <summary>chown(2): sets the owner and/or group (null leaves it unchanged; needs CAP_CHOWN for others' ids).</summary>
    public static void SetOwner(string path, uint? owner, uint? group)
    {
        if (owner is null && group is null)
        {
            return;
        }
        if (LibcFile.chown(path, owner ?? uint.MaxValue, group ?? uint.MaxValue) != 0)
        {
            throw Errno.Exception($"chown({path})");
        }
    }
}

/// <summary>What kind of object a descriptor refers to, by its /proc/self/fd link.</summary>
public static class FdKind
{
    /// <summary>True if <paramref name="fd"/> is an eventfd ("anon_inode:[eventfd]").</summary>
    public static bool IsEventFd(int fd) => Target(fd) == "anon_inode:[eventfd]";

    /// <summary>The /proc/self/fd link target ("anon_inode:[eventfd]", "socket:[123]", a path), or null.</summary>
    public static string? Target(int fd)
    {
        try
        {
            return new FileInfo($"/proc/self/fd/{fd}").LinkTarget;
        }
        catch (IOException)
        {
            return null;
        }
    }
}
