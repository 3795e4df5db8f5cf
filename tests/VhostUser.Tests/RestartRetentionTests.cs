using IfcVdpa.Interop.Primitives;
using Xunit.Abstractions;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// Front-ends reconnect thousands of times (QEMU and DPDK restarts): a session must leave nothing
/// behind in the back-end once it is gone. Full sessions (memory table mapped, rings running, a frame
/// each way, then the connection dropped without any teardown message, as a killed front-end does)
/// must not grow the process's memory mappings, threads, descriptors or live managed heap by anything
/// proportional to their number. Measured over two equal batches after a warm-up: the runtime's own
/// one-off growth (tiered JIT, PGO, thread pool) may still land in the first batch, a leak lands in both.
/// </summary>
[Collection("serial")]
public sealed class RestartRetentionTests(ITestOutputHelper output) : IDisposable
{
    private const int WarmUp = 30;
    private const int Batch = 150;

    private readonly string _dir = Directory.CreateTempSubdirectory("vu-rr").FullName;
    private readonly RealDevice _dev = new();
    private long _logLines;

    private string SocketPath => Path.Combine(_dir, "vhost.sock");

    public void Dispose()
    {
        _dev.Dispose();
        Directory.Delete(_dir, true);
    }

    private readonly record struct Usage(int Mappings, int Threads, int Fds, long LiveManagedBytes)
    {
        public override string ToString() => $"{Mappings} mappings, {Threads} threads, {Fds} fds, {LiveManagedBytes} live managed bytes";
    }

    private static Usage Measure()
    {
        // Closed sessions' SafeHandles and sockets are finalizable: collect, finalize, then a full compacting collection.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        long live = 0;
        foreach (var g in GC.GetGCMemoryInfo(GCKind.FullBlocking).GenerationInfo)
        {
            live += g.SizeAfterBytes - g.FragmentationAfterBytes;
        }
        return new Usage(
            File.ReadAllLines("/proc/self/maps").Length,
            Directory.GetDirectories("/proc/self/task").Length,
            Directory.GetFiles("/proc/self/fd").Length,
            live);
    }

    private static void OneSession(VhostUserBackend be, string socket, byte seed)
    {
        using (var mem = new GuestMemoryFixture())
        using (var fe = new TestFrontEnd(UnixSocket.Connect(socket)))
        using (var net = new VirtioNetFrontEnd(fe, mem))
        {
            net.Start();
            var f = VirtioNetFrontEnd.Frame(64, seed);
            net.Send(1, f);
            Assert.Equal(f, net.Receive(0, 1));
            // leaving the block closes the socket with the rings running: no GET_VRING_BASE, no RESET
        }
        Assert.True(Wait.Until(() => be.Session is null), "the back-end did not end the session");
    }

    [Fact]
    public void ManySessionsLeaveNoMappingsThreadsDescriptorsOrHeapBehind()
    {
        using var be = new VhostUserBackend(_dev.Adapter, new VhostUserBackendOptions
        {
            SocketPath = SocketPath,
            // counted, not kept: the test's own log must not be what grows
            Session = new VhostUserSessionOptions { Log = _ => Interlocked.Increment(ref _logLines), PayloadTimeoutMs = 2000, Name = "rr" },
        });
        be.Start();
        int n = 0;
        void Run(int count)
        {
            for (int i = 0; i < count; i++, n++)
            {
                OneSession(be, SocketPath, (byte)n);
            }
        }
        Run(WarmUp);
        var a = Measure();
        Run(Batch);
        var b = Measure();
        Run(Batch);
        var c = Measure();
        output.WriteLine($"after {WarmUp} sessions: {a}");
        output.WriteLine($"after {WarmUp + Batch} sessions: {b}");
        output.WriteLine($"after {WarmUp + (2 * Batch)} sessions: {c} ({Interlocked.Read(ref _logLines)} log lines)");
        Assert.Equal(WarmUp + (2 * Batch), be.Connections);
        Assert.Equal(0, _dev.Vf.DmaMapCount);
        Assert.Equal(0, _dev.Adapter.DmaMapCount);
        // Slack for the runtime (a JIT code page, a thread-pool thread), far below one item per session.
        Assert.True(c.Mappings <= b.Mappings + 4, $"memory mappings grew: {b} -> {c}");
        Assert.True(c.Threads <= b.Threads + 2, $"threads grew: {b} -> {c}");
        Assert.True(c.Fds <= b.Fds + 2, $"descriptors grew: {b} -> {c}");
        // A retained session (its rings, lists, buffers) is kilobytes; 256 bytes each would already fail.
        Assert.True(c.LiveManagedBytes - b.LiveManagedBytes < Batch * 256L, $"the live managed heap grew: {b} -> {c}");
    }
}
