using System.Collections.Concurrent;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// Random (seeded) request streams against the back-end on the real device: every message is either
/// handled, rejected with a clear log line, or ends that connection; no exception ever escapes a session,
/// and a well-behaved front-end still works afterwards.
/// </summary>
[Collection("serial")]
public sealed class FuzzTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vu-fuzz").FullName;
    private readonly ConcurrentQueue<string> _logs = new();
    private readonly RealDevice _dev = new(pairs: 2);

    public void Dispose()
    {
        _dev.Dispose();
        Directory.Delete(_dir, true);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void RandomMessagesNeverCrashTheBackEnd(int seed)
    {
        string sock = Path.Combine(_dir, "f.sock");
        using var be = new VhostUserBackend(_dev.Adapter, new VhostUserBackendOptions
        {
            SocketPath = sock,
            Session = new VhostUserSessionOptions { Log = _logs.Enqueue, PayloadTimeoutMs = 200, Name = "fuzz" },
        });
        be.Start();
        var rnd = new Random(seed);
        using var mem = new GuestMemoryFixture();
        using var ev = EventFd.Create();
        int sent = 0;
        while (sent < 300)
        {
            using var fe = new TestFrontEnd(UnixSocket.Connect(sock));
            // Half the connections negotiate first so deeper states are reached.
            bool negotiated = rnd.Next(2) == 0;
            if (negotiated)
            {
                fe.Negotiate();
                fe.SetMemTable([mem.Region], [mem.Fd]);
            }
            for (int i = 0; i < 60 && sent < 300; i++, sent++)
            {
                uint req = (uint)rnd.Next(0, 46);
                // With REPLY_ACK negotiated most requests ask for an ack, so rejected ones do not end the session.
                uint flags = rnd.Next(16) == 0 ? (uint)rnd.Next(16) : 1u | (negotiated || rnd.Next(2) == 0 ? 8u : 0u);
                var payload = new byte[rnd.Next(5) switch { 0 => 0, 1 => 8, 2 => 40, 3 => 12 + rnd.Next(8), _ => rnd.Next(80) }];
                rnd.NextBytes(payload);
                if (payload.Length >= 8 && rnd.Next(2) == 0)
                {
                    // Plausible small values: ring indexes, sizes, bases.
                    BitConverter.TryWriteBytes(payload, (uint)rnd.Next(6));
                    BitConverter.TryWriteBytes(payload.AsSpan(4), (uint)(1 << rnd.Next(12)));
                }
                int[] fds = rnd.Next(4) switch { 0 => [ev.Fd], 1 => [mem.Fd], _ => [] };
                try
                {
                    fe.SendRaw(req, flags, payload, fds);
                    // Drain whatever reply comes (or the close).
                    while (Poll.WaitReadable(fe.Socket.Fd, 5))
                    {
                        if (fe.Socket.Receive(new byte[4096], [], out _) == 0)
                        {
                            goto closed;
                        }
                    }
                }
                catch (IOException)
                {
                    goto closed; // the back-end closed first
                }
            }
        closed:;
        }
        Assert.DoesNotContain(_logs, l => l.Contains("session failed", StringComparison.Ordinal));
        Assert.True(SpinWait.SpinUntil(() => be.Session is null || !be.Session.Configured, 2000));
        // Still serves a correct front-end, with a clean device.
        using (var fe = new TestFrontEnd(UnixSocket.Connect(sock)))
        using (var net = new VirtioNetFrontEnd(fe, mem))
        {
            net.Start();
            var f = VirtioNetFrontEnd.Frame(64, 1);
            net.Send(1, f);
            Assert.Equal(f, net.Receive(0, 1));
        }
        Assert.True(be.Connections > 5);
    }
}
