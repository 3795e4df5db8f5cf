using IfcVdpa.Daemon.Metrics;

namespace IfcVdpa.Daemon;

public sealed record DaemonOptions
{
    /// <summary>Control socket path (null: <see cref="ControlPaths.Default"/>).</summary>
    public string? ControlPath { get; init; }

    public IReadOnlyCollection<uint> AllowUids { get; init; } = [];

    /// <summary>Software VFs to create at start (like `sim add count N`).</summary>
    public int SoftwareVfs { get; init; }

    /// <summary>Prometheus endpoint, `[ADDR:]PORT` (null: none; see <see cref="MetricsEndpoint.Parse"/>).</summary>
    public string? Metrics { get; init; }
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
        if (options.Metrics is not null)
        {
            MetricsEndpoint.Parse(options.Metrics); // a bad address is refused before anything starts
        }
        _metricsSpec = options.Metrics;
        Meter = new IfcvfMeter(new MetricsSources
        {
            Devices = () => Registry.Devices,
            ManagementDevices = () => Registry.ManagementDevices.Count,
            VhostConnections = () => Registry.VhostConnections,
            Control = Server,
        });
        if (options.SoftwareVfs > 0)
        {
            Registry.AddSoftwareVfs(options.SoftwareVfs, null, 1);
        }
    }

    public DaemonLog Log { get; }

    public DeviceRegistry Registry { get; }

    public ControlServer Server { get; }

    /// <summary>The daemon's instruments (always published; exported only with <see cref="DaemonOptions.Metrics"/>).</summary>
    public IfcvfMeter Meter { get; }

    /// <summary>The Prometheus endpoint once started (null without --metrics).</summary>
    public MetricsEndpoint? MetricsEndpoint { get; private set; }

    private readonly string? _metricsSpec;

    public void Start()
    {
        if (_metricsSpec is not null)
        {
            MetricsEndpoint = MetricsEndpoint.Start(_metricsSpec);
            Log.Info("metrics endpoint listening", ("url", MetricsEndpoint.Url));
        }
        Server.Start();
        Log.Info("daemon ready", ("pid", Environment.ProcessId), ("control", Server.Path));
        SystemdNotify.Notify($"READY=1\nMAINPID={Environment.ProcessId}\nSTATUS=control socket {Server.Path}", Log);
    }

    /// <summary>Runs until <paramref name="stop"/> is cancelled.</summary>
    public void Run(CancellationToken stop)
    {
        Start();
        stop.WaitHandle.WaitOne();
        Log.Info("daemon stopping");
        SystemdNotify.Notify("STOPPING=1", Log);
    }

    /// <summary>Stops accepting requests, then deletes every vDPA device and VF.</summary>
    public void Dispose()
    {
        Server.Dispose();
        MetricsEndpoint?.Dispose();
        Meter.Dispose();
        Registry.Dispose();
        Log.Info("daemon stopped");
    }
}
