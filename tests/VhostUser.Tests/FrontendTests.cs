using System.Buffers.Binary;
using System.Collections.Concurrent;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.VhostUser.Frontend;
using IfcVdpa.Virtio;
using IfcVdpa.VirtioNet;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>Shared set-up for the front-end tests.</summary>
public static class FrontendSetup
{
    public const ulong Iova = 0x10_0000;
    public const byte AckDriver = VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER;
    public const byte FeaturesOk = AckDriver | VirtioStatus.FEATURES_OK;
    public const byte DriverOk = FeaturesOk | VirtioStatus.DRIVER_OK;

    public static VhostUserFrontendOptions Options(ConcurrentQueue<string> logs, int replyTimeoutMs = 2000) => new()
    {
        Name = "fe-test",
        Log = logs.Enqueue,
        ReplyTimeoutMs = replyTimeoutMs,
        ConnectTimeout = TimeSpan.FromSeconds(5),
    };

    /// <summary>
    /// What a driver does, by hand: features (ACCESS_PLATFORM included: it must not reach the back-end),
    /// one 64 KiB memfd region at <see cref="Iova"/>, two 64-entry rings (queue q at Iova + q*0x4000:
    /// desc, avail +0x1000, used +0x2000), DRIVER_OK.
    /// </summary>
    public static MappedMemory BringUp(VhostUserFrontend fe, bool driverOk = true)
    {
        fe.Reset();
        fe.SetStatus(AckDriver);
        fe.SetDriverFeatures(fe.GetDeviceFeatures() & (Bit(F_VERSION_1) | Bit(F_RING_EVENT_IDX) | Bit(F_ACCESS_PLATFORM)));
        fe.SetStatus(FeaturesOk);
        Assert.Equal(FeaturesOk, fe.GetStatus());
        var mem = MappedMemory.CreateShared("fe-test", 0x1_0000);
        try
        {
            fe.DmaMap(Iova, mem.All, writable: true);
            for (int q = 0; q < 2; q++)
            {
                ulong at = Iova + ((ulong)q * 0x4000);
                fe.SetVqNum(q, 64);
                fe.SetVqAddress(q, at, at + 0x1000, at + 0x2000);
                fe.SetVqReady(q, true);
            }
            if (driverOk)
            {
                fe.SetStatus(DriverOk);
                Assert.Equal(DriverOk, fe.GetStatus());
            }
            return mem;
        }
        catch
        {
            mem.Dispose();
            throw;
        }
    }

    public static bool WaitFor(Func<bool> cond, int timeoutMs = 5000) => Wait.Until(cond, timeoutMs);
}

/// <summary>Memory handed to devices as slices of owned mappings, pinned while mapped.</summary>
public sealed class SharedMemoryRegistryTests
{
    [Fact]
    public void ASliceIsBoundsCheckedAndNamesItsMemfdOffset()
    {
        using var m = MappedMemory.CreateShared("slice", 0x4000);
        m.Span(0x2000, 4).Fill(0x5A);
        var s = m.Slice(0x2000, 0x1000);
        Assert.Equal(0x2000UL, s.Offset);
        Assert.Equal(0x1000UL, s.Length);
        Assert.Equal(m.All.UserAddress + 0x2000, s.UserAddress);
        using (var view = MappedMemory.MapFd(m.Fd!.Fd, 0x1000, s.Offset))
        {
            Assert.Equal(0x5A, view.Span(0, 1)[0]);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Slice(0x3000, 0x2000));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Slice(0x4000, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Slice(0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => s.Slice(0x800, 0x801));
        Assert.Equal(m.Slice(0x2800, 0x10), s.Slice(0x800, 0x10));
    }

    [Fact]
    public void MemoryPinnedByADmaMapOutlivesItsDisposeUntilUnmapped()
    {
        var map = new IovaMap();
        var m = MappedMemory.Allocate(0x2000);
        m.Span(0x1000, 4).Fill(0x77);
        map.Map(0x10_0000, m.All, writable: true);
        m.Dispose(); // the owner gets the order wrong: the device still has it mapped
        Assert.True(map.TryTranslate(0x10_1000, 4, write: true, out var span));
        Assert.Equal(0x77, span[3]);
        Assert.Throws<ObjectDisposedException>(() => map.Map(0x20_0000, m.Slice(0, 0x1000), writable: true));
        Assert.True(map.Unmap(0x10_0000, 0x2000));
        Assert.Equal(0, map.Count);
        Assert.Throws<ObjectDisposedException>(() => m.Span(0, 1)); // now really unmapped
    }

    [Fact]
    public void SharedMemoryCannotBeShrunkByAPeer()
    {
        using var m = MappedMemory.CreateShared("sealed", 0x2000);
        // A peer holding the fd (here: the same file through /proc) cannot truncate it under our mapping.
        using var f = new FileStream($"/proc/self/fd/{m.Fd!.Fd}", FileMode.Open, FileAccess.ReadWrite);
        Assert.Throws<UnauthorizedAccessException>(() => f.SetLength(0x1000)); // EPERM: F_SEAL_SHRINK
        Assert.Equal(0x2000, f.Length);
    }
}

/// <summary>The front-end against a scripted back-end: negotiation, wiring, host notifiers, hostile replies.</summary>
public sealed class FrontendProtocolTests : IDisposable
{
    private readonly ConcurrentQueue<string> _logs = new();

