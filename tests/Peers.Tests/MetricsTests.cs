using System.Globalization;
using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// The Prometheus endpoint (`serve --metrics`, `daemon --metrics`) scraped while DPDK testpmd (virtio-user)
/// sends traffic: the per-queue counters move between two scrapes, they end equal to what the front-end
/// counted, the daemon's own counters (devices, connections, control requests and refusals) follow what the
/// test does, and Debian's `promtool check metrics` accepts every scrape.
/// </summary>
public class MetricsTests(ITestOutputHelper output)
{
    private const string Packets = "ifcvf_queue_packets_total";

    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    [Fact]
    public void ServeCountersMoveUnderTrafficAndPassPromtool()
    {
        PeerEnvironment.Require(PrometheusScrape.Promtool);
        int port = PrometheusScrape.FreePort();
        var url = new Uri($"http://127.0.0.1:{port}/metrics");
        string dir = PeerEnvironment.NewRunDir();
        string socket = Path.Combine(dir, "vhost.sock");
        try
        {
            using var backend = ServeBackend.Start(socket, "loopback", 1, ["--metrics", $"127.0.0.1:{port}"]);
            var idle = PrometheusScrape.Get(url);
            Assert.Equal(1, idle["ifcvf_devices"]);
            Assert.Equal(0, idle["ifcvf_vhost_connections_total"]);
            Assert.Equal(0, idle.Sum(Packets, Tx("vdpa0")));
            Assert.Equal(0, idle.Sum("ifcvf_device_needs_reset_total", "device=\"vdpa0\""));
            CheckPromtool(idle);

            var o = new FrontEndOptions { Mode = "txonly", PacketSize = 64 };
            using var fe = TestPmd.StartFrontEnd(socket, o);
            fe.WaitReady();
            fe.StartForwarding(txFirst: false);
            var (first, second) = TwoMovingScrapes(url, "vdpa0", backend.Describe);
            output.WriteLine($"under traffic: tx packets {first.Sum(Packets, Tx("vdpa0"))} -> {second.Sum(Packets, Tx("vdpa0"))}");
            Assert.True(second.Sum("ifcvf_queue_bytes_total", Tx("vdpa0")) > first.Sum("ifcvf_queue_bytes_total", Tx("vdpa0")), second.Text);
            Assert.True(second.Sum("ifcvf_queue_kicks_total", Tx("vdpa0")) > 0, second.Text); // event mode: the worker sleeps until kicked
            Assert.Equal(1, second["ifcvf_vhost_connected"]);
            Assert.Equal(1, second["ifcvf_vhost_connections_total"]);
            CheckPromtool(second);

            fe.StopForwarding();
            var f = fe.ReadCounters();
            PrometheusScrape? last = null;
            Assert.True(PeerEnvironment.Eventually(() => (last = PrometheusScrape.Get(url)).Sum(Packets, Tx("vdpa0")) == f.TxPackets, Wait),
                $"tx packets never reached the front-end's {f.TxPackets}:\n{last?.Text}");
            output.WriteLine($"front-end {f}; endpoint tx {last!.Sum(Packets, Tx("vdpa0"))} pkts / {last.Sum("ifcvf_queue_bytes_total", Tx("vdpa0"))} B");
            Assert.Equal(f.TxBytes, last.Sum("ifcvf_queue_bytes_total", Tx("vdpa0")));
            Assert.Equal(0, last.Sum("ifcvf_queue_errors_total", "device=\"vdpa0\""));
            fe.Quit();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void DaemonCountsDevicesConnectionsRequestsAndRefusals()
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf, PrometheusScrape.Promtool);
        int port = PrometheusScrape.FreePort();
        var url = new Uri($"http://127.0.0.1:{port}/metrics"); // only a port given: the endpoint is on loopback
        string dir = PeerEnvironment.NewRunDir();
        string control = Path.Combine(dir, "ctl.sock");
        string socket = Path.Combine(dir, "vm0.sock");
        using var daemon = new PeerProcess("daemon", PeerEnvironment.Ifcvf,
            ["--control", control, "daemon", "--metrics", port.ToString(CultureInfo.InvariantCulture)], TimeSpan.FromMinutes(5));
        try
        {
            Assert.True(PeerEnvironment.Eventually(() => File.Exists(control) || daemon.HasExited, TimeSpan.FromSeconds(240)) && !daemon.HasExited,
                "daemon did not start\n" + daemon.Describe());
            var start = PrometheusScrape.Get(url);
            Assert.Equal(0, start["ifcvf_devices"]);
            Assert.Equal(0, start["ifcvf_control_requests_total"]);
            CheckPromtool(start);

            Cli(control, "sim", "add", "count", "1");
            Cli(control, "dev", "add", "name", "vm0", "mgmtdev", "sim/ifcvf0");
            Cli(control, "vhost", "add", "vm0", "socket", socket);
            var (code, again) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["--control", control, "dev", "add", "name", "vm0", "mgmtdev", "sim/ifcvf0"]);
            Assert.True(code != 0, again);
            var configured = PrometheusScrape.Get(url);
            Assert.Equal(1, configured["ifcvf_devices"]);
            Assert.Equal(1, configured["ifcvf_management_devices"]);
            Assert.Equal(1, configured["ifcvf_control_refusals_total"]);
            Assert.True(configured["ifcvf_control_requests_total"] >= 4, configured.Text);
            Assert.Equal(0, configured.Sum(Packets, Tx("vm0")));

            using (var fe = TestPmd.StartFrontEnd(socket, new FrontEndOptions { Mode = "txonly", PacketSize = 128 }))
            {
                fe.WaitReady();
                fe.StartForwarding(txFirst: false);
                var (_, moving) = TwoMovingScrapes(url, "vm0", () => daemon.Describe());
                Assert.Equal(1, moving["ifcvf_vhost_connected"]);
                Assert.Equal(1, moving["ifcvf_vhost_connections_total"]);
                CheckPromtool(moving);
                fe.StopForwarding();
                var f = fe.ReadCounters();
                Assert.True(PeerEnvironment.Eventually(() => PrometheusScrape.Get(url).Sum(Packets, Tx("vm0")) == f.TxPackets, Wait),
                    $"tx packets never reached the front-end's {f.TxPackets}\n{daemon.Describe()}");
                fe.Quit();
            }
            Assert.True(PeerEnvironment.Eventually(() => PrometheusScrape.Get(url)["ifcvf_vhost_connected"] == 0, Wait), "front-end still counted as connected");

            // Connections of a detached consumer stay counted; a deleted device's series go away.
            Cli(control, "vhost", "del", "vm0");
            Cli(control, "dev", "del", "vm0");
            var after = PrometheusScrape.Get(url);
            Assert.Equal(1, after["ifcvf_vhost_connections_total"]);
            Assert.Equal(0, after["ifcvf_devices"]);
            Assert.DoesNotContain("device=\"vm0\"", after.Text, StringComparison.Ordinal);
            CheckPromtool(after);
        }
        finally
        {
            if (!daemon.HasExited)
            {
                daemon.Signal("TERM", TimeSpan.FromSeconds(10));
            }
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string[] Tx(string device) => [$"device=\"{device}\"", "queue_type=\"tx\""];

    /// <summary>Two scrapes while traffic runs, the second with more TX packets than the first (which has some).</summary>
    private static (PrometheusScrape First, PrometheusScrape Second) TwoMovingScrapes(Uri url, string device, Func<string> describe)
    {
        PrometheusScrape? first = null;
        Assert.True(PeerEnvironment.Eventually(() => (first = PrometheusScrape.Get(url)).Sum(Packets, Tx(device)) > 0, Wait),
            $"no tx packets counted on {device}:\n{first?.Text}\n{describe()}");
        PrometheusScrape? second = null;
        Assert.True(PeerEnvironment.Eventually(() => (second = PrometheusScrape.Get(url)).Sum(Packets, Tx(device)) > first!.Sum(Packets, Tx(device)), Wait),
            $"tx packets did not move between two scrapes:\n{second?.Text}\n{describe()}");
        return (first!, second!);
    }

    private void CheckPromtool(PrometheusScrape s)
    {
        var (code, text) = s.Check();
        Assert.True(code == 0, $"promtool check metrics failed ({code}): {text}\n{s.Text}");
        output.WriteLine($"promtool check metrics: ok ({s.Samples.Count} samples)");
    }

    private static void Cli(string control, params string[] args)
    {
        var (code, text) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["--control", control, .. args], TimeSpan.FromSeconds(240));
        Assert.True(code == 0, $"ifcvf {string.Join(' ', args)} failed ({code}): {text}");
    }
}
