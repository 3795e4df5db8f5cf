using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using IfcVdpa.Daemon;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>
/// `ifcvf serve` and `ifcvf daemon` as host services, with the real CLI as a process: socket
/// owner/group/mode for serve (the rules of `vhost add`), sd_notify READY/STOPPING from serve (a
/// test-side datagram socket stands in for systemd's $NOTIFY_SOCKET), and the log options of both.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ServeServiceTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"ifcvf-svc-{Guid.NewGuid():N}"[..26]);
    private readonly Socket _notify = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);

    public ServeServiceTests()
    {
        Directory.CreateDirectory(_dir);
        NotifyPath = Path.Combine(_dir, "notify.sock");
        _notify.Bind(new UnixDomainSocketEndPoint(NotifyPath));
    }

    private string NotifyPath { get; }

    private Dictionary<string, string> Env => new() { [SystemdNotify.EnvVar] = NotifyPath };

    private string ReceiveNotify(TimeSpan timeout)
    {
        _notify.ReceiveTimeout = (int)timeout.TotalMilliseconds;
        var buf = new byte[4096];
        int n = _notify.Receive(buf);
        return Encoding.UTF8.GetString(buf, 0, n);
    }

    private static string Stat(string path)
    {
        using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("stat", ["-c", "%a %u %g %F", path]) { RedirectStandardOutput = true })!;
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return o.Trim();
    }

    /// <summary>Every line parsed as a JSON object (a line that is not one fails the test).</summary>
    private static List<JsonElement> JsonLines(string text) =>
        [.. text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l =>
        {
            try
            {
                using var d = JsonDocument.Parse(l);
                Assert.Equal(JsonValueKind.Object, d.RootElement.ValueKind);
                return d.RootElement.Clone();
            }
            catch (JsonException e)
            {
                throw new Xunit.Sdk.XunitException($"not a JSON line ({e.Message}): {l}");
            }
        })];

    [Fact]
    public void ServeSetsTheSocketsGroupAndModeNotifiesReadyAndStoppingAndLogsJson()
    {
        using var serve = DaemonProcess.Serve(Env, "--backend", "loopback", "--owner", "4320", "--group", "4321", "--mode", "0660",
            "--log-format", "json", "--log-level", "debug");
        string ready = ReceiveNotify(TimeSpan.FromSeconds(60));
        Assert.True(File.Exists(serve.Socket), "READY=1 came before the socket listened");
        Assert.Equal(["READY=1", $"MAINPID={serve.Pid}", $"STATUS=serving vdpa0 on {serve.Socket}"], ready.Split('\n'));
        Assert.Equal("660 4320 4321 socket", Stat(serve.Socket));

        Assert.Equal(0, serve.Stop());
        Assert.Equal("STOPPING=1", ReceiveNotify(TimeSpan.FromSeconds(30)));
        Assert.False(File.Exists(serve.Socket));

        var lines = JsonLines(serve.Log);
        Assert.All(lines, l => Assert.Equal(["time", "level", "msg"], l.EnumerateObject().Take(3).Select(p => p.Name)));
        Assert.Contains(lines, l => l.GetProperty("msg").GetString()!.Contains("listening on " + serve.Socket + " (mode 660, owner 4320, group 4321)", StringComparison.Ordinal));
        var notified = lines.Where(l => l.GetProperty("msg").GetString() == "service manager notified").ToList();
        Assert.Equal(["READY=1", "STOPPING=1"], notified.Select(l => l.GetProperty("state").GetString()));
        Assert.All(notified, l => Assert.Equal(NotifyPath, l.GetProperty("notify_socket").GetString()));
    }

    [Fact]
    public void ServeDefaultsToARootOnlySocketWithoutNotifySocket()
    {
        using var serve = DaemonProcess.Serve(null, "--backend", "loopback", "--log-level", "warn");
        Assert.Equal("600 0 0 socket", Stat(serve.Socket));
        Assert.Equal(0, serve.Stop());
        Assert.Equal("", serve.Log); // info lines (serving, stopped) dropped at warn; no notification without $NOTIFY_SOCKET
        _notify.Blocking = false;
        Assert.Equal(0, _notify.Available);
    }

    [Theory]
    [InlineData(new[] { "--mode", "0666" }, "mode 0666 is world-writable")]
    [InlineData(new[] { "--mode", "0602" }, "mode 0602 is world-writable")]
    [InlineData(new[] { "--socket-mode", "0777" }, "mode 0777 is world-writable")]
    [InlineData(new[] { "--mode", "rw" }, "mode must be octal")]
    [InlineData(new[] { "--group", "no-such-group-x" }, "group \"no-such-group-x\" not found in /etc/group")]
    [InlineData(new[] { "--owner", "no-such-user-x" }, "owner \"no-such-user-x\" not found in /etc/passwd")]
    [InlineData(new[] { "--client", "--mode", "0660" }, "not with --client")]
    [InlineData(new[] { "--log-format", "xml" }, "--log-format must be logfmt or json")]
    [InlineData(new[] { "--log-level", "trace" }, "--log-level must be error, warn, info or debug")]
    public void ServeRefusesBadAccessAndLogOptionsWithOneLine(string[] args, string message)
    {
        string socket = Path.Combine(_dir, "s.sock");
        var (exit, stdout, stderr) = DaemonProcess.RunCli(["serve", "--socket", socket, "--backend", "loopback", .. args], env: Env);
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);
        Assert.Contains(message, Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)), StringComparison.Ordinal);
        Assert.False(File.Exists(socket));
        _notify.Blocking = false;
        Assert.Equal(0, _notify.Available); // never READY
    }

    [Fact]
    public void DaemonLogsJsonLinesAtTheChosenLevel()
    {
        using (var d = new DaemonProcess(Path.Combine(_dir, "d"), env: null, "--log-format", "json", "--log-level", "debug"))
        {
            Assert.Equal(0, d.Cli("sim", "add").Exit);
            Assert.Equal(1, d.Cli("dev", "del", "nope").Exit);
            Assert.Equal(0, d.Stop());
            var lines = JsonLines(d.Log);
            Assert.All(lines, l => Assert.Equal(["time", "level", "msg"], l.EnumerateObject().Take(3).Select(p => p.Name)));
            var served = lines.First(l => l.GetProperty("msg").GetString() == "control request served");
            Assert.Equal("debug", served.GetProperty("level").GetString());
            Assert.Equal("sim add", served.GetProperty("cmd").GetString());
            Assert.Equal(JsonValueKind.Number, served.GetProperty("peer_uid").ValueKind);
            Assert.Contains(lines, l => l.GetProperty("msg").GetString() == "control request refused" && l.GetProperty("level").GetString() == "info");
            Assert.Contains(lines, l => l.GetProperty("msg").GetString() == "software VF added" && l.GetProperty("mgmtdev").GetString() == "sim/ifcvf0");
        }
        using (var d = new DaemonProcess(Path.Combine(_dir, "w"), env: null, "--log-level", "warn"))
        {
            Assert.Equal(0, d.Cli("sim", "add").Exit);
            Assert.Equal(0, d.Stop());
            Assert.Equal("", d.Log); // everything was info or debug
        }
        var (exit, _, err) = DaemonProcess.RunCli(["daemon", "--control", Path.Combine(_dir, "x.sock"), "--log-format", "yaml"]);
        Assert.Equal(1, exit);
        Assert.Equal("ifcvf: --log-format must be logfmt or json, not \"yaml\"", err.Trim());
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