    private string LogText => string.Join('\n', _logs);

    public void Dispose()
    {
    }

    private VhostUserFrontend Connect(FakeVhostUserBackend be, int replyTimeoutMs = 2000) =>
        VhostUserFrontend.Connect(be.FrontEndSocket, FrontendSetup.Options(_logs, replyTimeoutMs));

    [Fact]
    public void NegotiatesLikeQemuAndHidesWhatAFrontEndMustEmulate()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        var seq = be.Received.Select(r => r.Request).ToArray();
        Assert.Equal(
            [VhostUserRequest.GET_FEATURES, VhostUserRequest.GET_PROTOCOL_FEATURES, VhostUserRequest.SET_PROTOCOL_FEATURES,
             VhostUserRequest.GET_QUEUE_NUM, VhostUserRequest.GET_MAX_MEM_SLOTS, VhostUserRequest.SET_BACKEND_REQ_FD,
             VhostUserRequest.SET_OWNER], seq);
        ulong proto = BinaryPrimitives.ReadUInt64LittleEndian(be.Of(VhostUserRequest.SET_PROTOCOL_FEATURES).Single().Payload);
        Assert.Equal(FakeVhostUserBackend.DefaultProtocol & VhostUserFrontend.SupportedProtocolFeatures, proto);
        Assert.NotEqual(0UL, proto & (1UL << VhostUserProtocolFeature.LOG_SHMFD)); // the dirty log is taken by memfd (StartDirtyLog)
        Assert.Equal(proto, fe.ProtocolFeatures);
        Assert.Equal(1, be.Of(VhostUserRequest.SET_BACKEND_REQ_FD).Single().FdCount);
        Assert.NotNull(be.Channel);
        Assert.Equal(4, fe.BackendQueuePairs);
        Assert.Equal(2, fe.NumVqs);
        Assert.False(fe.ConfigFromBackend);

        ulong f = fe.GetDeviceFeatures();
        Assert.Equal(Bit(F_VERSION_1) | Bit(NET_F_MRG_RXBUF) | Bit(F_RING_EVENT_IDX) | Bit(F_ACCESS_PLATFORM) |
                     Bit(NET_F_MAC) | Bit(NET_F_STATUS), f);
        // synthesized config: default MAC, link up, one pair, MTU 1500
        var c = new byte[12];
        fe.GetConfig(0, c);
        Assert.Equal(new byte[] { 2, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0xDC, 0x05 }, c);
    }

    [Fact]
    public void DriverOkWiresEachRingWithFrontEndAddressesAndNeverForwardsAccessPlatform()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var mem = FrontendSetup.BringUp(fe);

        ulong sent = BinaryPrimitives.ReadUInt64LittleEndian(be.Of(VhostUserRequest.SET_FEATURES).Single().Payload);
        Assert.Equal(Bit(F_VERSION_1) | Bit(F_RING_EVENT_IDX) | Bit(F_PROTOCOL_FEATURES), sent);
        Assert.Equal(Bit(F_VERSION_1) | Bit(F_RING_EVENT_IDX) | Bit(F_ACCESS_PLATFORM), fe.GetDriverFeatures());

        var add = be.Of(VhostUserRequest.ADD_MEM_REG).Single();
        Assert.Equal(1, add.FdCount);
        var region = MemoryRegionDesc.Read(add.Payload.AsSpan(8));
        Assert.Equal(new MemoryRegionDesc(FrontendSetup.Iova, 0x1_0000, mem.All.UserAddress, 0), region);

