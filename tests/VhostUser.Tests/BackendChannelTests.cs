using System.Buffers.Binary;
using System.Diagnostics;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>UnixSocket.TrySend: a send bounded in time that never leaves half a message on a live stream.</summary>
public sealed class UnixSocketBoundedSendTests
{
    private const int MsgSize = 100;

    private static byte[] Message(int seq)
    {
        var m = new byte[MsgSize];
        BinaryPrimitives.WriteInt32LittleEndian(m, seq);
        for (int i = 4; i < m.Length; i++)
        {
            m[i] = (byte)(seq + i);
        }
        return m;
    }

    /// <summary>Reads whatever arrives until nothing comes for <paramref name="quietMs"/> or the stream ends.</summary>
    private static (byte[] Data, bool Eof) Drain(UnixSocket s, int quietMs = 200)
    {
        var all = new List<byte>();
        var buf = new byte[65536];
        var fds = new List<SafeFd>();
        while (Poll.WaitReadable(s.Fd, quietMs))
        {
            int n = s.Receive(buf, fds, out _);
            if (n == 0)
            {
                fds.ForEach(f => f.Dispose());
                return (all.ToArray(), true);
            }
            all.AddRange(buf.AsSpan(0, n).ToArray());
        }
        fds.ForEach(f => f.Dispose());
        return (all.ToArray(), false);
    }

    /// <summary>Fills the socket with whole messages until one no longer fits; returns how many went out.</summary>
    private static int Fill(UnixSocket s)
    {
        int n = 0;
        while (s.TrySend(Message(n), [], 0))
        {
            n++;
            Assert.True(n < 1_000_000, "the socket buffer never filled");
        }
        return n;
    }

    [Fact]
    public void TimesOutOnAFullPeerBufferWithoutSendingAnyOfTheMessage()
    {
        var (a, b) = UnixSocket.CreatePair();
        using var ua = a;
        using var ub = b;
        int sent = Fill(a);
        Assert.True(sent > 10, $"only {sent} messages fit");

        var sw = Stopwatch.StartNew();
        Assert.False(a.TrySend(Message(sent), [], 300));
        sw.Stop();
        Assert.InRange(sw.ElapsedMilliseconds, 250, 3000); // waited for room, then gave up

        // Exactly the messages reported sent are in the stream, whole and in order: nothing of the refused one.
        var (data, eof) = Drain(b);
        Assert.False(eof);
        Assert.Equal(sent * MsgSize, data.Length);
        for (int i = 0; i < sent; i++)
        {
            Assert.True(Message(i).AsSpan().SequenceEqual(data.AsSpan(i * MsgSize, MsgSize)), $"message {i} differs");
        }

        // Nothing was taken, so the stream is intact: the next message goes through and arrives whole.
        Assert.True(a.TrySend(Message(7), [], 1000));
        var h = new byte[MsgSize];
        b.ReceiveExact(h, [], 2000);
        Assert.Equal(Message(7), h);
    }

    [Fact]
    public void APartlyTakenMessageEndsTheStream()
    {
        var (a, b) = UnixSocket.CreatePair();
        using var ua = a;
        using var ub = b;
        // Far larger than the socket buffer (212992 bytes by default): the kernel takes a part, then no more.
        var big = new byte[16 << 20];
        for (int i = 0; i < big.Length; i++)
        {
            big[i] = (byte)(i * 7);
        }
        var sw = Stopwatch.StartNew();
        Assert.False(a.TrySend(big, [], 200));
        Assert.InRange(sw.ElapsedMilliseconds, 150, 3000);

        // The peer gets a prefix of the message and then the end of the stream, never a fragment followed
        // by anything else.
        var (data, eof) = Drain(b);
        Assert.True(eof, "the stream must end after a partly sent message");
        Assert.InRange(data.Length, 1, big.Length - 1);
        Assert.True(big.AsSpan(0, data.Length).SequenceEqual(data));
        Assert.Throws<IOException>(() => a.TrySend(Message(1), [], 100)); // shut down: EPIPE
    }

