using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Daemon;

/// <summary>Where the control socket lives.</summary>
public static class ControlPaths
{
    /// <summary>Environment variable that overrides the default control socket path.</summary>
    public const string EnvVar = "IFCVF_CONTROL";

    /// <summary>sockaddr_un.sun_path holds 108 bytes including the terminating NUL.</summary>
    public const int MaxPathBytes = 107;

    /// <summary>
    /// IFCVF_CONTROL if set; else $XDG_RUNTIME_DIR/ifcvf/ifcvfd.sock; else /run/ifcvf/ifcvfd.sock for
    /// root; else /tmp/ifcvf-UID/ifcvfd.sock.
    /// </summary>
    public static string Default()
    {
        string? env = Environment.GetEnvironmentVariable(EnvVar);
        if (!string.IsNullOrEmpty(env))
        {
            return env;
        }
        string? xdg = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        if (!string.IsNullOrEmpty(xdg))
        {
            return Path.Combine(xdg, "ifcvf", "ifcvfd.sock");
        }
        uint uid = ProcessIdentity.EffectiveUid;
        return uid == 0 ? "/run/ifcvf/ifcvfd.sock" : $"/tmp/ifcvf-{uid}/ifcvfd.sock";
    }

    /// <summary>Resolves an explicit path (from --control) or the default, and checks it fits a sockaddr_un.</summary>
    public static string Resolve(string? explicitPath)
    {
        string p = string.IsNullOrEmpty(explicitPath) ? Default() : explicitPath;
        p = Path.GetFullPath(p);
        if (System.Text.Encoding.UTF8.GetByteCount(p) > MaxPathBytes)
        {
            throw new ArgumentException($"control socket path \"{p}\" is longer than {MaxPathBytes} bytes (a Unix socket limit)");
        }
        return p;
    }
}
