namespace IfcVdpa.Daemon;

public sealed record DaemonOptions
{
    /// <summary>Control socket path (null: <see cref="ControlPaths.Default"/>).</summary>
    public string? ControlPath { get; init; }

    public IReadOnlyCollection<uint> AllowUids { get; init; } = [];

    /// <summary>Software VFs to create at start (like `sim add count N`).</summary>
    public int SoftwareVfs { get; init; }
}

/// <summary>
/// The daemon: owns the device registry and the control socket. Other subsystems (vhost-user serving)
/// attach through <see cref="Registry"/> events and register extra commands on <see cref="Server"/>.
/// </summary>
public sealed class DaemonHost : IDisposable
{
    public DaemonHost(DaemonOptions options, DaemonLog? log = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        Log = log ?? DaemonLog.Stderr;
        Registry = new DeviceRegistry(Log);
        Server = new ControlServer(new ControlServerOptions
        {
            Path = ControlPaths.Resolve(options.ControlPath),
            AllowUids = options.AllowUids,
        }, Log);
        ControlCommands.Register(Server, Registry);
        if (options.SoftwareVfs > 0)
        {
            Registry.AddSoftwareVfs(options.SoftwareVfs, null, 1);
        }
    }

    public DaemonLog Log { get; }

    public DeviceRegistry Registry { get; }

    public ControlServer Server { get; }

    public void Start()
    {
        Server.Start();
        Log.Info("daemon ready", ("pid", Environment.ProcessId), ("control", Server.Path));
    }

    /// <summary>Runs until <paramref name="stop"/> is cancelled.</summary>
    public void Run(CancellationToken stop)
    {
        Start();
        stop.WaitHandle.WaitOne();
        Log.Info("daemon stopping");
    }

    /// <summary>Stops accepting requests, then deletes every vDPA device and VF.</summary>
    public void Dispose()
    {
        Server.Dispose();
        Registry.Dispose();
        Log.Info("daemon stopped");
    }
}
