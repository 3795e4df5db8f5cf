using System.Globalization;
using IfcVdpa.Cli;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>`serve --cpu LIST`: the list syntax, CPUs outside the process's affinity, and the worker really pinned.</summary>
[Collection("serial")]
public sealed class CpuPinningTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vu-cpu").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static int[] Allowed => CpuAffinity.Allowed(Environment.ProcessId) ?? throw new InvalidOperationException("sched_getaffinity failed");

    /// <summary>A CPU this process may not use: the first one above its highest allowed CPU.</summary>
    private static int Forbidden => Allowed[^1] + 1;

    [Theory]
    [InlineData("1", new[] { 1 })]
    [InlineData("0,2", new[] { 0, 2 })]
    [InlineData("0-3", new[] { 0, 1, 2, 3 })]
    [InlineData("3,1-2,1", new[] { 3, 1, 2 })] // order kept (workers take CPUs in this order), duplicates dropped
    [InlineData(" 5 , 7 ", new[] { 5, 7 })]
    [InlineData("1023", new[] { 1023 })]
    public void ListsParse(string text, int[] expected) => Assert.Equal(expected, CpuList.Parse(text));

    [Theory]
    [InlineData("")]
    [InlineData("x")]
    [InlineData("1-")]
    [InlineData("-1")]
    [InlineData("3-1")]
    [InlineData("1024")]
    [InlineData("1,,2")]
    [InlineData("+1")]
    [InlineData("0x1")]
    public void BadListsAreRefused(string text) => Assert.Throws<FormatException>(() => CpuList.Parse(text));

    [Fact]
    public void FormatFoldsRangesAndWorkersTakeCpusRoundRobin()
    {
        Assert.Equal("0-2,5,7-8", CpuList.Format([8, 0, 1, 2, 5, 7]));
        Assert.Null(CpuList.ForWorker(null, 0));
        Assert.Equal(3, CpuList.ForWorker([3, 1], 0));
        Assert.Equal(1, CpuList.ForWorker([3, 1], 1));
        Assert.Equal(3, CpuList.ForWorker([3, 1], 2));
    }

    [Fact]
    public void CpusOutsideTheProcessAffinityAreRefused()
    {
        CpuList.EnsureAllowed(Allowed); // every allowed CPU is fine
        var e = Assert.Throws<ArgumentException>(() => CpuList.EnsureAllowed([Allowed[0], Forbidden]));
        Assert.Contains($"CPU {Forbidden} is not among the CPUs this process may run on", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ServeRefusesABadOrForbiddenCpuAtStart()
    {
        string sock = Path.Combine(_dir, "bad.sock");
        var ctx = new CliContext(false, TextWriter.Null, TextWriter.Null, null);
        var e = Assert.Throws<CliException>(() => ServeCommand.Run(ctx, ["--socket", sock, "--cpu", "1-x"]));
        Assert.Contains("--cpu", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<CliException>(() => ServeCommand.Run(ctx, ["--socket", sock, "--poll", "--cpu", Forbidden.ToString(CultureInfo.InvariantCulture)]));
        Assert.Contains("is not among the CPUs this process may run on", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<CliException>(() => ServeCommand.Run(ctx, ["--socket", sock, "--vfio", "0000:00:05.0", "--cpu", "0"]));
        Assert.Contains("--vfio", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(sock)); // refused before anything was created
    }

    [Fact]
    public void TheDatapathWorkerRunsOnTheCpuGiven()
    {
        int cpu = Allowed[^1]; // with 2+ CPUs an unpinned worker would show the whole set, not this one CPU
        string sock = Path.Combine(_dir, "pin.sock");
        using var cts = new CancellationTokenSource();
        int rc = -1;
        var err = new StringWriter();
        var t = new Thread(() => rc = ServeCommand.Run(new CliContext(false, TextWriter.Null, TextWriter.Synchronized(err), null),
            ["--socket", sock, "--backend", "loopback", "--poll", "--cpu", $"{cpu},{Allowed[0]}"], cts.Token));
        t.Start();
        Assert.True(Wait.Until(() => File.Exists(sock), 10000, 20));
        using (var mem = new GuestMemoryFixture())
        using (var fe = new TestFrontEnd(UnixSocket.Connect(sock)))
        using (var net = new VirtioNetFrontEnd(fe, mem))
        {
            net.Start();
            var f = VirtioNetFrontEnd.Frame(100, 1);
            net.Send(1, f);
            Assert.Equal(f, net.Receive(0, 1)); // the worker runs and has carried a frame
            var workers = WorkerThreads("vq-sim:00.0");
            Assert.Contains(workers, w => w.Allowed == cpu.ToString(CultureInfo.InvariantCulture) && w.LastCpu == cpu);
        }
        cts.Cancel();
        Assert.True(t.Join(10000));
        Assert.Equal(0, rc);
    }

    /// <summary>This process's threads named <paramref name="name"/>: Cpus_allowed_list and the CPU they last ran on (stat field 39).</summary>
    private static List<(string Allowed, int LastCpu)> WorkerThreads(string name)
    {
        var found = new List<(string, int)>();
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                if (File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n') != name)
                {
                    continue;
                }
                string allowed = File.ReadAllLines(Path.Combine(task, "status"))
                    .First(l => l.StartsWith("Cpus_allowed_list:", StringComparison.Ordinal))["Cpus_allowed_list:".Length..].Trim();
                string stat = File.ReadAllText(Path.Combine(task, "stat"));
                // fields after "(comm)" start at field 3 (state): field 39 is index 36
                string[] rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                found.Add((allowed, int.Parse(rest[36], CultureInfo.InvariantCulture)));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // the thread ended meanwhile
            }
        }
        return found;
    }
}
