using System.Diagnostics.Metrics;
using IfcVdpa.Vdpa;

namespace IfcVdpa.Daemon.Metrics;

/// <summary>Where the instruments read their values (each read on a collection, never on the datapath).</summary>
public sealed record MetricsSources
{
    /// <summary>The vDPA devices to report, by their names (the `device` label).</summary>
    public required Func<IReadOnlyList<IVdpaDevice>> Devices { get; init; }

    /// <summary>Management devices (VFs) held; null where there is no such notion (serve).</summary>
    public Func<int>? ManagementDevices { get; init; }

    /// <summary>vhost-user front-end connections so far, and how many are connected now.</summary>
    public Func<(long Total, int Connected)>? VhostConnections { get; init; }

    /// <summary>The control socket whose requests and refusals are counted (null: serve has none).</summary>
    public ControlServer? Control { get; init; }
}

/// <summary>
/// The counters published through <see cref="System.Diagnostics.Metrics"/> under the meter
/// <see cref="MeterName"/>: observable instruments that read the counters the devices, the vhost-user
/// back-ends and the control socket already keep. Nothing is added to the datapath: a value is read only
/// when a listener (the Prometheus endpoint, dotnet-counters) collects, from the same per-queue counters
/// `dev vstats` prints. Instrument names follow OpenTelemetry's convention (dotted, unit separate); the
/// Prometheus exporter turns <c>ifcvf.queue.packets</c> into <c>ifcvf_queue_packets_total</c> (README).
/// </summary>
public sealed class IfcvfMeter : IDisposable
{
    /// <summary>The meter's name (what a listener subscribes to).</summary>
    public const string MeterName = "IfcVdpa";

    private readonly Meter _meter;
    private readonly MetricsSources _sources;

    public IfcvfMeter(MetricsSources sources)
    {
        ArgumentNullException.ThrowIfNull(sources);
        _sources = sources;
        _meter = new Meter(MeterName, typeof(IfcvfMeter).Assembly.GetName().Version?.ToString(3));

        QueueCounter("ifcvf.queue.packets", "{packet}", "Packets the virtqueue carried (rx: to the driver, tx: from it).", s => s.Packets);
        QueueCounter("ifcvf.queue.bytes", "By", "Bytes the virtqueue carried (frames without the virtio-net header).", s => s.Bytes);
        QueueCounter("ifcvf.queue.kicks", "{kick}", "Driver notifications (doorbell writes) for the virtqueue.", s => s.Kicks);
        QueueCounter("ifcvf.queue.interrupts", "{interrupt}", "Used-buffer notifications the device raised for the virtqueue.", s => s.Interrupts);
        QueueCounter("ifcvf.queue.drops", "{packet}", "Packets dropped: no RX buffer, or the backend refused the frame.", s => s.Drops);
        QueueCounter("ifcvf.queue.errors", "{error}", "Malformed descriptor chains and ring errors (each stops the queue: NEEDS_RESET).", s => s.Errors);
        QueueCounter("ifcvf.queue.dirty_pages", "{page}", "Guest pages the virtqueue's buffers marked in the live-migration dirty log.", s => s.DirtyPages);

        _meter.CreateObservableCounter("ifcvf.device.needs_reset", DeviceNeedsReset, "{event}",
            "Times the device entered NEEDS_RESET (a device error reported to its driver; software VF only).");
        _meter.CreateObservableGauge("ifcvf.device.dirty_log_enabled", DeviceDirtyLogEnabled, null,
            "1 while the device keeps the live-migration dirty log, else 0.");

        _meter.CreateObservableGauge("ifcvf.devices", () => (long)SafeDevices().Count, "{device}", "vDPA devices.");
        if (sources.ManagementDevices is { } mgmt)
        {
            _meter.CreateObservableGauge("ifcvf.management_devices", () => (long)mgmt(), "{device}", "Management devices (VFs).");
        }
        if (sources.VhostConnections is { } vhost)
        {
            _meter.CreateObservableCounter("ifcvf.vhost.connections", () => vhost().Total, "{connection}",
                "vhost-user front-end connections accepted (or made, as a client).");
            _meter.CreateObservableGauge("ifcvf.vhost.connected", () => (long)vhost().Connected, "{connection}",
                "vhost-user front-ends connected now.");
        }
        if (sources.Control is { } control)
        {
            _meter.CreateObservableCounter("ifcvf.control.requests", () => control.Requests, "{request}",
                "Control socket requests answered (ok or error).");
            _meter.CreateObservableCounter("ifcvf.control.refusals", () => control.Refusals, "{request}",
                "Control socket requests refused: uid not allowed, malformed request, bad arguments, a device that said no.");
        }
    }

    private void QueueCounter(string name, string unit, string description, Func<VdpaVqStats, long> pick) =>
        _meter.CreateObservableCounter(name, () => QueueMeasurements(pick), unit, description);

    private IReadOnlyList<IVdpaDevice> SafeDevices()
    {
        try
        {
            return _sources.Devices();
        }
        catch (ObjectDisposedException)
        {
            return []; // the registry is going away (daemon stopping)
        }
    }

    private List<Measurement<long>> QueueMeasurements(Func<VdpaVqStats, long> pick)
    {
        var list = new List<Measurement<long>>();
        foreach (var d in SafeDevices())
        {
            int n = d.NumVqs;
            for (int q = 0; q < n; q++)
            {
                VdpaVqStats s;
                try
                {
                    s = d.GetVqStats(q);
                }
                catch (Exception e) when (e is ObjectDisposedException or VdpaException)
                {
                    break; // removed between the listing and this read: it is simply not reported
                }
                list.Add(new Measurement<long>(pick(s),
                    new KeyValuePair<string, object?>("device", d.Name),
                    new KeyValuePair<string, object?>("queue", QueueLabel(q)),
                    new KeyValuePair<string, object?>("queue_type", ControlCommands.QueueType(d, q))));
            }
        }
        return list;
    }

    private List<Measurement<long>> DeviceNeedsReset()
    {
        var list = new List<Measurement<long>>();
        foreach (var d in SafeDevices())
        {
            long v = d is IVdpaDeviceDiagnostics diag ? diag.NeedsResetEvents : 0;
            list.Add(new Measurement<long>(v, new KeyValuePair<string, object?>("device", d.Name)));
        }
        return list;
    }

    private List<Measurement<long>> DeviceDirtyLogEnabled()
    {
        var list = new List<Measurement<long>>();
        foreach (var d in SafeDevices())
        {
            bool on;
            try
            {
                on = d is IVdpaDirtyLog log && log.DirtyLogEnabled;
            }
            catch (ObjectDisposedException)
            {
                continue;
            }
            list.Add(new Measurement<long>(on ? 1 : 0, new KeyValuePair<string, object?>("device", d.Name)));
        }
        return list;
    }

    private static readonly string[] SmallIndexes = [.. Enumerable.Range(0, 65).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture))];

    private static string QueueLabel(int q) =>
        q < SmallIndexes.Length ? SmallIndexes[q] : q.ToString(System.Globalization.CultureInfo.InvariantCulture);

    public void Dispose() => _meter.Dispose();
}
