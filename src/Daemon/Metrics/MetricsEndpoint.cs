using System.Globalization;
using System.Net;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace IfcVdpa.Daemon.Metrics;

/// <summary>
/// The Prometheus scrape endpoint (`--metrics [ADDR:]PORT`): OpenTelemetry's Prometheus exporter on an
/// HttpListener, serving <c>http://ADDR:PORT/metrics</c> in the Prometheus text format from the
/// <see cref="IfcvfMeter.MeterName"/> meter. Values are collected on each scrape (no caching, so two
/// scrapes a moment apart see the counters move).
/// </summary>
public sealed class MetricsEndpoint : IDisposable
{
    private readonly MeterProvider _provider;

    private MetricsEndpoint(string host, int port, MeterProvider provider)
    {
        Host = host;
        Port = port;
        _provider = provider;
    }

    public string Host { get; }

    public int Port { get; }

    /// <summary>The scrape URL (with the loopback address when bound to every address).</summary>
    public Uri Url => new($"http://{UrlHost(Host)}:{Port}/metrics");

    /// <summary>
    /// Parses `PORT`, `ADDR:PORT` or `[IPv6]:PORT`. Only a port means loopback (127.0.0.1): the counters
    /// describe the host's guests, so exposing them beyond the host is the operator's explicit choice.
    /// `0.0.0.0` and `[::]` mean every address.
    /// </summary>
    public static (string Host, int Port) Parse(string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        string host = "127.0.0.1";
        string portText = spec;
        int colon = spec.LastIndexOf(':');
        if (colon >= 0)
        {
            host = spec[..colon];
            portText = spec[(colon + 1)..];
            if (host.StartsWith('[') && host.EndsWith(']'))
            {
                host = host[1..^1];
                if (!IPAddress.TryParse(host, out var v6) || v6.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6)
                {
                    throw new FormatException($"--metrics {spec}: \"[{host}]\" is not an IPv6 address");
                }
            }
            else if (host.Contains(':', StringComparison.Ordinal))
            {
                throw new FormatException($"--metrics {spec}: write an IPv6 address in brackets, e.g. [::1]:9464");
            }
            else if (host != "localhost" && !(IPAddress.TryParse(host, out var v4) && v4.ToString() == host))
            {
                // (the comparison refuses the legacy short forms TryParse accepts: "1.2.3" is not 1.2.0.3 here)
                throw new FormatException($"--metrics {spec}: \"{host}\" is not an IP address (or localhost)");
            }
        }
        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
        {
            throw new FormatException($"--metrics {spec}: the port must be 1..65535 (e.g. 9464 or 127.0.0.1:9464)");
        }
        return (host, port);
    }

    /// <summary>Starts the endpoint; throws <see cref="InvalidOperationException"/> when it cannot listen.</summary>
    public static MetricsEndpoint Start(string spec)
    {
        var (host, port) = Parse(spec);
        // HttpListener binds every address for "+"; an IP literal binds that address only.
        string listenHost = host is "0.0.0.0" or "::" ? "+" : host;
        MeterProvider provider;
        try
        {
            provider = Sdk.CreateMeterProviderBuilder()
                .ConfigureResource(r => r.Clear().AddService("ifcvf", serviceVersion: typeof(MetricsEndpoint).Assembly.GetName().Version?.ToString(3), autoGenerateServiceInstanceId: false))
                .AddMeter(IfcvfMeter.MeterName)
                .AddPrometheusHttpListener(o =>
                {
                    o.Host = listenHost.Contains(':', StringComparison.Ordinal) ? $"[{listenHost}]" : listenHost;
                    o.Port = port;
                    o.ScrapeEndpointPath = "/metrics";
                    o.ScopeInfoEnabled = false; // one meter: otel_scope_* labels on every series would add nothing
                    o.ScrapeResponseCacheDurationMilliseconds = 0;
                })
                .Build();
        }
        catch (Exception e) when (e is HttpListenerException or InvalidOperationException or System.Net.Sockets.SocketException)
        {
            throw new InvalidOperationException($"cannot serve metrics on {UrlHost(host)}:{port}: {(e.InnerException ?? e).Message}", e);
        }
        return new MetricsEndpoint(host, port, provider);
    }

    private static string UrlHost(string host) => host switch
    {
        "0.0.0.0" => "127.0.0.1",
        "::" => "[::1]",
        _ when host.Contains(':', StringComparison.Ordinal) => $"[{host}]",
        _ => host,
    };

    public void Dispose() => _provider.Dispose();
}