    [Fact]
    public void WaitsForRoomUpToTheDeadline()
    {
        var (a, b) = UnixSocket.CreatePair();
        using var ua = a;
        using var ub = b;
        int sent = Fill(a);
        var reader = Task.Run(() =>
        {
            Thread.Sleep(200); // the scenario, not a barrier: the reader starts late, so the send must wait for room
            return Drain(b, quietMs: 1000);
        });
        Assert.True(a.TrySend(Message(sent), [], 5000)); // room appears once the reader starts
        var (data, _) = reader.Result;
        Assert.Equal((sent + 1) * MsgSize, data.Length);
        Assert.True(Message(sent).AsSpan().SequenceEqual(data.AsSpan(sent * MsgSize)));
    }

    [Fact]
    public void CarriesDescriptorsAndRejectsANegativeTimeout()
    {
        var (a, b) = UnixSocket.CreatePair();
        using var ua = a;
        using var ub = b;
        using var ev = EventFd.Create();
        Assert.True(a.TrySend(Message(3), [ev.Fd], 0));
        var fds = new List<SafeFd>();
        var h = new byte[MsgSize];
        b.ReceiveExact(h, fds, 2000);
        Assert.Equal(Message(3), h);
        Assert.Single(fds);
        fds[0].Dispose();
        Assert.Throws<ArgumentOutOfRangeException>(() => a.TrySend(Message(4), [], -1));
    }
}

/// <summary>
/// A front-end that gives a back-end channel and never reads it must not hang the back-end: a send that
/// finds no room within the timeout closes that channel (and only it), with a clear log line.
/// </summary>
[Collection("serial")]
public sealed class BackendChannelTests : IDisposable
{
    private const string NotReading = "back-end channel: front-end not reading, closing it";

