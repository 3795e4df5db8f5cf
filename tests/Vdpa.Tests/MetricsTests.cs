using System.Net;
using System.Net.Sockets;
using IfcVdpa.Daemon.Metrics;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>`--metrics [ADDR:]PORT`: what it accepts, and the clear one-line refusals of the real CLI.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class MetricsOptionTests
{
    [Theory]
    [InlineData("9464", "127.0.0.1", 9464)]
    [InlineData("127.0.0.1:9464", "127.0.0.1", 9464)]
    [InlineData("0.0.0.0:80", "0.0.0.0", 80)]
    [InlineData("[::1]:9464", "::1", 9464)]
    [InlineData("localhost:1", "localhost", 1)]
    public void ParseAcceptsPortsAndAddresses(string spec, string host, int port) =>
        Assert.Equal((host, port), MetricsEndpoint.Parse(spec));

    [Theory]
    [InlineData("0")]
    [InlineData("65536")]
    [InlineData("127.0.0.1:")]
    [InlineData("1.2.3:80")]
    [InlineData("::1:9464")]
    [InlineData("[127.0.0.1]:80")]
    [InlineData("example.org:80")]
    [InlineData("-1")]
    public void ParseRefusesBadSpecs(string spec) =>
        Assert.StartsWith($"--metrics {spec}:", Assert.Throws<FormatException>(() => MetricsEndpoint.Parse(spec)).Message, StringComparison.Ordinal);

    [Fact]
    public void DaemonRefusesABadAddressAndABusyPortWithoutStarting()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"ifcvf-metrics-{Guid.NewGuid():N}"[..30]);
        Directory.CreateDirectory(dir);
        string control = Path.Combine(dir, "ctl.sock");
        try
        {
            var (exit, _, err) = DaemonProcess.RunCli(["daemon", "--control", control, "--metrics", "1.2.3:80"]);
            Assert.Equal(1, exit);
            Assert.Contains("ifcvf: --metrics 1.2.3:80: \"1.2.3\" is not an IP address", err, StringComparison.Ordinal);

            using var busy = new TcpListener(IPAddress.Loopback, 0);
            busy.Start();
            int port = ((IPEndPoint)busy.LocalEndpoint).Port;
            (exit, _, err) = DaemonProcess.RunCli(["daemon", "--control", control, "--metrics", $"{port}"]);
            Assert.Equal(1, exit);
            Assert.Contains($"cannot serve metrics on 127.0.0.1:{port}", err, StringComparison.Ordinal);
            Assert.False(File.Exists(control), "a daemon that did not start left its control socket");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}

/// <summary>The instruments themselves, read in-process with a <see cref="System.Diagnostics.Metrics.MeterListener"/>.</summary>
public class MeterTests
{
    [Fact]
    public void InstrumentsReadTheDeviceCountersAndNeedsResetThroughTheDriver()
    {
        using var vf = new IfcVdpa.IfcvfModel.SoftIfcVf(new IfcVdpa.IfcvfModel.SoftIfcVfOptions { QueuePairs = 1 });
        using var a = IfcVdpa.Ifcvf.IfcvfAdapter.Probe(vf);
        using var meter = new IfcvfMeter(new MetricsSources { Devices = () => [a], VhostConnections = () => (7, 1) });
        AdapterTests.BringUp(a, AdapterTests.BaseFeatures);
        a.KickVq(1);
        a.KickVq(1);
        vf.RaiseNeedsReset("test: a ring error");
        var seen = Collect();
        Assert.Equal(1, seen[("ifcvf.device.needs_reset", "device=vdpa0")]);
        Assert.Equal(2, seen[("ifcvf.queue.kicks", "device=vdpa0,queue=1,queue_type=tx")]);
        Assert.Equal(0, seen[("ifcvf.queue.kicks", "device=vdpa0,queue=2,queue_type=control_vq")]);
        Assert.Equal(1, seen[("ifcvf.devices", "")]);
        Assert.Equal(7, seen[("ifcvf.vhost.connections", "")]);
        Assert.False(seen.ContainsKey(("ifcvf.control.requests", "")), "serve has no control socket: no such instrument");
        a.Reset(); // clears NEEDS_RESET, not its count
        Assert.Equal(1, Collect()[("ifcvf.device.needs_reset", "device=vdpa0")]);
    }

