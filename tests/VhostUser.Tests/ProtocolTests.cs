using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>Negotiation, replies and hostile messages against a recording fake device.</summary>
public sealed class ProtocolTests : IDisposable
{
    private readonly FakeVdpaDevice _dev = new(pairs: 2);
    private readonly SessionHarness _h;
    private readonly GuestMemoryFixture _mem = new();

    public ProtocolTests() => _h = new SessionHarness(_dev, payloadTimeoutMs: 500);

    private TestFrontEnd Fe => _h.Fe;

    public void Dispose()
    {
        _h.Dispose();
        _mem.Dispose();
    }

    /// <summary>After a rejected request the session must still answer.</summary>
    private void AssertStillServing() => Assert.NotEqual(0UL, Fe.GetU64(VhostUserRequest.GET_FEATURES));

    private void AssertClosed(string logFragment)
    {
        Assert.True(Fe.WaitClosed(), "the back-end should have closed the connection");
        Assert.True(_h.WaitEnded());
        Assert.True(_h.Logged(logFragment), _h.LogText);
        Assert.Contains("reset", _dev.Ops); // the device is left reset
    }

    [Fact]
    public void OffersDeviceFeaturesWithoutAccessPlatformPlusProtocolFeatures()
    {
        ulong f = Fe.GetU64(VhostUserRequest.GET_FEATURES);
        Assert.Equal((FakeVdpaDevice.Features & ~(1UL << VirtioFeature.F_ACCESS_PLATFORM)) | (1UL << 30) | (1UL << VirtioFeature.F_LOG_ALL), f);
        ulong p = Fe.GetU64(VhostUserRequest.GET_PROTOCOL_FEATURES);
        // LOG_SHMFD (and VHOST_F_LOG_ALL) through the software relay; no RARP: the fake device cannot send a frame
        Assert.Equal(VhostUserProtocolFeature.Supported | (1UL << VhostUserProtocolFeature.LOG_SHMFD), p);
        Assert.Equal(0UL, p & (1UL << VhostUserProtocolFeature.RARP));
        Assert.NotEqual(0UL, p & (1UL << VhostUserProtocolFeature.STATUS));
        Assert.Equal(2UL, Fe.GetU64(VhostUserRequest.GET_QUEUE_NUM));
        Assert.Equal(32UL, Fe.GetU64(VhostUserRequest.GET_MAX_MEM_SLOTS));
    }

