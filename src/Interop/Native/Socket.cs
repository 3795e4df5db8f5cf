using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Native;

/// <summary>
/// AF_UNIX socket calls and the SCM_RIGHTS ancillary-data layout (x86-64 / arm64 Linux, LP64).
/// Used by <see cref="Primitives.UnixSocket"/> (and <see cref="Primitives.TapDevice"/> for an ioctl socket). Kept apart from <c>Libc</c> so constants never clash
/// with other engineers' additions there.
/// </summary>
internal static partial class LibcSocket
{
    private const string Lib = "libc";

    public const int AF_UNIX = 1;
    public const int SOCK_STREAM = 1;
    public const int SOCK_DGRAM = 2;
    public const int SOCK_NONBLOCK = 0x800;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int SOL_SOCKET = 1;
    public const int SO_PEERCRED = 17;
    public const int SCM_RIGHTS = 1;
    public const int SHUT_RDWR = 2;

    public const int MSG_CTRUNC = 0x8;
    public const int MSG_TRUNC = 0x20;
    public const int MSG_DONTWAIT = 0x40;
    public const int MSG_NOSIGNAL = 0x4000;
    public const int MSG_CMSG_CLOEXEC = 0x40000000;

    public const int ENOENT = 2;
    public const int EPIPE = 32;
    public const int ECONNREFUSED = 111;
    public const int ECONNRESET = 104;

    public const short POLLOUT = 0x4;
    public const short POLLERR = 0x8;
    public const short POLLHUP = 0x10;
    public const short POLLNVAL = 0x20;

    /// <summary>sizeof(sun_path) in struct sockaddr_un.</summary>
    public const int SunPathLength = 108;

    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct SockaddrUn
    {
        public ushort Family;
        public fixed byte Path[SunPathLength];
    }

    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    /// <summary>struct msghdr (LP64: 56 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct MsgHdr
    {
        public void* Name;
        public uint NameLen;
        public IoVec* Iov;
        public nuint IovLen;
        public void* Control;
        public nuint ControlLen;
        public int Flags;
    }

    /// <summary>struct cmsghdr header (LP64: 16 bytes; data follows, 8-byte aligned).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct CmsgHdr
    {
        public nuint Len;
        public int Level;
        public int Type;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct UCred
    {
        public int Pid;
        public uint Uid;
        public uint Gid;
    }

    /// <summary>CMSG_ALIGN: round up to sizeof(size_t).</summary>
    public static int CmsgAlign(int len) => (len + 7) & ~7;

    /// <summary>CMSG_SPACE(len).</summary>
    public static int CmsgSpace(int len) => CmsgAlign(16) + CmsgAlign(len);

    /// <summary>CMSG_LEN(len).</summary>
    public static int CmsgLen(int len) => CmsgAlign(16) + len;

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int socket(int domain, int type, int protocol);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial int socketpair(int domain, int type, int protocol, int* sv);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial int bind(int fd, SockaddrUn* addr, uint len);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial int connect(int fd, SockaddrUn* addr, uint len);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int listen(int fd, int backlog);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int accept4(int fd, nint addr, nint addrlen, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial nint recvmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial nint sendmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static unsafe partial int getsockopt(int fd, int level, int optname, void* optval, uint* optlen);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int shutdown(int fd, int how);
}