    /// <summary>A block VF's queues are request queues: the metrics say `req`, as `dev vstats show` does, never rx/tx.</summary>
    [Fact]
    public void BlockQueuesAreLabelledReqLikeVstats()
    {
        using var vf = IfcVdpa.IfcvfModel.SoftVf.CreateBlock(IfcVdpa.IfcvfModel.Backends.Blk.BlkBackend.Memory(1 << 20), 2, readOnly: false, 512, "sim:00:01.0",
            new IfcVdpa.IfcvfModel.Datapath.EngineOptions());
        using var a = IfcVdpa.Ifcvf.IfcvfAdapter.Probe(vf.Function, new IfcVdpa.Ifcvf.IfcvfAdapterOptions { Name = "blk0" });
        using var meter = new IfcvfMeter(new MetricsSources { Devices = () => [a], VhostConnections = () => (0, 0) });
        var seen = Collect();
        Assert.Equal(0, seen[("ifcvf.queue.kicks", "device=blk0,queue=0,queue_type=req")]);
        Assert.Equal(0, seen[("ifcvf.queue.kicks", "device=blk0,queue=1,queue_type=req")]);
        Assert.DoesNotContain(seen.Keys, k => k.Item2.Contains("device=blk0", StringComparison.Ordinal) && !k.Item2.Contains("queue_type=req", StringComparison.Ordinal) && k.Item2.Contains("queue=", StringComparison.Ordinal));
        Assert.Equal("req", IfcVdpa.Daemon.ControlCommands.QueueType(a, 1));
    }

    private static Dictionary<(string, string), long> Collect()
    {
        var seen = new Dictionary<(string, string), long>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (i, l) =>
        {
            if (i.Meter.Name == IfcvfMeter.MeterName)
            {
                l.EnableMeasurementEvents(i);
            }
        };
        listener.SetMeasurementEventCallback<long>((i, v, tags, _) =>
            seen[(i.Name, string.Join(',', tags.ToArray().Select(t => $"{t.Key}={t.Value}")))] = v);
        listener.Start();
        listener.RecordObservableInstruments();
        return seen;
    }
}

/// <summary>`vhost add ... owner/group/mode`: who may connect to the server socket (libvirt's QEMU user).</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class VhostSocketAccessTests
{
    [Fact]
    public void VhostAddSetsGroupAndModeAndRefusesWorldWritableAndUnknownNames()
    {
        using var d = new DaemonProcess();
        Assert.Equal(0, d.Cli("sim", "add", "count", "2").Exit);
        Assert.Equal(0, d.Cli("dev", "add", "name", "a", "mgmtdev", "sim/ifcvf0").Exit);
        Assert.Equal(0, d.Cli("dev", "add", "name", "b", "mgmtdev", "sim/ifcvf1").Exit);
        string s = Path.Combine(d.Dir, "a.sock");
        var r = d.Cli("vhost", "add", "a", "socket", s, "owner", "4320", "group", "4321", "mode", "0660");
        Assert.True(r.Exit == 0, r.Err);
        var (_, stat) = Run("stat", "-c", "%a %u %g %F", s);
        Assert.Equal("660 4320 4321 socket", stat.Trim());
        Assert.Contains("mode 0660 owner 4320 group 4321", d.Cli("dev", "show", "a").Out, StringComparison.Ordinal);

        string s2 = Path.Combine(d.Dir, "b.sock");
        r = d.Cli("vhost", "add", "b", "socket", s2, "mode", "0666");
        Assert.Equal(1, r.Exit);
        Assert.Contains("mode 0666 is world-writable", r.Err, StringComparison.Ordinal);
        r = d.Cli("vhost", "add", "b", "socket", s2, "group", "no-such-group-x");
        Assert.Equal(1, r.Exit);
        Assert.Contains("group \"no-such-group-x\" not found in /etc/group", r.Err, StringComparison.Ordinal);
        r = d.Cli("vhost", "add", "b", "socket", s2, "client", "mode", "0660");
        Assert.Equal(1, r.Exit);
        Assert.Contains("not with client", r.Err, StringComparison.Ordinal);
        Assert.False(File.Exists(s2));
        r = d.Cli("vhost", "add", "b", "socket", s2);
        Assert.Equal(0, r.Exit);
        Assert.Equal("600 0 0 socket", Run("stat", "-c", "%a %u %g %F", s2).Out.Trim()); // the default: root only
    }

    private static (int Exit, string Out) Run(string file, params string[] args)
    {
        using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo(file, args) { RedirectStandardOutput = true })!;
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o);
    }
}