    private readonly GuestMemoryFixture _mem = new();
    private readonly List<IDisposable> _owned = [];

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--)
        {
            _owned[i].Dispose();
        }
        _mem.Dispose();
    }

    private T Own<T>(T d)
        where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    /// <summary>Reads the front-end end of a channel until it ends; false if it does not end within the timeout.</summary>
    private static bool DrainToEnd(UnixSocket ch, List<byte> into, int timeoutMs = 5000)
    {
        var buf = new byte[65536];
        var fds = new List<SafeFd>();
        long deadline = Environment.TickCount64 + timeoutMs;
        try
        {
            while (Environment.TickCount64 < deadline)
            {
                if (!Poll.WaitReadable(ch.Fd, 100))
                {
                    continue;
                }
                int n = ch.Receive(buf, fds, out _);
                if (n == 0)
                {
                    return true;
                }
                into.AddRange(buf.AsSpan(0, n).ToArray());
            }
            return false;
        }
        finally
        {
            fds.ForEach(f => f.Dispose());
        }
    }

    /// <summary>Sends a request and times the reply (the session must answer within a bounded time).</summary>
    private static long TimedRequest(Func<ulong?> request, ulong expect)
    {
        var sw = Stopwatch.StartNew();
        Assert.Equal(expect, request() ?? 0);
        return sw.ElapsedMilliseconds;
    }

    [Fact]
    public void ConfigChangesToAnUnreadChannelCloseItAndTheSessionCarriesOn()
    {
        var dev = Own(new RealDevice());
        var h = Own(new SessionHarness(dev.Adapter));
        var net = Own(new VirtioNetFrontEnd(h.Fe, _mem));
        h.Fe.Negotiate(features: VirtioNetFrontEnd.Features);
        var (ch, peer) = UnixSocket.CreatePair();
        Own(ch);
        using (peer)
        {
            Assert.Equal(0UL, h.Fe.Request(VhostUserRequest.SET_BACKEND_REQ_FD, [], [peer.Fd]) ?? 0);
        }
        Assert.Equal(0UL, h.Fe.SetMemTable([_mem.Region], [_mem.Fd]) ?? 0);
        net.SetupRing(0);
        net.SetupRing(1);
        Assert.Equal(0UL, h.Fe.SetU64(VhostUserRequest.SET_STATUS, 0xF) ?? 0);
        Assert.True(h.Session.Configured, h.LogText);

        // Link flaps: every change is a config interrupt and a CONFIG_CHANGE_MSG nobody reads, until the
        // socket buffer is full and one of them finds no room.
        long before = dev.Adapter.ConfigInterrupts;
        int flaps = 0;
        long deadline = Environment.TickCount64 + 30_000;
        while (!h.Logged(NotReading))
        {
            Assert.True(Environment.TickCount64 < deadline, $"no timeout after {flaps} link changes\n{h.LogText}");
            dev.Vf.SetLinkUp(!dev.Vf.LinkUp);
            if (++flaps % 256 == 0)
            {
                Thread.Sleep(10); // pacing the flood (not a wait for anything)
                // Meanwhile the session answers.
                Assert.InRange(TimedRequest(() => h.Fe.GetU64(VhostUserRequest.GET_FEATURES) & 0, 0), 0, 3000);
            }
        }
        Assert.True(dev.Adapter.ConfigInterrupts - before >= 10, "the link changes raised no config interrupts");
        Assert.Contains(h.Logs, l => l.Contains(NotReading, StringComparison.Ordinal) && l.Contains("CONFIG_CHANGE_MSG", StringComparison.Ordinal));

        // The channel is closed: the front-end's end holds whole CONFIG_CHANGE_MSGs, then the stream ends.
        var got = new List<byte>();
        Assert.True(DrainToEnd(ch, got), "the back-end channel was not closed");
        Assert.True(got.Count > 0);
        Assert.Equal(0, got.Count % VhostUserWire.HeaderSize);
        var bytes = got.ToArray();
        for (int off = 0; off < bytes.Length; off += VhostUserWire.HeaderSize)
        {
            var (req, flags, size) = VhostUserCodec.ReadHeader(bytes.AsSpan(off, VhostUserWire.HeaderSize));
            Assert.Equal((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG, req);
            Assert.Equal(VhostUserWire.FlagVersion, flags);
            Assert.Equal(0u, size);
        }

        // The session keeps serving: a new channel is accepted promptly (this takes the channel lock that a
        // blocked send would hold forever) and config changes flow on it; the device still runs.
        // Config callbacks still queued from the flood may land on the new channel: drained below either way.
        var (ch2, peer2) = UnixSocket.CreatePair();
        Own(ch2);
        using (peer2)
        {
            Assert.InRange(TimedRequest(() => h.Fe.Request(VhostUserRequest.SET_BACKEND_REQ_FD, [], [peer2.Fd]), 0), 0, 3000);
        }
        while (Poll.WaitReadable(ch2.Fd, 300))
        {
            ch2.Receive(new byte[4096], [], out _); // late callbacks of the flood
        }
        dev.Vf.SetLinkUp(!dev.Vf.LinkUp);
        var hdr = new byte[VhostUserWire.HeaderSize];
        ch2.ReceiveExact(hdr, [], 3000);
        var (request, _, _) = VhostUserCodec.ReadHeader(hdr);
        Assert.Equal((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG, request);
        Assert.True(h.Session.Configured, h.LogText);

        // Kicks are still relayed: a frame sent on TX comes back on RX through the loopback.
        dev.Vf.SetLinkUp(true);
        var frame = VirtioNetFrontEnd.Frame(80, 5);
        net.Send(1, frame);
        Assert.Equal(frame, net.Receive(0, 1));
    }

    [Fact]
    public void AHostNotifierToAFullChannelClosesItWithoutHangingTheSessionThread()
    {
        var dev = Own(new NotifierDevice());
        var h = Own(new SessionHarness(dev.Adapter));
        var net = Own(new VirtioNetFrontEnd(h.Fe, _mem));
        h.Fe.Negotiate(features: VirtioNetFrontEnd.Features);
        var (ch, peer) = UnixSocket.CreatePair();
        Own(ch);
        Own(peer);
        Assert.Equal(0UL, h.Fe.Request(VhostUserRequest.SET_BACKEND_REQ_FD, [], [peer.Fd]) ?? 0);
        // The back-end's end is the same socket as `peer`: fill it until nothing more fits, as a front-end
        // that stopped reading long ago would have let happen.
        var junk = new byte[4096];
        int filled = 0;
        while (peer.TrySend(junk, [], 0))
        {
            filled += junk.Length;
        }
        Assert.True(filled > 0);

        Assert.Equal(0UL, h.Fe.SetMemTable([_mem.Region], [_mem.Fd]) ?? 0);
        net.SetupRing(0);
        net.SetupRing(1);
        // DRIVER_OK: the session offers both doorbell pages on the channel once the reply is out; the first
        // finds no room, waits the bounded time and closes the channel. The next request is answered.
        var sw = Stopwatch.StartNew();
        Assert.Equal(0UL, h.Fe.SetU64(VhostUserRequest.SET_STATUS, 0xF) ?? 0);
        Assert.Equal(0UL, h.Fe.GetU64(VhostUserRequest.GET_FEATURES) & 0);
        Assert.InRange(sw.ElapsedMilliseconds, 0, 5000);
        Assert.True(h.Session.Configured, h.LogText);
        Assert.Contains(h.Logs, l => l.Contains(NotReading, StringComparison.Ordinal) && l.Contains("VRING_HOST_NOTIFIER_MSG", StringComparison.Ordinal));
        Assert.False(h.Logged("host notifier offered"), h.LogText);

        // Only the filler is in the channel (nothing of the refused message), then its end.
        var got = new List<byte>();
        Assert.True(DrainToEnd(ch, got), "the back-end channel was not closed");
        Assert.Equal(filled, got.Count);

        // Kicks go through the eventfd relay, and later host-notifier removals find no channel and do not block.
        var frame = VirtioNetFrontEnd.Frame(64, 3);
        net.Send(1, frame);
        Assert.Equal(frame, net.Receive(0, 1));
        sw.Restart();
        h.Fe.GetVringBase(0);
        Assert.InRange(sw.ElapsedMilliseconds, 0, 3000);
    }
}

/// <summary>A front-end that sends requests but never reads the replies cannot hold its session thread.</summary>
public sealed class UnreadRepliesTests
{
    [Fact]
    public void AFrontEndThatNeverReadsItsRepliesIsDisconnectedAndOthersAreServed()
    {
        using var dev = new RealDevice(address: "sim:0c.0");
        using var h = new SessionHarness(dev.Adapter, payloadTimeoutMs: 300);
        // GET_FEATURES always has a reply; sent from another thread, since our own send blocks once the
        // session stops reading (it is stuck replying, then gone).
        var header = new byte[12];
        VhostUserCodec.WriteHeader(header, (uint)VhostUserRequest.GET_FEATURES, VhostUserWire.FlagVersion, 0);
        var sender = new Thread(() =>
        {
            try
            {
                for (int i = 0; i < 200_000; i++)
                {
                    h.Fe.Socket.Send(header);
                }
            }
            catch (IOException)
            {
                // the session closed the connection: expected
            }
        }) { IsBackground = true };
        var sw = Stopwatch.StartNew();
        sender.Start();
        Assert.True(h.WaitEnded(15_000), "the session never gave up on a front-end that does not read:\n" + h.LogText);
        Assert.True(sw.ElapsedMilliseconds < 15_000);
        Assert.True(h.Logged("closing the connection: the front-end took no GET_FEATURES reply within 300 ms"), h.LogText);
        Assert.True(h.Fe.WaitClosed(5000), "the front-end's end did not see the connection close");

        // the same device serves the next front-end
        using var h2 = new SessionHarness(dev.Adapter);
        Assert.NotEqual(0UL, h2.Fe.GetU64(VhostUserRequest.GET_FEATURES));
    }
}