        var addrs = be.Of(VhostUserRequest.SET_VRING_ADDR).Select(r => VringAddr.Read(r.Payload)).ToArray();
        Assert.Equal(2, addrs.Length);
        for (uint q = 0; q < 2; q++)
        {
            ulong va = mem.All.UserAddress + (q * 0x4000);
            Assert.Equal(new VringAddr(q, 0, va, va + 0x2000, va + 0x1000, 0), addrs[q]);
        }
        // QEMU's order per ring, then DRIVER_OK, then enable (all with NEED_REPLY: REPLY_ACK is negotiated)
        var tail = be.Received.SkipWhile(r => r.Request != VhostUserRequest.SET_VRING_NUM).ToArray();
        Assert.Equal(
            [VhostUserRequest.SET_VRING_NUM, VhostUserRequest.SET_VRING_BASE, VhostUserRequest.SET_VRING_ADDR,
             VhostUserRequest.SET_VRING_CALL, VhostUserRequest.SET_VRING_KICK,
             VhostUserRequest.SET_VRING_NUM, VhostUserRequest.SET_VRING_BASE, VhostUserRequest.SET_VRING_ADDR,
             VhostUserRequest.SET_VRING_CALL, VhostUserRequest.SET_VRING_KICK,
             VhostUserRequest.SET_STATUS, VhostUserRequest.SET_VRING_ENABLE, VhostUserRequest.SET_VRING_ENABLE],
            tail.Select(r => r.Request).ToArray());
        Assert.All(tail, r => Assert.Equal(VhostUserWire.FlagVersion | VhostUserWire.FlagNeedReply, r.Flags));
        Assert.Equal((ulong)FrontendSetup.DriverOk, BinaryPrimitives.ReadUInt64LittleEndian(tail[10].Payload));

