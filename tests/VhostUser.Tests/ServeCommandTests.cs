using System.Text.Json;
using IfcVdpa.Cli;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>`ifcvf serve` in-process: a front-end connects, frames loop back, counters print, stop cleans up.</summary>
[Collection("serial")]
public sealed class ServeCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vu-serve").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private sealed class SyncWriter : StringWriter
    {
        private readonly Lock _lock = new();

        public override void WriteLine(string? value)
        {
            lock (_lock)
            {
                base.WriteLine(value);
            }
        }

        public string Text
        {
            get
            {
                lock (_lock)
                {
                    return ToString();
                }
            }
        }
    }

    private static bool WaitFor(Func<bool> cond, int timeoutMs = 10000) => Wait.Until(cond, timeoutMs, 20);

    [Fact]
    public void ServeCarriesFramesPrintsJsonCountersAndRemovesTheSocket()
    {
        string sock = Path.Combine(_dir, "serve.sock");
        var outW = new SyncWriter();
        var errW = new SyncWriter();
        using var cts = new CancellationTokenSource();
        int rc = -1;
        var t = new Thread(() => rc = ServeCommand.Run(new CliContext(true, outW, errW, null),
            ["--socket", sock, "--backend", "loopback", "--stats-period", "0.2", "--mac", "02:00:00:00:00:07"], cts.Token));
        t.Start();
        Assert.True(WaitFor(() => File.Exists(sock)), errW.Text);
        using (var mem = new GuestMemoryFixture())
        using (var fe = new TestFrontEnd(UnixSocket.Connect(sock)))
        using (var net = new VirtioNetFrontEnd(fe, mem))
        {
            net.Start();
            for (int i = 1; i <= 4; i++)
            {
                var f = VirtioNetFrontEnd.Frame(100, (byte)i);
                net.Send(1, f);
                Assert.Equal(f, net.Receive(0, (ushort)i));
            }
            // A JSON line shows TX packets counted on queue 1 while connected.
            Assert.True(WaitFor(() => outW.Text.Split('\n').Any(l => l.Contains("\"running\":true", StringComparison.Ordinal) && TxPackets(l) >= 4)), outW.Text);
        }
        Assert.True(WaitFor(() => errW.Text.Contains("accepting the next one", StringComparison.Ordinal)), errW.Text);
        cts.Cancel();
        Assert.True(t.Join(10000));
        Assert.Equal(0, rc);
        Assert.False(File.Exists(sock));
        Assert.Contains("front-end #1 connected", errW.Text, StringComparison.Ordinal);
        Assert.Contains("1 front-end connection(s) served", errW.Text, StringComparison.Ordinal);
    }

    private static long TxPackets(string jsonLine)
    {
        if (!jsonLine.StartsWith('{'))
        {
            return -1;
        }
        using var d = JsonDocument.Parse(jsonLine);
        return d.RootElement.GetProperty("queues")[1].GetProperty("packets").GetInt64();
    }

    [Theory]
    [InlineData(new[] { "--backend", "loopback" }, "needs --socket")]
    [InlineData(new[] { "--socket", "/tmp/x.sock", "--queues", "0" }, "--queues")]
    [InlineData(new[] { "--socket", "/tmp/x.sock", "--mac", "01:00:00:00:00:01" }, "not a unicast address")]
    [InlineData(new[] { "--socket", "/tmp/x.sock", "--backend", "bogus" }, "backend bogus")]
    [InlineData(new[] { "--socket", "/tmp/x.sock", "--socket-mode", "999" }, "octal")]
    [InlineData(new[] { "--socket", "/tmp/x.sock", "--frobnicate" }, "unknown argument")]
    public void BadArgumentsGiveOneClearError(string[] args, string fragment)
    {
        var e = Assert.Throws<CliException>(() => ServeCommand.Run(new CliContext(false, TextWriter.Null, TextWriter.Null, null), args));
        Assert.Contains(fragment, e.Message, StringComparison.Ordinal);
    }
}
