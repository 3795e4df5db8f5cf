namespace IfcVdpa.Vfio;

/// <summary>Why a PCI function cannot be opened or driven through VFIO, worded so the user can fix it.</summary>
public sealed class VfioException : IOException
{
    public VfioException(string message) : base(message) { }

    public VfioException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>The errno values VFIO and sysfs callers tell apart (an IOException's HResult carries the errno).</summary>
internal static class Errnos
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EACCES = 13;
    public const int EBUSY = 16;
    public const int ENODEV = 19;
    public const int EINVAL = 22;
    public const int ENOMEM = 12;
}