        // kicks go to the eventfd the back-end holds; calls from the back-end reach the handler
        fe.KickVq(1);
        Assert.True(be.Kicks[1].WaitReadable(2000));
        using var called = new SemaphoreSlim(0);
        fe.SetVqCallback(0, VdpaCallback.ForHandler(() => called.Release()));
        be.Calls[0].Signal();
        Assert.True(called.Wait(2000));
        Assert.Equal(1, fe.Interrupts(0));
        Assert.Equal(1, fe.GetVqStats(1).Kicks);
    }

    [Fact]
    public void DisablingAQueueSavesTheBaseTheBackEndReportsAndRestartsFromIt()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var mem = FrontendSetup.BringUp(fe);
        be.Bases[1] = 77;
        fe.SetVqReady(1, false);
        Assert.Equal(new VdpaVqState(77, 77), fe.GetVqState(1));
        Assert.Throws<InvalidOperationException>(() => fe.GetVqState(0)); // running: GET_VRING_BASE would stop it
        be.Bases[1] = 0;
        fe.SetVqReady(1, true);
        var bases = be.Of(VhostUserRequest.SET_VRING_BASE).Select(r => VringState.Read(r.Payload)).ToArray();
        Assert.Equal(new VringState(1, 77), bases[^1]);
    }

    [Fact]
    public void AnEventFdCallbackIsHandedToTheBackEnd()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var mem = FrontendSetup.BringUp(fe);
        using var irq = EventFd.Create();
        int before = be.Of(VhostUserRequest.SET_VRING_CALL).Count();
        fe.SetVqCallback(0, VdpaCallback.ForEventFd(irq));
        Assert.Equal(before + 1, be.Of(VhostUserRequest.SET_VRING_CALL).Count());
        be.Calls[0].Signal();
        Assert.True(irq.WaitReadable(2000));
        Assert.Equal(0, fe.Interrupts(0)); // straight to the eventfd, not through the call thread
    }

    [Fact]
    public void HostNotifierTakesKicksAndItsRemovalReturnsThemToTheEventFd()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var mem = FrontendSetup.BringUp(fe);
        using var bell = MappedMemory.CreateShared("doorbells", 0x3000);
        bell.Span(0, 0x3000).Fill(0xFF);

        Assert.Equal(0UL, be.BackendRequest(3, FakeVhostUserBackend.HostNotifierPayload(1, 0x1000, 0x1000), [bell.Fd!.Fd]));
        Assert.Equal(0UL, be.BackendRequest(3, FakeVhostUserBackend.HostNotifierPayload(0, 0x1000, 0x2000), [bell.Fd!.Fd]));
        Assert.True(fe.HasHostNotifier(1));
        Assert.True(fe.HasHostNotifier(0));
        fe.KickVq(1);
        fe.KickVq(0);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(bell.Span(0x1000, 2)));
        Assert.Equal(0, BinaryPrimitives.ReadUInt16LittleEndian(bell.Span(0x2000, 2)));
        Assert.Equal(0xFFFF, BinaryPrimitives.ReadUInt16LittleEndian(bell.Span(0, 2)));
        Assert.Equal(1, fe.HostNotifierKicks(1));
        Assert.Equal(0, fe.EventFdKicks(1));
        Assert.False(be.Kicks[1].WaitReadable(0));

        Assert.Equal(0UL, be.BackendRequest(3, FakeVhostUserBackend.HostNotifierPayload(1 | VhostUserWire.VringNoFdMask, 0, 0)));
        Assert.False(fe.HasHostNotifier(1));
        bell.Span(0x1000, 2).Fill(0xFF);
        fe.KickVq(1);
        Assert.True(be.Kicks[1].WaitReadable(2000));
        Assert.Equal(1, fe.EventFdKicks(1));
        Assert.Equal(1, fe.HostNotifierKicks(1));
        Assert.Equal(0xFFFF, BinaryPrimitives.ReadUInt16LittleEndian(bell.Span(0x1000, 2)));

        // a reset drops the remaining notifier (it belonged to the old configuration)
        fe.Reset();
        Assert.False(fe.HasHostNotifier(0));
        Assert.Equal(0, fe.BackendChannelErrors);
    }

    [Theory]
    [InlineData("payload too short")]
    [InlineData("area not whole pages")]
    [InlineData("area too large")]
    [InlineData("offset not page-aligned")]
    [InlineData("queue out of range")]
    [InlineData("unknown flag bits")]
    [InlineData("no descriptor")]
    [InlineData("two descriptors")]
    [InlineData("removal with a descriptor")]
    [InlineData("area beyond the file")]
    [InlineData("socket descriptor")]
    [InlineData("unmappable descriptor")]
    [InlineData("zero device at an offset")] // found by fuzz/VhostFrontendFuzz: mapped, then the first kick faulted (SIGBUS)
    public void BadHostNotifiersAreRefusedWithANonZeroAck(string kind)
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var mem = FrontendSetup.BringUp(fe);
        using var bell = MappedMemory.CreateShared("doorbells", 0x3000);
        using var ev = EventFd.Create();
        using var zero = File.OpenHandle("/dev/zero", FileMode.Open, FileAccess.ReadWrite);
        var (a, b) = UnixSocket.CreatePair();
        using var sa = a;
        using var sb = b;
        int f = bell.Fd!.Fd;
        byte[] P(ulong idx, ulong size, ulong off) => FakeVhostUserBackend.HostNotifierPayload(idx, size, off);
        ulong ack = kind switch
        {
            "payload too short" => be.BackendRequest(3, P(1, 0x1000, 0).AsSpan(0, 16), [f]),
            "area not whole pages" => be.BackendRequest(3, P(1, 100, 0), [f]),
            "area too large" => be.BackendRequest(3, P(1, 0x11000, 0), [f]),
            "offset not page-aligned" => be.BackendRequest(3, P(1, 0x1000, 100), [f]),
            "queue out of range" => be.BackendRequest(3, P(5, 0x1000, 0), [f]),
            "unknown flag bits" => be.BackendRequest(3, P(1 | 0x200, 0x1000, 0), [f]),
            "no descriptor" => be.BackendRequest(3, P(1, 0x1000, 0)),
            "two descriptors" => be.BackendRequest(3, P(1, 0x1000, 0), [f, f]),
            "removal with a descriptor" => be.BackendRequest(3, P(1 | VhostUserWire.VringNoFdMask, 0, 0), [f]),
            "area beyond the file" => be.BackendRequest(3, P(1, 0x1000, 0x3000), [f]),
            "socket descriptor" => be.BackendRequest(3, P(1, 0x1000, 0), [sa.Fd]),
            "unmappable descriptor" => be.BackendRequest(3, P(1, 0x1000, 0), [ev.Fd]),
            "zero device at an offset" => be.BackendRequest(3, P(1, 0x1000, 0x3000), [(int)zero.DangerousGetHandle()]),
            _ => throw new ArgumentException(kind),
        };
        Assert.NotEqual(0UL, ack);
        Assert.False(fe.HasHostNotifier(1), LogText);
        Assert.Equal(1, fe.BackendChannelErrors);
        fe.KickVq(1);
        Assert.Equal(1, fe.EventFdKicks(1));
        // the channel still works: a good notifier after the bad one is taken
        Assert.Equal(0UL, be.BackendRequest(3, P(1, 0x1000, 0), [f]));
        Assert.True(fe.HasHostNotifier(1));
    }

    [Fact]
    public void UnknownAndUnsupportedBackendRequestsAreRefusedAndConfigChangesReachTheCallback()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        Assert.NotEqual(0UL, be.BackendRequest(99, []));
        Assert.NotEqual(0UL, be.BackendRequest(1, new byte[32])); // IOTLB: never negotiated
        Assert.NotEqual(0UL, be.BackendRequest(2, new byte[8])); // CONFIG_CHANGE_MSG takes no payload
        using var changed = new SemaphoreSlim(0);
        fe.SetConfigCallback(VdpaCallback.ForHandler(() => changed.Release()));
        Assert.Equal(0UL, be.BackendRequest(2, []));
        Assert.True(changed.Wait(2000));
        Assert.Equal(1u, fe.GetGeneration());
        Assert.Equal(3, fe.BackendChannelErrors);
        Assert.Equal(4, fe.BackendChannelMessages);
    }

    [Fact]
    public void AMalformedBackendChannelMessageClosesOnlyTheChannel()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var mem = FrontendSetup.BringUp(fe);
        be.SendOnChannel(2, 0x2, []); // version 2
        Assert.True(FrontendSetup.WaitFor(() => fe.BackendChannelErrors == 1), LogText);
        Assert.True(FrontendSetup.WaitFor(() => be.Channel!.HasHangup()), "channel not closed");
        // the main connection carries on
        be.Bases[1] = 5;
        fe.SetVqReady(1, false);
        Assert.Equal(5, fe.GetVqState(1).AvailIndex);
        Assert.Null(fe.BrokenReason);
    }

    /// <summary>
    /// Found by fuzz/VhostFrontendFuzz (regression-unread-acks): a back-end that asks for acks on its channel
    /// and never reads them made the ack send time out with an exception nobody caught, on the channel
    /// thread, which ended the whole process. Now only the channel is closed.
    /// </summary>
    [Fact]
    public void ABackEndThatNeverReadsItsChannelAcksLosesOnlyTheChannel()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be, replyTimeoutMs: 200);
        using var mem = FrontendSetup.BringUp(fe);
        var ch = be.Channel!;
        var msg = new byte[VhostUserWire.HeaderSize];
        VhostUserCodec.WriteHeader(msg, 99, VhostUserWire.FlagVersion | VhostUserWire.FlagNeedReply, 0);
        int sent = 0;
        try
        {
            // Until the front-end stops reading (its ack sends are stuck) or closes the channel.
            while (sent < 1_000_000 && ch.TrySend(msg, default, 1000))
            {
                sent++;
            }
        }
        catch (IOException)
        {
            // the front-end closed the channel while we were still sending
        }
        Assert.True(sent > 0);
        Assert.True(FrontendSetup.WaitFor(() => LogText.Contains("does not read its acks", StringComparison.Ordinal)), LogText);
        Assert.True(FrontendSetup.WaitFor(() => ch.HasHangup()), "channel not closed");
        // the process and the main connection carry on
        be.Bases[1] = 7;
        fe.SetVqReady(1, false);
        Assert.Equal(7, fe.GetVqState(1).AvailIndex);
        Assert.Null(fe.BrokenReason);
    }

    /// <summary>
    /// Found with fuzz/VhostFrontendFuzz (regression-truncated-doorbell): a doorbell in a file the back-end can
    /// still shrink passed the size check, and truncating it afterwards made the next kick fault (SIGBUS, the
    /// process died). Only files sealed against shrinking (memfds as MappedMemory.CreateShared makes them) are taken.
    /// </summary>
    [Fact]
    public void ADoorbellFileTheBackEndCouldTruncateIsRefused()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var mem = FrontendSetup.BringUp(fe);
        string dir = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        string path = Path.Combine(dir, $"fe-test-bell-{Environment.ProcessId}-{Guid.NewGuid():N}");
        using var file = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        File.Delete(path);
        RandomAccess.SetLength(file, 0x2000);

        ulong ack = be.BackendRequest(3, FakeVhostUserBackend.HostNotifierPayload(1, 0x1000, 0x1000), [(int)file.DangerousGetHandle()]);
        Assert.NotEqual(0UL, ack);
        Assert.False(fe.HasHostNotifier(1));
        Assert.Contains("not sealed against shrinking", LogText, StringComparison.Ordinal);
        RandomAccess.SetLength(file, 0); // what the hostile back-end does next
        fe.KickVq(1); // to the eventfd: nothing mapped can fault
        Assert.Equal(1, fe.EventFdKicks(1));
        Assert.Equal(0, fe.HostNotifierKicks(1));

        // a sealed memfd is still a doorbell
        using var bell = MappedMemory.CreateShared("doorbells", 0x2000);
        Assert.Equal(0UL, be.BackendRequest(3, FakeVhostUserBackend.HostNotifierPayload(1, 0x1000, 0x1000), [bell.Fd!.Fd]));
        Assert.True(fe.HasHostNotifier(1));
        fe.KickVq(1);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(bell.Span(0x1000, 2)));
    }

    public static TheoryData<string, string> BadReplies() => new()
    {
        { "short", "has 4 bytes, expected 8" },
        { "wrong request", "expected the reply to GET_FEATURES, got GET_PROTOCOL_FEATURES" },
        { "flags without REPLY", "flags 0x1" },
        { "flags with NEED_REPLY", "flags 0xd" },
        { "descriptor", "carries 1 descriptor" },
        { "huge size", "has 65536 bytes" },
        { "silent", "timed out" },
        { "closed", "closed the connection" },
    };

    [Theory]
    [MemberData(nameof(BadReplies))]
    public void BadRepliesFailWithAClearError(string kind, string expected)
    {
        using var ev = EventFd.Create();
        using var be = new FakeVhostUserBackend(intercept: (m, c) =>
        {
            if (m.Request != VhostUserRequest.GET_FEATURES)
            {
                return false;
            }
            var u = new byte[8];
            switch (kind)
            {
                case "short": c.Send(1, 0x5, u.AsSpan(0, 4), default); break;
                case "wrong request": c.Send(15, 0x5, u, default); break;
                case "flags without REPLY": c.Send(1, 0x1, u, default); break;
                case "flags with NEED_REPLY": c.Send(1, 0xD, u, default); break;
                case "descriptor": c.Send(1, 0x5, u, [ev.Fd]); break;
                case "huge size":
                {
                    var h = new byte[12];
                    VhostUserCodec.WriteHeader(h, 1, 0x5, 0x10000);
                    c.Socket.Send(h);
                    break;
                }
                case "silent": break;
                case "closed": c.Socket.Shutdown(); break;
            }
            return true;
        });
        var e = Assert.Throws<IOException>(() => Connect(be, replyTimeoutMs: 300));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Contains("GET_FEATURES", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ABrokenConnectionFailsEveryLaterRequestButTeardownStillWorks()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var mem = FrontendSetup.BringUp(fe);
        be.Intercept = (m, c) =>
        {
            if (m.Request != VhostUserRequest.GET_VRING_BASE)
            {
                return false;
            }
            var r = new byte[8];
            new VringState(7, 0).Write(r); // another ring's state
            c.Reply(m.Request, r);
            return true;
        };
        var e = Assert.Throws<IOException>(() => fe.SetVqReady(1, false));
        Assert.Contains("GET_VRING_BASE for ring 1 answered ring 7", e.Message, StringComparison.Ordinal);
        Assert.NotNull(fe.BrokenReason);
        var later = Assert.Throws<IOException>(() => fe.SetStatus(FrontendSetup.AckDriver));
        Assert.Contains("broken", later.Message, StringComparison.Ordinal);
        fe.Reset(); // logs, does not throw
        fe.DmaUnmap(FrontendSetup.Iova, mem.Length);
        Assert.Equal(0, fe.DmaRegionCount);
        fe.KickVq(0); // the datapath never faults
    }

    [Fact]
    public void RefusedRequestsAreInvalidOperationsAndRefusedFeaturesDoNotStick()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        be.AckValue = m => m.Request == VhostUserRequest.SET_FEATURES ? 1UL : 0UL;
        fe.SetStatus(FrontendSetup.AckDriver);
        fe.SetDriverFeatures(Bit(F_VERSION_1));
        fe.SetStatus(FrontendSetup.FeaturesOk);
        Assert.Equal(FrontendSetup.AckDriver, fe.GetStatus());
        Assert.Contains(_logs, l => l.Contains("refused SET_FEATURES", StringComparison.Ordinal));

        // the in-process driver gives up with its own clear message
        var de = Assert.Throws<InvalidOperationException>(() => new VirtioNetDriver(fe));
        Assert.Contains("refused FEATURES_OK", de.Message, StringComparison.Ordinal);

        be.AckValue = m => m.Request == VhostUserRequest.SET_VRING_ADDR ? 1UL : 0UL;
        var ie = Assert.Throws<InvalidOperationException>(() => FrontendSetup.BringUp(fe).Dispose());
        fe.DmaUnmap(FrontendSetup.Iova, 0x1_0000);
        Assert.Contains("refused SET_VRING_ADDR", ie.Message, StringComparison.Ordinal);
        Assert.Null(fe.BrokenReason);
    }

    [Fact]
    public void ABackEndWithoutProtocolFeaturesGetsNoProtocolRequests()
    {
        using var be = new FakeVhostUserBackend(features: Bit(F_VERSION_1) | Bit(NET_F_MRG_RXBUF) | Bit(F_RING_EVENT_IDX));
        using var fe = Connect(be);
        Assert.Equal(0UL, fe.ProtocolFeatures);
        Assert.Null(be.Channel);
        using var mem = FrontendSetup.BringUp(fe);
        // nothing is acknowledged without REPLY_ACK: wait until the back-end has read the last request
        Assert.True(FrontendSetup.WaitFor(() => be.Of(VhostUserRequest.SET_VRING_KICK).Count() == 2));
        Assert.Empty(be.Of(VhostUserRequest.GET_PROTOCOL_FEATURES));
        Assert.Empty(be.Of(VhostUserRequest.SET_VRING_ENABLE)); // rings start enabled on SET_VRING_KICK
        Assert.Empty(be.Of(VhostUserRequest.SET_STATUS));
        Assert.All(be.Received, r => Assert.Equal(VhostUserWire.FlagVersion, r.Flags)); // no REPLY_ACK
        ulong sent = BinaryPrimitives.ReadUInt64LittleEndian(be.Of(VhostUserRequest.SET_FEATURES).Single().Payload);
        Assert.Equal(Bit(F_VERSION_1) | Bit(F_RING_EVENT_IDX), sent);
        Assert.Single(be.Of(VhostUserRequest.SET_MEM_TABLE));
    }

    [Fact]
    public void PrivateMemoryCannotBeMapped()
    {
        using var be = new FakeVhostUserBackend();
        using var fe = Connect(be);
        using var priv = MappedMemory.Allocate(0x1000);
        var e = Assert.Throws<VdpaNotSupportedException>(() => fe.DmaMap(0x1000, priv.All, true));
        Assert.Contains("memfd", e.Message, StringComparison.Ordinal);
        Assert.Empty(be.Of(VhostUserRequest.ADD_MEM_REG));
    }

    [Fact]
    public void WithoutMemorySlotsTheWholeTableIsSentEachTime()
    {
        using var be = new FakeVhostUserBackend(protocol: FakeVhostUserBackend.DefaultProtocol & ~(1UL << VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS));
        using var fe = Connect(be);
        using var a = MappedMemory.CreateShared("a", 0x4000);
        using var b = MappedMemory.CreateShared("b", 0x4000);
        fe.DmaMap(0x1_0000, a.All, true);
        fe.DmaMap(0x2_0000, b.Slice(0x2000, 0x1000), true); // part of a file: the offset goes along
        fe.DmaUnmap(0x1_0000, 0x4000);
        var tables = be.Of(VhostUserRequest.SET_MEM_TABLE).ToArray();
        Assert.Equal(3, tables.Length);
        Assert.Equal([1, 2, 1], tables.Select(t => t.FdCount).ToArray());
        static MemoryRegionDesc[] Regions(ReceivedRequest r) => Enumerable.Range(0, (int)BinaryPrimitives.ReadUInt32LittleEndian(r.Payload))
            .Select(i => MemoryRegionDesc.Read(r.Payload.AsSpan(8 + (32 * i)))).ToArray();
        var second = new MemoryRegionDesc(0x2_0000, 0x1000, b.Slice(0x2000, 0x1000).UserAddress, 0x2000);
        Assert.Equal([new MemoryRegionDesc(0x1_0000, 0x4000, a.All.UserAddress, 0), second], Regions(tables[1]));
        Assert.Equal([second], Regions(tables[2]));
        Assert.Empty(be.Of(VhostUserRequest.ADD_MEM_REG));
    }
}