    [Fact]
    public void ReplyAckIsSentOnlyWhenNegotiatedAndAsked()
    {
        // Not negotiated yet: NEED_REPLY is ignored, the next reply is GET_FEATURES'.
        Fe.SendRaw((uint)VhostUserRequest.SET_OWNER, TestFrontEnd.V1 | TestFrontEnd.NeedReply, []);
        AssertStillServing();
        Fe.SetU64(VhostUserRequest.SET_PROTOCOL_FEATURES, 1UL << VhostUserProtocolFeature.REPLY_ACK);
        Fe.DefaultFlags = TestFrontEnd.V1 | TestFrontEnd.NeedReply;
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, 1UL << VirtioFeature.F_VERSION_1));
        Assert.Equal(1UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, 1UL << VirtioFeature.F_ACCESS_PLATFORM)); // not offered
        Assert.Equal(1UL, Fe.SetU64(VhostUserRequest.SET_OWNER, 0)); // second owner
        Assert.True(_h.Logged("already has an owner"), _h.LogText);
    }

    [Fact]
    public void RequestsBeforeSetOwnerAreRejected()
    {
        Fe.SetU64(VhostUserRequest.SET_PROTOCOL_FEATURES, VhostUserProtocolFeature.Supported);
        Fe.DefaultFlags = TestFrontEnd.V1 | TestFrontEnd.NeedReply;
        Assert.Equal(1UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256));
        Assert.Equal(1UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, 1UL << 32));
        Assert.True(_h.Logged("before SET_OWNER"), _h.LogText);
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_OWNER, 0));
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256));
    }

    [Fact]
    public void RequestBeforeOwnerWithoutAckClosesTheConnection()
    {
        Fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256);
        AssertClosed("before SET_OWNER");
    }

    [Fact]
    public void OversizePayloadClosesTheConnection()
    {
        Fe.SendRaw((uint)VhostUserRequest.SET_FEATURES, 1, new byte[8], sizeField: 5000);
        AssertClosed("exceeds");
    }

    [Fact]
    public void TruncatedPayloadClosesTheConnection()
    {
        Fe.Negotiate();
        Fe.SendRaw((uint)VhostUserRequest.SET_VRING_ADDR, 1, new byte[10], sizeField: 40);
        AssertClosed("truncated SET_VRING_ADDR payload");
    }

    [Fact]
    public void RequestWithReplyFlagClosesTheConnection()
    {
        Fe.SendRaw((uint)VhostUserRequest.GET_FEATURES, 0x5, []);
        AssertClosed("REPLY flag");
    }

    [Fact]
    public void SizeMismatchIsNackedAndTheSessionGoesOn()
    {
        Fe.Negotiate();
        Fe.SendRaw((uint)VhostUserRequest.SET_VRING_NUM, Fe.DefaultFlags, new byte[4]);
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(Fe.ReadReply(VhostUserRequest.SET_VRING_NUM)));
        Assert.True(_h.Logged("SET_VRING_NUM payload is 4 bytes, expected 8"), _h.LogText);
        AssertStillServing();
    }

    [Fact]
    public void SizeMismatchWithoutAckClosesTheConnection()
    {
        Fe.Negotiate(replyAck: false);
        Fe.SendRaw((uint)VhostUserRequest.SET_VRING_BASE, 1, new byte[12]);
        AssertClosed("expected 8");
    }

    [Fact]
    public void UnexpectedDescriptorIsClosedAndTheRequestRejected()
    {
        Fe.Negotiate();
        var (a, b) = UnixSocket.CreatePair();
        using var keep = a;
        var p = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, 1UL << 32);
        Fe.Send(VhostUserRequest.SET_FEATURES, p, [b.Fd]);
        b.Dispose(); // now only the back-end's copy keeps the pair open
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(Fe.ReadReply(VhostUserRequest.SET_FEATURES)));
        Assert.True(_h.Logged("carries 1 descriptors, expected 0"), _h.LogText);
        Assert.Equal(0, a.Receive(new byte[1], [], out _)); // EOF: the back-end closed the stray descriptor
    }

    [Fact]
    public void KickWithoutDescriptorAndNoNoFdBitIsRejected()
    {
        Fe.Negotiate();
        Assert.Equal(1UL, Fe.SetU64(VhostUserRequest.SET_VRING_KICK, 0));
        Assert.True(_h.Logged("carries 0 descriptors, expected 1"), _h.LogText);
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_VRING_KICK, 0x100)); // NOFD: polling
    }

    [Fact]
    public void KickThatIsNotAnEventFdIsRejected()
    {
        Fe.Negotiate();
        Assert.Equal(1UL, Fe.SetU64(VhostUserRequest.SET_VRING_KICK, 0, [_mem.Fd]));
        Assert.True(_h.Logged("not an eventfd"), _h.LogText);
    }

    [Fact]
    public void UnknownAndUnsupportedRequestsAreRejected()
    {
        Fe.Negotiate();
        Fe.SendRaw(99, Fe.DefaultFlags, new byte[8]);
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(Fe.ReadReply((VhostUserRequest)99)));
        Assert.True(_h.Logged("unknown request"), _h.LogText);
        Fe.SendRaw((uint)VhostUserRequest.SET_LOG_BASE, Fe.DefaultFlags, new byte[16], [_mem.Fd]);
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(Fe.ReadReply(VhostUserRequest.SET_LOG_BASE)));
        Assert.True(_h.Logged("not supported"), _h.LogText);
        AssertStillServing();
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(100u)]
    [InlineData(65536u)]
    [InlineData(2048u)] // above the device's 1024
    public void BadRingSizesAreRejected(uint num)
    {
        Fe.Negotiate();
        Assert.Equal(1UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, num));
        Assert.True(_h.Logged($"size {num} invalid"), _h.LogText);
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256));
    }

    [Fact]
    public void RingIndexOutOfRangeIsRejected()
    {
        Fe.Negotiate();
        Assert.Equal(1UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, 4, 256)); // 2 pairs: rings 0..3
        Assert.Equal(1UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 200, 1));
        using var ev = EventFd.Create();
        Assert.Equal(1UL, Fe.SetU64(VhostUserRequest.SET_VRING_CALL, 7, [ev.Fd]));
        Assert.True(_h.Logged("ring 4 out of range"), _h.LogText);
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, 3, 256));
    }

    [Fact]
    public void GetVringBaseOnABadRingClosesTheConnection()
    {
        Fe.Negotiate();
        var p = new byte[8];
        new VringState(9, 0).Write(p);
        Fe.Send(VhostUserRequest.GET_VRING_BASE, p);
        AssertClosed("ring 9 out of range");
    }

    [Fact]
    public void SetVringBaseBeyondASplitRingIndexIsRejected()
    {
        Fe.Negotiate();
        Fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256);
        Assert.Equal(1UL, Fe.SetState(VhostUserRequest.SET_VRING_BASE, 0, 0x10000));
        Assert.True(_h.Logged("beyond a split ring"), _h.LogText);
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_BASE, 0, 0xFFFF));
        Assert.Equal(0xFFFFu, Fe.GetVringBase(0));
    }

    [Fact]
    public void SetVringEnableNeedsBit30AndABooleanValue()
    {
        Fe.Negotiate(features: 1UL << VirtioFeature.F_VERSION_1);
        Assert.Equal(1UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 0, 1));
        Assert.True(_h.Logged("bit 30"), _h.LogText);
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, (1UL << VirtioFeature.F_VERSION_1) | (1UL << 30)));
        Assert.Equal(1UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 0, 2));
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 0, 1));
    }

    [Fact]
    public void SetVringEnableBeforeSetFeaturesIsAcceptedLikeQemuSendsIt()
    {
        Fe.SetU64(VhostUserRequest.SET_PROTOCOL_FEATURES, VhostUserProtocolFeature.Supported);
        Fe.DefaultFlags = TestFrontEnd.V1 | TestFrontEnd.NeedReply;
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_OWNER, 0));
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 0, 0));
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 1, 0));
    }

    private ulong? MemTable(params MemoryRegionDesc[] r) => Fe.SetMemTable(r, Enumerable.Repeat(_mem.Fd, r.Length).ToArray());

    [Fact]
    public void ValidMemoryTableIsMappedWithItsOffset()
    {
        Fe.Negotiate();
        _mem.At(GuestMemoryFixture.Gpa + 0x123, 1)[0] = 0x5A;
        Assert.Equal(0UL, MemTable(_mem.Region));
        var r = Assert.Single(_h.Session.Memory.Regions);
        Assert.True(_h.Session.Memory.TryGpaSpan(GuestMemoryFixture.Gpa + 0x123, 1, out var s));
        Assert.Equal(0x5A, s[0]);
        Assert.True(_h.Session.Memory.TryVaToGpa(GuestMemoryFixture.Va + 0x1000, 16, out ulong gpa));
        Assert.Equal(GuestMemoryFixture.Gpa + 0x1000, gpa);
        Assert.False(_h.Session.Memory.TryVaToGpa(GuestMemoryFixture.Va + GuestMemoryFixture.Size - 8, 16, out _));
        Assert.Equal(GuestMemoryFixture.Size, r.Size);
    }

    [Fact]
    public void OverlappingRegionsAreRejected()
    {
        Fe.Negotiate();
        var a = new MemoryRegionDesc(GuestMemoryFixture.Gpa, 0x10000, 0x1000_0000, 0);
        var gpaOverlap = new MemoryRegionDesc(GuestMemoryFixture.Gpa + 0x8000, 0x10000, 0x2000_0000, 0);
        var vaOverlap = new MemoryRegionDesc(0x9000_0000, 0x10000, 0x1000_8000, 0);
        Assert.Equal(1UL, MemTable(a, gpaOverlap));
        Assert.True(_h.Logged("GPA [0x40008000"), _h.LogText);
        Assert.Equal(1UL, MemTable(a, vaOverlap));
        Assert.True(_h.Logged("VA [0x10008000"), _h.LogText);
        Assert.Empty(_h.Session.Memory.Regions);
    }

    [Theory]
    [InlineData(0xFFFF_FFFF_FFFF_0000UL, 0x20000UL, 0x1000UL, 0UL, "wraps")]
    [InlineData(0x1000UL, 0x20000UL, 0xFFFF_FFFF_FFFF_F000UL, 0UL, "wraps")]
    [InlineData(0x1000UL, 0UL, 0x1000UL, 0UL, "size 0")]
    [InlineData(0x1000UL, 0x40_0000UL, 0x1000UL, 0UL, "beyond its")]
    [InlineData(0x1000UL, 0x1000UL, 0x1000UL, 0x30_0000UL, "beyond its")]
    public void BadRegionsAreRejected(ulong gpa, ulong size, ulong va, ulong offset, string fragment)
    {
        Fe.Negotiate();
        Assert.Equal(1UL, MemTable(new MemoryRegionDesc(gpa, size, va, offset)));
        Assert.True(_h.Logged(fragment), _h.LogText);
        AssertStillServing();
    }

    [Fact]
    public void RegionFdMustBeMemory()
    {
        Fe.Negotiate();
        using var ev = EventFd.Create();
        Assert.Equal(1UL, Fe.SetMemTable([_mem.Region], [ev.Fd]));
        Assert.True(_h.Logged("not a memory file"), _h.LogText);
    }

    [Fact]
    public void TooManyRegionsAreRejected()
    {
        Fe.Negotiate();
        var nine = Enumerable.Range(0, 9).Select(i => new MemoryRegionDesc((ulong)i * 0x1000, 0x1000, 0x10_0000 + ((ulong)i * 0x1000), 0)).ToArray();
        // 9 regions and 9 fds: the codec refuses the count.
        Assert.Equal(1UL, MemTable(nine));
        Assert.True(_h.Logged("9 regions"), _h.LogText);
        // Region count disagreeing with the fds attached.
        Assert.Equal(1UL, Fe.SetMemTable([_mem.Region], [_mem.Fd, _mem.Fd]));
        Assert.True(_h.Logged("carries 2 descriptors, expected 1"), _h.LogText);
    }

    [Fact]
    public void AddAndRemoveRegionsRespectTheSlotLimit()
    {
        Fe.Negotiate();
        for (int i = 0; i < 32; i++)
        {
            Assert.Equal(0UL, Fe.AddMemReg(new MemoryRegionDesc((ulong)i * 0x10000, 0x10000, 0x100_0000 + ((ulong)i * 0x10000), (ulong)i * 0x10000), _mem.Fd));
        }
        Assert.Equal(1UL, Fe.AddMemReg(new MemoryRegionDesc(0x100_0000, 0x1000, 0x900_0000, 0), _mem.Fd));
        Assert.True(_h.Logged("all 32 memory slots"), _h.LogText);
        var rem = new byte[40];
        new MemoryRegionDesc(0x10000, 0x10000, 0x101_0000, 0).Write(rem.AsSpan(8));
        Assert.Equal(0UL, Fe.Request(VhostUserRequest.REM_MEM_REG, rem));
        Assert.Equal(31, _h.Session.Memory.Count);
        Assert.Equal(1UL, Fe.Request(VhostUserRequest.REM_MEM_REG, rem)); // already gone
    }

    [Fact]
    public void RingAddressesOutsideEveryRegionAreRejected()
    {
        Fe.Negotiate();
        MemTable(_mem.Region);
        Fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256);
        var (d, a, u) = GuestMemoryFixture.RingVa(0);
        // Guest-physical addresses instead of front-end VAs (the classic mix-up) are outside the VA table.
        var (gd, ga, gu) = GuestMemoryFixture.RingGpa(0);
        Assert.Equal(1UL, Fe.SetVringAddr(0, gd, ga, gu));
        Assert.True(_h.Logged("outside guest memory"), _h.LogText);
        Assert.Equal(1UL, Fe.SetVringAddr(0, d, a, GuestMemoryFixture.Va + GuestMemoryFixture.Size - 16)); // used ring runs off the end
        Assert.Equal(1UL, Fe.SetVringAddr(0, d + 8, a, u)); // misaligned descriptor table
        Assert.Equal(1UL, Fe.SetVringAddr(0, d, a, u, flags: 1)); // logging not offered
        Assert.Equal(0UL, Fe.SetVringAddr(0, d, a, u));
    }

    [Fact]
    public void ConfigIsReadFromTheDeviceWithinItsBounds()
    {
        Fe.Negotiate();
        var p = new byte[12 + 6];
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), 6);
        Fe.SendRaw((uint)VhostUserRequest.GET_CONFIG, TestFrontEnd.V1, p);
        var r = Fe.ReadReply(VhostUserRequest.GET_CONFIG);
        Assert.Equal(18, r.Length);
        Assert.Equal(new byte[] { 2, 0, 0, 0, 0, 9 }, r[12..]);
        Assert.Equal(1UL, Fe.SetU64(VhostUserRequest.NET_SET_MTU, 9000)); // above the device's 1500
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.NET_SET_MTU, 1500));
        BinaryPrimitives.WriteUInt32LittleEndian(p, 10); // [10, 16) beyond the 12-byte config
        Assert.Equal(1UL, Fe.Request(VhostUserRequest.SET_CONFIG, p));
        Assert.True(_h.Logged("outside the 12-byte config space"), _h.LogText);
    }

    /// <summary>Brings the fake device up the way virtio-user does (GPA == VA here is avoided: QEMU layout).</summary>
    private (EventFd[] Kicks, EventFd[] Calls) BringUp(bool negotiate = true)
    {
        if (negotiate)
        {
            Fe.Negotiate();
        }
        Assert.Equal(0UL, MemTable(_mem.Region));
        var kicks = new[] { EventFd.Create(), EventFd.Create() };
        var calls = new[] { EventFd.Create(), EventFd.Create() };
        for (uint q = 0; q < 2; q++)
        {
            var (d, a, u) = GuestMemoryFixture.RingVa((int)q);
            Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, q, 256));
            Assert.Equal(0UL, Fe.SetVringAddr(q, d, a, u));
            Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_VRING_KICK, q, [kicks[q].Fd]));
            Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_VRING_CALL, q, [calls[q].Fd]));
            Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, q, 1));
        }
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_STATUS, 0xF));
        Assert.True(_h.Session.Configured, _h.LogText);
        return (kicks, calls);
    }

    [Fact]
    public void BringUpProgramsTheDeviceInDpdkOrder()
    {
        var (kicks, calls) = BringUp();
        var ops = _dev.Ops.ToList();
        int map = ops.IndexOf($"map 0x{GuestMemoryFixture.Gpa:x} 0x{GuestMemoryFixture.Size:x}");
        var (d0, a0, u0) = GuestMemoryFixture.RingGpa(0);
        int addr0 = ops.IndexOf($"addr 0 0x{d0:x} 0x{a0:x} 0x{u0:x}");
        int ready1 = ops.IndexOf("ready 1 True");
        int driverOk = ops.IndexOf("status 0xf");
        Assert.True(ops.IndexOf("reset") < map && map < addr0 && addr0 < ready1 && ready1 < driverOk, string.Join('\n', ops));
        Assert.True(ops.IndexOf("status 0xb") < map); // FEATURES_OK before any queue
        Assert.Equal(FakeVdpaDevice.Features & ~(1UL << 30), _dev.DriverFeatures); // ACCESS_PLATFORM added back
        // Call fds bound straight to the device's interrupt, kicks relayed to the doorbell.
        Assert.NotNull(_dev.Callback(0)?.EventFd);
        _dev.Callback(1)!.Invoke();
        Assert.True(calls[1].WaitReadable(1000));
        kicks[1].Signal();
        Assert.True(SpinWait.SpinUntil(() => _dev.Kicks(1) == 1, 2000));
        Assert.Equal(0, _dev.Kicks(0));
        // GET_VRING_BASE stops the ring and answers from the device.
        _dev.Advance(1, 77);
        Assert.Equal(77u, Fe.GetVringBase(1));
        Assert.Contains("ready 1 False", _dev.Ops);
        kicks[1].Signal();
        // A relay round that starts after that signal: ring 0's kick, twice (the second proves a whole round
        // has passed since the first, which may have shared a round with ring 1's signal).
        kicks[0].Signal();
        Assert.True(SpinWait.SpinUntil(() => _dev.Kicks(0) == 1, 2000));
        kicks[0].Signal();
        Assert.True(SpinWait.SpinUntil(() => _dev.Kicks(0) == 2, 2000));
        Assert.Equal(1, _dev.Kicks(1)); // a stopped ring's kicks are no longer relayed
        foreach (var e in kicks.Concat(calls))
        {
            e.Dispose();
        }
    }

    [Fact]
    public void ConfigChangeIsSentOnTheBackendChannel()
    {
        var (ch, peer) = UnixSocket.CreatePair();
        using var chKeep = ch;
        Fe.Negotiate();
        Assert.Equal(0UL, Fe.Request(VhostUserRequest.SET_BACKEND_REQ_FD, [], [peer.Fd]));
        peer.Dispose();
        var (kicks, calls) = BringUp(negotiate: false);
        Assert.NotNull(_dev.ConfigCallback);
        _dev.ConfigCallback!.Invoke(); // e.g. link status changed
        var h = new byte[12];
        ch.ReceiveExact(h, [], 2000);
        var (req, flags, size) = VhostUserCodec.ReadHeader(h);
        Assert.Equal((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG, req);
        Assert.Equal(1u, flags);
        Assert.Equal(0u, size);
        foreach (var e in kicks.Concat(calls))
        {
            e.Dispose();
        }
    }

    [Fact]
    public void BackendChannelMustBeASocket()
    {
        Fe.Negotiate();
        using var ev = EventFd.Create();
        Assert.Equal(1UL, Fe.Request(VhostUserRequest.SET_BACKEND_REQ_FD, [], [ev.Fd]));
        Assert.True(_h.Logged("is not a socket"), _h.LogText);
    }

    [Fact]
    public void StatusIsStoredAndReported()
    {
        Fe.Negotiate();
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_STATUS, VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK));
        Assert.Equal((ulong)(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK), Fe.GetU64(VhostUserRequest.GET_STATUS));
        Assert.Equal(1UL, Fe.SetU64(VhostUserRequest.SET_STATUS, 0x1FF));
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.RESET_DEVICE, 0));
        Assert.Equal(0UL, Fe.GetU64(VhostUserRequest.GET_STATUS));
    }
}
