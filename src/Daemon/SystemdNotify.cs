using System.Net.Sockets;
using System.Text;

namespace IfcVdpa.Daemon;

/// <summary>
/// The service manager's readiness protocol (sd_notify): one datagram of newline-separated `KEY=VALUE`
/// assignments sent to the Unix socket named by $NOTIFY_SOCKET (a path, or `@name` for an abstract
/// socket). With Type=notify, systemd holds the units ordered after ours until READY=1 arrives.
/// Nothing happens when the variable is unset (not started by a service manager).
/// </summary>
public static class SystemdNotify
{
    public const string EnvVar = "NOTIFY_SOCKET";

    /// <summary>Sends <paramref name="state"/>; null when there is no $NOTIFY_SOCKET, else the socket it went to.</summary>
    /// <exception cref="IOException">the socket is named but unusable (the message says why)</exception>
    public static string? Notify(string state)
    {
        ArgumentNullException.ThrowIfNull(state);
        string? target = Environment.GetEnvironmentVariable(EnvVar);
        if (string.IsNullOrEmpty(target))
        {
            return null;
        }
        UnixDomainSocketEndPoint endpoint;
        if (target[0] == '@')
        {
            endpoint = new UnixDomainSocketEndPoint("\0" + target[1..]); // abstract namespace
        }
        else if (target[0] == '/')
        {
            endpoint = new UnixDomainSocketEndPoint(target);
        }
        else
        {
            throw new IOException($"{EnvVar}={target}: only a socket path or an @abstract name is supported");
        }
        try
        {
            using var s = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            s.SendTo(Encoding.UTF8.GetBytes(state), endpoint);
        }
        catch (SocketException e)
        {
            throw new IOException($"{EnvVar}={target}: {e.Message}", e);
        }
        return target;
    }

    /// <summary>
    /// <see cref="Notify(string)"/> for `daemon` and `serve`: the notification is logged, and a failure is
    /// a warning, never fatal (the service manager then times the start out, with the reason in the log).
    /// </summary>
    public static void Notify(string state, DaemonLog log)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(log);
        try
        {
            if (Notify(state) is { } target)
            {
                log.Info("service manager notified", ("state", state.Split('\n')[0]), ("notify_socket", target));
            }
        }
        catch (IOException e)
        {
            log.Warn("service manager notification failed", ("error", e.Message));
        }
    }
}