/// <summary>Client-mode connection: bounded retries while nobody listens.</summary>
[Collection("serial")]
public sealed class FrontendConnectTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vu-fc").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void ConnectWaitsForABackEndThatStartsLater()
    {
        string sock = Path.Combine(_dir, "late.sock");
        using var dev = new RealDevice();
        var logs = new ConcurrentQueue<string>();
        var connecting = Task.Run(() => VhostUserFrontend.Connect(sock, FrontendSetup.Options(logs)));
        // Not a barrier: the claim itself is about time, "still trying (not failed) 300 ms in" (ConnectTimeout is 5 s).
        Assert.False(connecting.Wait(300));
        using var be = new VhostUserBackend(dev.Adapter, new VhostUserBackendOptions { SocketPath = sock });
        be.Start();
        using var fe = connecting.Wait(TimeSpan.FromSeconds(5)) ? connecting.Result : throw new TimeoutException("no connection");
        Assert.Equal(2, fe.NumVqs);
        Assert.True(fe.ConfigFromBackend);
    }

    [Fact]
    public void ConnectGivesUpAfterItsTimeout()
    {
        var logs = new ConcurrentQueue<string>();
        var e = Assert.Throws<IOException>(() => VhostUserFrontend.Connect(Path.Combine(_dir, "nobody.sock"),
            FrontendSetup.Options(logs) with { ConnectTimeout = TimeSpan.FromMilliseconds(200) }));
        Assert.Contains("no vhost-user back-end accepts connections", e.Message, StringComparison.Ordinal);
    }
}

