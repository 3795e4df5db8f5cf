using System.Globalization;
using IfcVdpa.Daemon;

namespace IfcVdpa.Cli;

/// <summary>
/// `ifcvf daemon [--allow-uid N]... [--metrics [ADDR:]PORT] [--config FILE] [--log-format logfmt|json]
/// [--log-level error|warn|info|debug] [sim N] [vfio BDF]... [generic]`: runs the daemon in the foreground
/// until SIGINT/SIGTERM. `vfio BDF` adopts a function bound to vfio-pci as management device pci/BDF
/// (`generic` also accepts plain virtio-net functions, like DPDK's vdpa=1).
/// </summary>
public static class DaemonCommand
{
    public static int Run(CliContext ctx, IEnumerable<string> args)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        var kv = new Keywords(args);
        var allow = new List<uint>();
        while (kv.Get("--allow-uid") is { } u)
        {
            if (!uint.TryParse(u, NumberStyles.None, CultureInfo.InvariantCulture, out uint uid))
            {
                throw new CliException($"--allow-uid needs a numeric uid, not \"{u}\"");
            }
            allow.Add(uid);
        }
        int sims = kv.Int("sim", 0);
        var vfio = new List<string>();
        while (kv.Get("vfio") is { } bdf)
        {
            vfio.Add(bdf);
        }
        bool generic = kv.Flag("generic");
        string? metrics = kv.Get("--metrics");
        string? config = kv.Get("--config");
        var log = LogOptions(ctx, kv);
        kv.EnsureAllUsed();
        var configLines = config is null ? null : DaemonConfig.Load(config); // the whole file is checked before anything starts
        if (metrics is not null)
        {
            try
            {
                IfcVdpa.Daemon.Metrics.MetricsEndpoint.Parse(metrics);
            }
            catch (FormatException e)
            {
                throw new CliException(e.Message);
            }
        }
        if (sims is < 0 or > DeviceRegistry.MaxSoftwareVfs)
        {
            throw new CliException($"sim must be 0..{DeviceRegistry.MaxSoftwareVfs}");
        }
        using var stop = new CancellationTokenSource();
        using var signals = new ShutdownSignal(stop.Cancel);
        DaemonHost host;
        try
        {
            host = new DaemonHost(new DaemonOptions { ControlPath = ctx.ResolveControlPath(), AllowUids = allow, SoftwareVfs = sims, Metrics = metrics }, log);
        }
        catch (Exception e) when (e is ArgumentException or RegistryException)
        {
            throw new CliException(e.Message);
        }
        using (host)
        {
            foreach (var bdf in vfio)
            {
                AdoptVfio(host, bdf, generic);
            }
            if (configLines is not null)
            {
                DaemonConfig.Apply(host, config!, configLines);
            }
            try
            {
                host.Run(stop.Token);
            }
            catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException or System.Net.Sockets.SocketException)
            {
                throw new CliException($"cannot start the daemon: {e.Message}");
            }
        }
        return 0;
    }

    /// <summary>`--log-format logfmt|json` and `--log-level error|warn|info|debug` (daemon and serve): the one log writer, on stderr.</summary>
    internal static DaemonLog LogOptions(CliContext ctx, Keywords kv)
    {
        string? format = kv.Get("--log-format");
        string? level = kv.Get("--log-level");
        try
        {
            return DaemonLog.Create(ctx.Err, format, level);
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
    }

    internal static void AdoptVfio(DaemonHost host, string bdf, bool generic)
    {
        IfcVdpa.Vfio.VfioPciFunction fn;
        try
        {
            fn = IfcVdpa.Vfio.VfioPciFunction.Open(bdf);
        }
        catch (Exception e) when (e is ArgumentException || DaemonErrors.IsRefusal(e))
        {
            throw new CliException($"vfio {bdf}: {e.Message}");
        }
        try
        {
            host.Registry.AddPciFunction(fn, ownsFunction: true, acceptGenericVirtioNet: generic);
        }
        catch (Exception e) when (DaemonErrors.IsRefusal(e))
        {
            fn.Dispose();
            throw new CliException($"vfio {bdf}: {e.Message}");
        }
    }
}
