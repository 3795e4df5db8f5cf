using IfcVdpa.Interop.Native;
using Microsoft.Win32.SafeHandles;

namespace IfcVdpa.Interop.Primitives;

/// <summary>An owned Linux file descriptor, closed exactly once.</summary>
public sealed class SafeFd : SafeHandleMinusOneIsInvalid
{
    public SafeFd() : base(ownsHandle: true) { }

    public SafeFd(int fd, bool ownsHandle = true) : base(ownsHandle) => SetHandle(fd);

    public int Fd => (int)handle;

    /// <summary>Duplicates a descriptor (the new one is owned by the result).</summary>
    public static SafeFd Dup(int fd)
    {
        int d = Libc.dup(fd);
        if (d < 0)
        {
            throw Errno.Exception($"dup({fd})");
        }
        return new SafeFd(d);
    }

    protected override bool ReleaseHandle() => Libc.close((int)handle) == 0;
}
