using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using IfcVdpa.Daemon;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>
/// `ifcvf daemon --config FILE` (the setup brought back at every start) and sd_notify readiness, with the
/// real CLI as a process and a test-side datagram socket standing in for systemd's $NOTIFY_SOCKET.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class DaemonConfigTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"ifcvf-cfg-{Guid.NewGuid():N}"[..26]);
    private readonly Socket _notify = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);

    public DaemonConfigTests()
    {
        Directory.CreateDirectory(_dir);
        NotifyPath = Path.Combine(_dir, "notify.sock");
        _notify.Bind(new UnixDomainSocketEndPoint(NotifyPath));
    }

    private string NotifyPath { get; }

    private Dictionary<string, string> Env => new() { [SystemdNotify.EnvVar] = NotifyPath };

    private string Config(string text)
    {
        string path = Path.Combine(_dir, "ifcvf.conf");
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>The next sd_notify datagram (bounded wait: the daemon sends it or the test fails).</summary>
    private string ReceiveNotify(TimeSpan timeout)
    {
        _notify.ReceiveTimeout = (int)timeout.TotalMilliseconds;
        var buf = new byte[4096];
        int n = _notify.Receive(buf);
        return Encoding.UTF8.GetString(buf, 0, n);
    }

    [Fact]
    public void DaemonStartsFromItsConfigAndNotifiesReadinessOnceListening()
    {
        string tap = $"ifct{Environment.ProcessId % 10000}{Random.Shared.Next(100)}";
        string vhost = Path.Combine(_dir, "vm0.sock");
        string config = Config($"""
            # two software VFs back to back: one for a VM, one as the host's own NIC
            sim add count 2 backend pair   # trailing comment
            dev add name vm0 mgmtdev sim/ifcvf0 mac 52:54:00:00:00:10

            dev add name host0 mgmtdev sim/ifcvf1 max_vqp 1
            	vhost add vm0 socket {vhost}
            dev attach host0 virtio tap {tap}
            """);
        using var d = new DaemonProcess(Path.Combine(_dir, "d"), Env, "--config", config);
        string ready = ReceiveNotify(TimeSpan.FromSeconds(60));
        Assert.True(File.Exists(d.Socket), "READY=1 came before the control socket listened");
        Assert.Equal(["READY=1", $"MAINPID={d.Pid}", $"STATUS=control socket {d.Socket}"], ready.Split('\n'));

        var r = d.Cli("-j", "dev", "show");
        Assert.True(r.Exit == 0, r.Err);
        using (var doc = JsonDocument.Parse(r.Out))
        {
            var dev = doc.RootElement.GetProperty("dev");
            Assert.Equal(["host0", "vm0"], dev.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal));
        }
        r = d.Cli("dev", "show");
        Assert.Contains($"consumer vhost socket {vhost}", r.Out, StringComparison.Ordinal);
        Assert.Contains($"consumer virtio tap {tap}", r.Out, StringComparison.Ordinal);
        r = d.Cli("-j", "dev", "config", "show", "vm0");
        Assert.Contains("52:54:00:00:00:10", r.Out, StringComparison.Ordinal);
        Assert.True(File.Exists(vhost), "vhost-user socket of the config not created");
        Assert.True(Directory.Exists($"/sys/class/net/{tap}"), $"TAP {tap} of the config not created");
        Assert.Contains("config line applied", d.Log, StringComparison.Ordinal);

        Assert.Equal(0, d.Stop());
        Assert.Equal("STOPPING=1", ReceiveNotify(TimeSpan.FromSeconds(30)));
        Assert.False(File.Exists(vhost));
    }

    public static TheoryData<string, int, string> BadConfigs() => new()
    {
        { "sim add\nfrobnicate now\n", 2, "\"frobnicate now\" does not belong in a config file" },
        { "sim add\n\n# comment\ndev add name x\n", 4, "dev add needs \"mgmtdev MGMTDEV\"" },
        { "dev show\n", 1, "\"dev show\" does not belong in a config file" },
        { "sim add count two\n", 1, "\"count\" must be a number, not \"two\"" },
        { "vfio not-an-address\n", 1, "vfio: " },
        { "vfio 0000:00:01.0 generic extra\n", 1, "vfio needs a PCI address" },
        { "sim add count 0\n", 1, "argument \"count\" must be in 1..64, not 0" },
        // refused by the daemon after three lines took effect: they are undone
        { "sim add count 1\ndev add name vm0 mgmtdev sim/ifcvf0\nvhost add vm0 socket {dir}/vm0.sock\ndev add name vm1 mgmtdev sim/ifcvf7\n", 4,
          "management device \"sim/ifcvf7\" not found" },
        { "sim add count 1\ndev add name vm0 mgmtdev sim/ifcvf0\nvhost add vm0 socket {dir}/vm0.sock\nvhost add vm0 socket {dir}/again.sock\n", 4,
          "already attached to a vhost consumer" },
    };

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void ABadLineIsNamedAndNothingIsLeftRunning(string text, int line, string reason)
    {
        string config = Config(text.Replace("{dir}", _dir, StringComparison.Ordinal));
        string control = Path.Combine(_dir, "ctl.sock");
        var (exit, stdout, stderr) = DaemonProcess.RunCli(["daemon", "--control", control, "--config", config], env: Env);
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);
        string error = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("ifcvf: ", StringComparison.Ordinal));
        Assert.StartsWith($"ifcvf: {config}:{line}: ", error, StringComparison.Ordinal);
        Assert.Contains(reason, error, StringComparison.Ordinal);
        Assert.False(File.Exists(control), "control socket left behind");
        Assert.False(File.Exists(Path.Combine(_dir, "vm0.sock")), "a vhost-user socket of an earlier line was left behind");
        // The process has exited: a READY=1 it had sent would be queued now.
        _notify.Blocking = false;
        Assert.Equal(0, _notify.Available);
    }

    [Fact]
    public void AMissingConfigFileIsOneLine()
    {
        string missing = Path.Combine(_dir, "none.conf");
        var (exit, _, stderr) = DaemonProcess.RunCli(["daemon", "--control", Path.Combine(_dir, "ctl.sock"), "--config", missing]);
        Assert.Equal(1, exit);
        Assert.StartsWith($"ifcvf: config {missing}: ", Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)), StringComparison.Ordinal);
    }

    public void Dispose()
    {
        _notify.Dispose();
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
            // best effort
        }
    }
}
