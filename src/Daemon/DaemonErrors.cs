using IfcVdpa.Vdpa;

namespace IfcVdpa.Daemon;

/// <summary>
/// The daemon's error contract, in one place: which exceptions are refusals to report to the client as an
/// error reply (a request the daemon will not do, a device that said no, an environment that does not allow
/// it: a socket path in use, a TAP that cannot be opened) rather than bugs, which are logged with their stack
/// and answered as internal errors.
/// </summary>
public static class DaemonErrors
{
    public static bool IsRefusal(Exception e) =>
        e is ControlException or RegistryException or VdpaException or IOException or UnauthorizedAccessException;
}
