using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using IfcVdpa.Daemon;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>The control socket treats every request as hostile: bounded, validated, and the daemon keeps serving.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ControlServerTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"ifcvf-cs-{Guid.NewGuid():N}"[..30]);
    private readonly DeviceRegistry _registry;
    private readonly ControlServer _server;
    private readonly StringWriter _log = new();

    public ControlServerTests()
    {
        var log = new DaemonLog(TextWriter.Synchronized(_log));
        _registry = new DeviceRegistry(log);
        _server = new ControlServer(new ControlServerOptions { Path = Path.Combine(_dir, "ctl.sock"), ReadTimeout = TimeSpan.FromMilliseconds(300) }, log);
        ControlCommands.Register(_server, _registry);
        _server.Start();
    }

    public void Dispose()
    {
        _server.Dispose();
        _registry.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private string Raw(byte[] request, bool shutdownWrite = true)
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        s.Connect(new UnixDomainSocketEndPoint(_server.Path));
        s.ReceiveTimeout = 5000;
        if (request.Length > 0)
        {
            try
            {
                s.Send(request);
            }
            catch (SocketException)
            {
                // the server may close early on an oversized request; its reply is still readable
            }
        }
        if (shutdownWrite)
        {
            s.Shutdown(SocketShutdown.Send);
        }
        var ms = new MemoryStream();
        var buf = new byte[4096];
        int n;
        try
        {
            while ((n = s.Receive(buf)) > 0)
            {
                ms.Write(buf, 0, n);
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    private string Error(string request)
    {
        string reply = Raw(Encoding.UTF8.GetBytes(request + "\n"));
        using var doc = JsonDocument.Parse(reply);
        Assert.False(doc.RootElement.GetProperty("ok").GetBoolean());
        return doc.RootElement.GetProperty("error").GetString()!;
    }

    private void AssertStillServes()
    {
        var data = ControlClient.Request(_server.Path, "ping");
        Assert.Equal(Environment.ProcessId, data.GetProperty("pid").GetInt32());
    }

    [Theory]
    [InlineData("this is not json", "not valid JSON")]
    [InlineData("[1,2]", "must be a JSON object")]
    [InlineData("{}", "needs \"cmd\"")]
    [InlineData("{\"cmd\":5}", "unexpected or repeated field \"cmd\"")]
    [InlineData("{\"cmd\":\"ping\",\"cmd\":\"ping\"}", "repeated field")]
    [InlineData("{\"cmd\":\"ping\",\"x\":1}", "unexpected or repeated field \"x\"")]
    [InlineData("{\"cmd\":\"reboot\"}", "unknown command \"reboot\"")]
    [InlineData("{\"cmd\":\"ping\",\"args\":[]}", "\"args\" must be an object")]
    [InlineData("{\"cmd\":\"sim add\",\"args\":{\"count\":\"2\"}}", "\"count\" must be an integer")]
    [InlineData("{\"cmd\":\"sim add\",\"args\":{\"count\":2.5}}", "\"count\" must be an integer")]
    [InlineData("{\"cmd\":\"sim add\",\"args\":{\"count\":100000}}", "\"count\" must be in 1..64")]
    [InlineData("{\"cmd\":\"sim add\",\"args\":{\"count\":1,\"count\":2}}", "given twice")]
    [InlineData("{\"cmd\":\"sim add\",\"args\":{\"bogus\":1}}", "unknown argument \"bogus\"")]
    [InlineData("{\"cmd\":\"sim add\",\"args\":{\"mac\":\"00:11\"}}", "must be a MAC")]
    [InlineData("{\"cmd\":\"dev add\",\"args\":{\"mgmtdev\":\"sim/ifcvf0\"}}", "\"name\" is required")]
    [InlineData("{\"cmd\":\"dev add\",\"args\":{\"name\":\"a\\u0001b\",\"mgmtdev\":\"x\"}}", "control character")]
    [InlineData("{\"cmd\":\"dev add\",\"args\":{\"name\":\"vdpa0\",\"mgmtdev\":\"x\",\"device_features\":\"0xZZ\"}}", "must be a hex number")]
    [InlineData("{\"cmd\":\"dev show\",\"args\":{\"name\":\"nope\"}}", "vDPA device \"nope\" not found")]
    [InlineData("{\"cmd\":\"ping\",\"args\":{\"a\":[[[[[[[[[[1]]]]]]]]]]}}", "not valid JSON")]
    public void MalformedRequestsGetOneClearErrorAndTheDaemonKeepsServing(string request, string expected)
    {
        Assert.Contains(expected, Error(request), StringComparison.Ordinal);
        AssertStillServes();
        Assert.Empty(_registry.ManagementDevices);
    }

    [Fact]
    public void OversizedRequestIsRefusedWithoutReadingItAll()
    {
        var big = new byte[1024 * 1024];
        Array.Fill(big, (byte)' ');
        string reply = Raw(big, shutdownWrite: false);
        Assert.Contains("request larger than 65536 bytes", reply, StringComparison.Ordinal);
        AssertStillServes();
    }

    [Fact]
    public void SilentClientTimesOutAndOthersAreServedMeanwhile()
    {
        using var silent = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        silent.Connect(new UnixDomainSocketEndPoint(_server.Path));
        AssertStillServes();
        silent.ReceiveTimeout = 5000;
        var buf = new byte[1024];
        int n = silent.Receive(buf);
        Assert.Contains("not received within", Encoding.UTF8.GetString(buf, 0, n), StringComparison.Ordinal);
    }

    [Fact]
    public void EmptyRequestIsAnError()
    {
        Assert.Contains("empty request", Raw([]), StringComparison.Ordinal);
    }

    [Fact]
    public void ConcurrentClientsAreAllServed()
    {
        Parallel.For(0, 16, _ => ControlClient.Request(_server.Path, "sim add", w => w.WriteNumber("count", 1)));
        Assert.Equal(16, _registry.ManagementDevices.Select(m => m.Name).Distinct().Count());
    }

    [Fact]
    public void OtherSubsystemsCanAddCommands()
    {
        _server.Handle("example attach", (a, w) =>
        {
            string dev = a.RequiredString("dev");
            a.EnsureNoUnknown();
            w.WriteString("bound", _registry.FindDevice(dev)?.Name ?? "none");
        });
        Assert.Throws<ArgumentException>(() => _server.Handle("dev add", (_, _) => { }));
        ControlClient.Request(_server.Path, "sim add");
        ControlClient.Request(_server.Path, "dev add", w => { w.WriteString("name", "v0"); w.WriteString("mgmtdev", "sim/ifcvf0"); });
        var data = ControlClient.Request(_server.Path, "example attach", w => w.WriteString("dev", "v0"));
        Assert.Equal("v0", data.GetProperty("bound").GetString());
        var e = Assert.Throws<ControlRefusedException>(() => ControlClient.Request(_server.Path, "example attach"));
        Assert.Equal("argument \"dev\" is required", e.Message);
    }

    [Fact]
    public void StaleSocketIsReplacedButALiveOneIsNot()
    {
        var other = new ControlServer(new ControlServerOptions { Path = _server.Path }, new DaemonLog(TextWriter.Null));
        Assert.Contains("already listening", Assert.Throws<InvalidOperationException>(other.Start).Message, StringComparison.Ordinal);
        other.Dispose();
        AssertStillServes();

        string stale = Path.Combine(_dir, "stale.sock");
        using (var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            s.Bind(new UnixDomainSocketEndPoint(stale)); // bound, never listening: what a crashed daemon leaves
        }
        using var fresh = new ControlServer(new ControlServerOptions { Path = stale }, new DaemonLog(TextWriter.Null));
        fresh.Handle("ping", (a, w) => w.WriteBoolean("fresh", true));
        fresh.Start();
        Assert.True(ControlClient.Request(stale, "ping").GetProperty("fresh").GetBoolean());
    }

    [Fact]
    public void LogLinesQuoteHostileValues()
    {
        Error("{\"cmd\":\"dev del\",\"args\":{\"name\":\"x\\\" level=error msg=forged\"}}");
        string log = _log.ToString();
        Assert.All(log.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => Assert.StartsWith("time=", l, StringComparison.Ordinal));
        Assert.Contains("error=\"vDPA device \\\"x\\\" level=error msg=forged\\\" not found\"", log, StringComparison.Ordinal);
    }
}
