using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>
/// A scrape of a Prometheus text endpoint: samples by series (`name{label="v",...}` exactly as written),
/// and Debian's `promtool check metrics` over the same text.
/// </summary>
public sealed partial class PrometheusScrape
{
    public const string Promtool = "/usr/bin/promtool";

    private PrometheusScrape(string text, Dictionary<string, double> samples)
    {
        Text = text;
        Samples = samples;
    }

    public string Text { get; }

    public IReadOnlyDictionary<string, double> Samples { get; }

    /// <summary>A series' value; fails with the whole scrape when the series is absent.</summary>
    public double this[string series] =>
        Samples.TryGetValue(series, out double v) ? v : throw new Xunit.Sdk.XunitException($"no series {series} in the scrape:\n{Text}");

    /// <summary>Sum over every series of metric <paramref name="name"/> whose labels include all of <paramref name="labels"/>.</summary>
    public double Sum(string name, params string[] labels) =>
        Samples.Where(kv => SeriesName(kv.Key) == name && labels.All(l => kv.Key.Contains(l, StringComparison.Ordinal))).Sum(kv => kv.Value);

    private static string SeriesName(string series)
    {
        int b = series.IndexOf('{', StringComparison.Ordinal);
        return b < 0 ? series : series[..b];
    }

    [GeneratedRegex(@"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)(?: \d+)?$", RegexOptions.CultureInvariant)]
    private static partial Regex SampleLine();

    public static PrometheusScrape Get(Uri url)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        string text = http.GetStringAsync(url).GetAwaiter().GetResult();
        var samples = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (string line in text.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }
            var m = SampleLine().Match(line);
            if (!m.Success)
            {
                throw new FormatException($"not a sample line: \"{line}\"");
            }
            string key = m.Groups[1].Value.EndsWith("{}", StringComparison.Ordinal) ? m.Groups[1].Value[..^2] : m.Groups[1].Value;
            samples[key] = double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
        }
        return new PrometheusScrape(text, samples);
    }

    /// <summary>Runs `promtool check metrics` on the scrape; returns its exit code and output.</summary>
    public (int Code, string Output) Check()
    {
        PeerEnvironment.Require(Promtool);
        string file = Path.Combine(Path.GetTempPath(), PeerEnvironment.Unique("scrape") + ".prom");
        File.WriteAllText(file, Text);
        try
        {
            // promtool reads the exposition from stdin; sh does the redirection
            return PeerEnvironment.Run("/bin/sh", ["-c", $"{Promtool} check metrics < '{file}'"], TimeSpan.FromSeconds(30));
        }
        finally
        {
            File.Delete(file);
        }
    }

    /// <summary>A loopback TCP port free at the time of the call.</summary>
    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }
}
