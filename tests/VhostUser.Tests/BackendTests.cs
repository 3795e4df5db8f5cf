using System.Collections.Concurrent;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Tests;

[CollectionDefinition("serial", DisableParallelization = true)]
public sealed class SerialCollection;

/// <summary>The socket life cycle: server and client mode, one front-end after another.</summary>
[Collection("serial")]
public sealed class BackendTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vu-be").FullName;
    private readonly ConcurrentQueue<string> _logs = new();
    private readonly RealDevice _dev = new();

    private string SocketPath => Path.Combine(_dir, "vhost.sock");

    private string LogText => string.Join('\n', _logs);

    public void Dispose()
    {
        _dev.Dispose();
        Directory.Delete(_dir, true);
    }

    private VhostUserBackend Backend(bool client = false) => new(_dev.Adapter, new VhostUserBackendOptions
    {
        SocketPath = SocketPath,
        Client = client,
        ReconnectDelay = TimeSpan.FromMilliseconds(50),
        Session = new VhostUserSessionOptions { Log = _logs.Enqueue, PayloadTimeoutMs = 500, Name = "be" },
    });

    private static bool WaitFor(Func<bool> cond, int timeoutMs = 5000) => Wait.Until(cond, timeoutMs);

    private void OneGoodSession(byte seed)
    {
        using var mem = new GuestMemoryFixture();
        using var fe = new TestFrontEnd(UnixSocket.Connect(SocketPath));
        using var net = new VirtioNetFrontEnd(fe, mem);
        net.Start();
        var f = VirtioNetFrontEnd.Frame(64, seed);
        net.Send(1, f);
        Assert.Equal(f, net.Receive(0, 1));
    }

    [Fact]
    public void ServerSocketIsPrivateAndRemovedOnStop()
    {
        using (var be = Backend())
        {
            be.Start();
            var st = FileStatus.OfPath(SocketPath);
            Assert.True(st!.Value.IsSocket);
            Assert.Equal(0x180u, st.Value.Mode & 0x1FF); // 0600
            be.Stop();
        }
        Assert.False(File.Exists(SocketPath));
    }

    [Fact]
    public void ServerKeepsServingAfterAHostileFrontEnd()
    {
        using var be = Backend();
        be.Start();
        using (var bad = new TestFrontEnd(UnixSocket.Connect(SocketPath)))
        {
            bad.SendRaw(2, 1, new byte[8], sizeField: 100_000);
            Assert.True(bad.WaitClosed());
        }
        OneGoodSession(1);
        Assert.True(WaitFor(() => be.Session is null));
        Assert.Equal(0, _dev.Vf.DmaMapCount);
        OneGoodSession(2);
        Assert.True(WaitFor(() => be.Connections == 3), LogText);
        Assert.Contains(_logs, l => l.Contains("exceeds", StringComparison.Ordinal));
    }

    [Fact]
    public void SecondConcurrentFrontEndIsRefused()
    {
        using var be = Backend();
        be.Start();
        using var first = new TestFrontEnd(UnixSocket.Connect(SocketPath));
        Assert.NotEqual(0UL, first.GetU64(VhostUserRequest.GET_FEATURES));
        using var second = new TestFrontEnd(UnixSocket.Connect(SocketPath));
        Assert.True(second.WaitClosed(), "a second front-end must be turned away");
        Assert.NotEqual(0UL, first.GetU64(VhostUserRequest.GET_FEATURES));
        Assert.Contains(_logs, l => l.Contains("refused a second front-end", StringComparison.Ordinal));
    }

    [Fact]
    public void ClientModeReconnectsAfterTheFrontEndGoes()
    {
        using var listener = UnixSocket.Listen(SocketPath, 0x180);
        using var be = Backend(client: true);
        be.Start();
        for (int round = 0; round < 3; round++)
        {
            using var conn = listener.Accept(5000);
            Assert.NotNull(conn);
            using var fe = new TestFrontEnd(conn);
            Assert.NotEqual(0UL, fe.GetU64(VhostUserRequest.GET_FEATURES));
        }
        Assert.True(WaitFor(() => be.Connections >= 3), LogText);
    }

    [Fact]
    public void ClientModeWaitsForAFrontEndThatIsNotThereYet()
    {
        using var be = Backend(client: true);
        be.Start();
        // It has tried (and logged that it waits) before the front-end exists: no connection counted.
        Assert.True(WaitFor(() => _logs.Any(l => l.Contains("waiting for a front-end", StringComparison.Ordinal))), LogText);
        Assert.Equal(0, be.Connections);
        using var listener = UnixSocket.Listen(SocketPath, 0x180);
        using var conn = listener.Accept(5000);
        Assert.NotNull(conn);
        using var fe = new TestFrontEnd(conn);
        Assert.Equal(VhostUserProtocolFeature.Supported | VhostUserProtocolFeature.Migration, fe.GetU64(VhostUserRequest.GET_PROTOCOL_FEATURES));
    }

    [Fact]
    public void TwentyRestartsLeakNoDescriptors()
    {
        using var be = Backend();
        be.Start();
        OneGoodSession(0); // warm up (threads, JIT, pools)
        Assert.True(WaitFor(() => be.Session is null));
        int before = Directory.GetFiles("/proc/self/fd").Length;
        for (int i = 1; i <= 20; i++)
        {
            OneGoodSession((byte)i);
            Assert.True(WaitFor(() => be.Session is null), LogText);
        }
        int after = Directory.GetFiles("/proc/self/fd").Length;
        Assert.True(after <= before + 2, $"descriptors grew from {before} to {after}");
        Assert.Equal(0, _dev.Vf.DmaMapCount);
        Assert.Equal(21, be.Connections);
    }
}