/// <summary>
/// VirtioNetDriver over VhostUserFrontend over this project's own back-end (VhostUserBackend bound to a
/// software IFC VF with a loopback): the whole virtio -> vhost-user -> vDPA -> device chain in one process.
/// </summary>
[Collection("serial")]
public sealed class FrontendOverOwnBackendTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vu-fe").FullName;
    private readonly ConcurrentQueue<string> _logs = new();
    private readonly RealDevice _dev = new();
    private readonly VhostUserBackend _backend;

    public FrontendOverOwnBackendTests()
    {
        _backend = new VhostUserBackend(_dev.Adapter, new VhostUserBackendOptions
        {
            SocketPath = SocketPath,
            Session = new VhostUserSessionOptions { Log = _logs.Enqueue, Name = "be" },
        });
        _backend.Start();
    }

    private string SocketPath => Path.Combine(_dir, "vhost.sock");

    private string LogText => string.Join('\n', _logs);

    public void Dispose()
    {
        _backend.Dispose();
        _dev.Dispose();
        Directory.Delete(_dir, true);
    }

    private VhostUserFrontend Connect(bool memSlots = true) => VhostUserFrontend.Connect(SocketPath, FrontendSetup.Options(_logs) with
    {
        ProtocolFeatures = memSlots ? VhostUserFrontend.SupportedProtocolFeatures
            : VhostUserFrontend.SupportedProtocolFeatures & ~(1UL << VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS),
    });

    private static void Exchange(VirtioNetDriver drv, BlockingCollection<byte[]> received, int count, string log)
    {
        int[] sizes = [60, 61, 128, 777, 1514];
        for (int i = 0; i < count; i++)
        {
            var f = VirtioNetFrontEnd.Frame(sizes[i % sizes.Length], (byte)i);
            Assert.True(drv.Send(f), $"frame {i} not sent\n{log}");
            Assert.True(received.TryTake(out var got, 5000), $"frame {i} did not come back\n{log}");
            Assert.Equal(f, got);
        }
    }

    [Theory]
    [InlineData(true, true)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    public void VirtioNetDriverFramesLoopBackThroughTheOwnBackend(bool memSlots, bool interrupts)
    {
        using var fe = Connect(memSlots);
        Assert.True(fe.ConfigFromBackend, LogText);
        Assert.Equal(memSlots, (fe.ProtocolFeatures & (1UL << VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS)) != 0);
        using var received = new BlockingCollection<byte[]>();
        using (var drv = new VirtioNetDriver(fe, new VirtioNetDriverOptions { UseInterrupts = interrupts }))
        {
            drv.SetFrameHandler(f => received.Add(f.ToArray()));
            Assert.True(FrontendSetup.WaitFor(() => _backend.Session?.Configured == true), LogText);
            var mac = new byte[6];
            _dev.Adapter.GetConfig(0, mac);
            Assert.Equal(mac, drv.Mac);
            Assert.Equal(1, drv.ActiveQueuePairs);
            Assert.True(Has(drv.Features, F_VERSION_1));
            Assert.Equal(1, _dev.Adapter.DmaMapCount);
            Exchange(drv, received, 20, LogText);
            Assert.Equal((20, 20), (drv.Counters.RxFrames, drv.Counters.TxFrames));
            Assert.True(fe.GetVqStats(1).Kicks > 0);
            if (interrupts)
            {
                Assert.True(fe.Interrupts(0) > 0, "no RX interrupt came through the call eventfd");
            }
        }
        // the driver's reset and unmap leave nothing mapped in the device behind the back-end
        Assert.True(FrontendSetup.WaitFor(() => _dev.Adapter.DmaMapCount == 0), LogText);
        Assert.False(_backend.Session!.Configured);
        Assert.Equal(0, fe.DmaRegionCount);
        fe.Dispose();
        Assert.True(FrontendSetup.WaitFor(() => _backend.Session is null), LogText);
        Assert.Equal(0, _dev.Adapter.DmaMapCount);
    }

    [Fact]
    public void ASecondDriverOnTheSameFrontEndWorksAfterTheFirstReset()
    {
        using var fe = Connect();
        using var received = new BlockingCollection<byte[]>();
        for (int round = 0; round < 2; round++)
        {
            using var drv = new VirtioNetDriver(fe);
            drv.SetFrameHandler(f => received.Add(f.ToArray()));
            Exchange(drv, received, 5, LogText);
        }
        Assert.Equal(1, _backend.Connections);
    }

    [Fact]
    public void DisposingTheFrontEndMidRunLeavesNoMapsInTheBackEnd()
    {
        var fe = Connect();
        using var mem = FrontendSetup.BringUp(fe);
        Assert.True(FrontendSetup.WaitFor(() => _backend.Session?.Configured == true), LogText);
        Assert.Equal(1, _dev.Adapter.DmaMapCount);
        fe.Dispose();
        Assert.True(FrontendSetup.WaitFor(() => _backend.Session is null && _dev.Adapter.DmaMapCount == 0), LogText);
        Assert.Equal(0, _dev.Adapter.GetStatus());
    }
}
