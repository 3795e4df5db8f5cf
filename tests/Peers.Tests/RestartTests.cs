using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// One back-end, twenty front-ends in a row, each killed with SIGKILL while forwarding (no clean
/// vhost-user shutdown): every one must get traffic through, and the back-end must not grow in
/// file descriptors or memory (each front-end maps 1 GiB of memfd into the back-end).
/// </summary>
public class RestartTests(ITestOutputHelper output)
{
    private const int Rounds = 20;

    [Fact]
    public void FrontEndKilledAndRestarted20Times()
    {
        string dir = PeerEnvironment.NewRunDir();
        string socket = Path.Combine(dir, "vhost.sock");
        var o = new FrontEndOptions { Mode = "io", Queues = 1 };
        try
        {
            using var backend = VhostBackends.StartLoopback(socket, 1);
            var fds = new int[Rounds];
            var rss = new long[Rounds];
            var vsz = new long[Rounds];
            for (int i = 0; i < Rounds; i++)
            {
                using (var fe = TestPmd.StartFrontEnd(socket, o))
                {
                    try
                    {
                        fe.WaitReady();
                        backend.FrontEndReady();
                        fe.StartForwarding(txFirst: true);
                        PortCounters c = fe.ReadCounters();
                        Assert.True(PeerEnvironment.Eventually(() => (c = fe.ReadCounters()).RxPackets > 1000, TimeSpan.FromSeconds(10)),
                            $"round {i + 1}: the front-end's io loop did not run ({c})\n{fe.Describe()}\n{backend.Describe()}");
                    }
                    catch (InvalidOperationException e)
                    {
                        throw new InvalidOperationException($"round {i + 1}: {e.Message}\n{backend.Describe()}", e);
                    }
                    fe.Process.KillTree(); // SIGKILL: the back-end only sees the socket close
                }
                int round = i + 1;
                Assert.True(PeerEnvironment.Eventually(() => BackendIdle(backend, round), TimeSpan.FromSeconds(10)),
                    $"round {i + 1}: the back-end did not notice the front-end's death\n{backend.Describe()}");
                fds[i] = PeerEnvironment.FdCount(backend.Pid);
                rss[i] = PeerEnvironment.StatusKb(backend.Pid, "VmRSS");
                vsz[i] = PeerEnvironment.StatusKb(backend.Pid, "VmSize");
                output.WriteLine($"round {i + 1}: fds {fds[i]}, VmRSS {rss[i]} kB, VmSize {vsz[i]} kB");
            }
            // a baseline after a few rounds (lazy initialisation, JIT, thread pools), then no growth
            const int Base = 2;
            Assert.True(fds[^1] <= fds[Base], $"fd count grew: {string.Join(' ', fds)}");
            Assert.True(vsz[^1] - vsz[Base] < 512 * 1024, $"VmSize grew by {vsz[^1] - vsz[Base]} kB: {string.Join(' ', vsz)}");
            Assert.True(rss[^1] - rss[Base] < 48 * 1024, $"VmRSS grew by {rss[^1] - rss[Base]} kB: {string.Join(' ', rss)}");
            if (backend is ServeBackend serve)
            {
                // Ctrl-C: a clean exit that removes the socket
                Assert.True(serve.Interrupt(TimeSpan.FromSeconds(15)), "serve did not exit on SIGINT\n" + serve.Describe());
                Assert.True(serve.Process.ExitCode == 0, $"serve exited with {serve.Process.ExitCode} on SIGINT\n{serve.Describe()}");
                Assert.False(File.Exists(socket), "serve left its socket behind");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// serve reports "connected": false once the session is gone; the DPDK reference logs "vhost peer closed"
    /// once per front-end (<paramref name="round"/> of them by now).
    /// </summary>
    private static bool BackendIdle(IVhostBackend backend, int round)
    {
        switch (backend)
        {
            case ServeBackend s:
                string last = s.Process.Transcript.Split('\n').LastOrDefault(l => l.StartsWith("{\"", StringComparison.Ordinal) && l.TrimEnd().EndsWith('}')) ?? "";
                return last.Contains("\"connected\":false", StringComparison.Ordinal);
            case DpdkVhostBackend d:
                return d.ClosedSessions >= round;
            default:
                throw new InvalidOperationException($"no idle check for {backend.GetType().Name}");
        }
    }
}
