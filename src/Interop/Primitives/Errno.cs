using System.ComponentModel;
using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Primitives;

/// <summary>Turns the last libc error into an exception with the call that failed.</summary>
public static class Errno
{
    public static int Last => Marshal.GetLastPInvokeError();

    public static IOException Exception(string what)
    {
        int e = Marshal.GetLastPInvokeError();
        return new IOException($"{what} failed: {new Win32Exception(e).Message} (errno {e})", e);
    }
}
