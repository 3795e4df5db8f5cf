using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Hardening.Tests;

/// <summary>
/// Malicious vhost-user front-ends (modelled on known vhost back-end bugs, docs/hardening.md has the table).
/// Every case runs against a real back-end on its own socket while a second back-end serves a good
/// front-end; afterwards: the expected error was logged, the connection was closed when the case needs
/// it, the other device still passes traffic, no descriptor leaked, nothing is left DMA-mapped and the
/// attacked back-end serves the next (good) front-end.
/// </summary>
[Collection("hardening")]
public sealed class HostileFrontEndTests : IDisposable
{
    private readonly Bystander _other = new();
    private readonly BackendHost _host = new("victim", extraFeatures: 1UL << Virtio.VirtioFeature.F_RING_PACKED);
    private readonly GuestMemoryFixture _mem = new();

    public void Dispose()
    {
        _host.Dispose();
        _other.Dispose();
        _mem.Dispose();
    }

    /// <summary>Runs one attack with all the checks around it.</summary>
    private void Attack(Action<TestFrontEnd> attack, string expectedLog, bool expectClosed)
    {
        _other.Ping(1);
        _host.GoodSession(1); // warm up: threads, JIT, pools
        Proc.Settle();
        int fds = Proc.FdCount();
        using (var fe = _host.Connect())
        {
            attack(fe);
            if (expectClosed)
            {
                Assert.True(fe.WaitClosed(), $"the back-end kept the connection open\n{_host.LogText}");
            }
            _other.Ping(2);
        }
        Assert.True(_host.WaitIdle(), _host.LogText);
        Assert.True(_host.Logged(expectedLog), $"expected \"{expectedLog}\" in:\n{_host.LogText}");
        Assert.Equal(0, _host.Dev.Vf.DmaMapCount);
        Proc.Settle();
        int after = Proc.FdCount();
        Assert.True(after <= fds, $"descriptors grew from {fds} to {after}\n{_host.LogText}");
        _other.Ping(3);
        _host.GoodSession(2);
    }

    private static ulong Ack(TestFrontEnd fe) => BinaryPrimitives.ReadUInt64LittleEndian(fe.ReadReply(VhostUserRequest.SET_MEM_TABLE));

    [Fact]
    public void MemTableWithFewerDescriptorsThanRegionsIsRejected() => Attack(fe =>
    {
        fe.Negotiate();
        var r = _mem.Region;
        Assert.Equal(1UL, fe.SetMemTable([r with { Size = 0x1000 }, new MemoryRegionDesc(r.GuestPhysAddr + 0x10000, 0x1000, r.UserAddr + 0x10000, 0)], [_mem.Fd]));
        Assert.Equal(0UL, fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256)); // the session goes on
    }, "carries 1 descriptors, expected 2", expectClosed: false);

    [Fact]
    public void SurplusDescriptorsOnAMemTableAreAllClosed() => Attack(fe =>
    {
        fe.Negotiate();
        var extra = Enumerable.Range(0, 6).Select(_ => MappedMemory.CreateShared("surplus", 4096)).ToArray();
        try
        {
            Assert.Equal(1UL, fe.SetMemTable([_mem.Region], [_mem.Fd, .. extra.Select(m => m.Fd!.Fd)]));
        }
        finally
        {
            foreach (var m in extra)
            {
                m.Dispose();
            }
        }
    }, "carries 7 descriptors, expected 1", expectClosed: false);

    [Fact]
    public void ThirtyTwoDescriptorsOnOneKickAreAllClosed() => Attack(fe =>
    {
        fe.Negotiate();
        var evs = Enumerable.Range(0, UnixSocket.MaxFdsPerMessage).Select(_ => EventFd.Create()).ToArray();
        try
        {
            Assert.Equal(1UL, fe.SetU64(VhostUserRequest.SET_VRING_KICK, 0, evs.Select(e => e.Fd).ToArray()));
        }
        finally
        {
            foreach (var e in evs)
            {
                e.Dispose();
            }
        }
    }, "carries 32 descriptors, expected 1", expectClosed: false);

    [Fact]
    public void RegionLargerThanItsMemfdIsRejectedBySetMemTableAndAddMemReg() => Attack(fe =>
    {
        fe.Negotiate();
        using var small = MappedMemory.CreateShared("small", 4096);
        var r = new MemoryRegionDesc(0x1_0000_0000, 0x20_0000, 0x7f00_0000_0000, 0);
        Assert.Equal(1UL, fe.SetMemTable([r], [small.Fd!.Fd]));
        Assert.Equal(1UL, fe.AddMemReg(r, small.Fd!.Fd));
        Assert.Equal(1UL, fe.AddMemReg(r with { Size = 0x1000, MmapOffset = 0x1000 }, small.Fd!.Fd)); // offset at the end
    }, "beyond its 0x1000-byte file", expectClosed: false);

    [Fact]
    public void RegionWhoseFileOffsetWrapsIsRejected() => Attack(fe =>
    {
        fe.Negotiate();
        Assert.Equal(1UL, fe.AddMemReg(new MemoryRegionDesc(0x1000, 0x2000, 0x10_0000, 0xFFFF_FFFF_FFFF_F000), _mem.Fd));
    }, "wraps around", expectClosed: false);

    [Fact]
    public void AddMemRegOverlappingAnExistingRegionIsRejected() => Attack(fe =>
    {
        fe.Negotiate();
        Assert.Equal(0UL, fe.AddMemReg(_mem.Region, _mem.Fd));
        var r = _mem.Region;
        Assert.Equal(1UL, fe.AddMemReg(new MemoryRegionDesc(r.GuestPhysAddr + r.Size - 0x1000, 0x2000, 0x1_0000_0000_0000, 0), _mem.Fd));
        Assert.Equal(1UL, fe.AddMemReg(new MemoryRegionDesc(0x1_0000_0000, 0x2000, r.UserAddr + 0x1000, 0), _mem.Fd));
    }, "overlaps", expectClosed: false);

    [Fact]
    public void RingStraddlingTwoRegionsIsRejected() => Attack(fe =>
    {
        fe.Negotiate();
        var r = _mem.Region;
        // Two regions adjacent in VA and GPA, split at 64 KiB + 2 KiB: ring 0's descriptor table (64 KiB, 4 KiB long) crosses it.
        ulong cut = 0x1_0800;
        Assert.Equal(0UL, fe.AddMemReg(r with { Size = cut }, _mem.Fd));
        Assert.Equal(0UL, fe.AddMemReg(new MemoryRegionDesc(r.GuestPhysAddr + cut, r.Size - cut, r.UserAddr + cut, r.MmapOffset + cut), _mem.Fd));
        Assert.Equal(0UL, fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256));
        var (d, a, u) = GuestMemoryFixture.RingVa(0);
        Assert.Equal(1UL, fe.SetVringAddr(0, d, a, u));
    }, "descriptor table VA", expectClosed: false);

    [Fact]
    public void EveryRingRequestRejectsAnOutOfRangeIndexAndClosesItsDescriptor() => Attack(fe =>
    {
        fe.Negotiate();
        using var ev = EventFd.Create();
        foreach (uint q in new uint[] { 2, 255 })
        {
            Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_NUM, q, 256));
            Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_BASE, q, 0));
            Assert.Equal(1UL, fe.SetVringAddr(q, 0, 0, 0));
            Assert.Equal(1UL, fe.SetU64(VhostUserRequest.SET_VRING_KICK, q, [ev.Fd]));
            Assert.Equal(1UL, fe.SetU64(VhostUserRequest.SET_VRING_CALL, q, [ev.Fd]));
            Assert.Equal(1UL, fe.SetU64(VhostUserRequest.SET_VRING_ERR, q, [ev.Fd]));
            Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_ENABLE, q, 1));
        }
        Assert.Equal(1UL, fe.SetU64(VhostUserRequest.SET_VRING_KICK, 0x2_0000, [ev.Fd])); // unknown bits above NOFD
    }, "ring 255 out of range", expectClosed: false);

    [Fact]
    public void RingSizeAboveTheVhostLimitIsRejected() => Attack(fe =>
    {
        fe.Negotiate();
        Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 32768 * 2));
        Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, uint.MaxValue));
        Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_NUM, 1, 3));
    }, "invalid (a power of two", expectClosed: false);

    [Fact]
    public void PackedRingBaseBeyondTheRingIsRejected() => Attack(fe =>
    {
        fe.Negotiate(features: VirtioNetFrontEnd.Features | (1UL << Virtio.VirtioFeature.F_RING_PACKED));
        Assert.Equal(0UL, fe.SetState(VhostUserRequest.SET_VRING_NUM, 0, 256));
        Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_BASE, 0, 0x8000 | 256)); // avail position = ring size
        Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_BASE, 0, 0x8000 | 0x7FFF));
        Assert.Equal(1UL, fe.SetState(VhostUserRequest.SET_VRING_BASE, 0, 0x8000 | (300u << 16))); // used position beyond
        Assert.Equal(0UL, fe.SetState(VhostUserRequest.SET_VRING_BASE, 0, 0x8000_8000 | 255 | (255u << 16)));
    }, "packed base 0x8100 beyond the 256-entry ring", expectClosed: false);

    [Fact]
    public void PackedRingBaseSentBeforeTheRingSizeCannotStartTheRingBeyondItsEnd()
    {
        // SET_VRING_BASE is checked against the ring size only when the size is known; QEMU sends NUM
        // first, but a hostile front-end can send BASE first and a small NUM afterwards.
        _other.Ping(1);
        using (var fe = _host.Connect())
        using (var kick = EventFd.Create())
        using (var call = EventFd.Create())
        {
            fe.Negotiate(features: VirtioNetFrontEnd.Features | (1UL << Virtio.VirtioFeature.F_RING_PACKED));
            Assert.Equal(0UL, fe.SetMemTable([_mem.Region], [_mem.Fd]));
            for (uint q = 0; q < 2; q++)
            {
                Assert.Equal(0UL, fe.SetState(VhostUserRequest.SET_VRING_BASE, q, 0x8000_8000 | 0x7000 | (0x7000u << 16)));
                ulong? num = fe.SetState(VhostUserRequest.SET_VRING_NUM, q, 256);
                var (d, a, u) = GuestMemoryFixture.RingVa((int)q);
                fe.SetVringAddr(q, d, a, u);
                fe.SetU64(VhostUserRequest.SET_VRING_KICK, q, [kick.Fd]);
                fe.SetU64(VhostUserRequest.SET_VRING_CALL, q, [call.Fd]);
                fe.SetState(VhostUserRequest.SET_VRING_ENABLE, q, 1);
            }
            fe.SetU64(VhostUserRequest.SET_STATUS, 0xF); // acked: the device is started (or refused) when this returns
            kick.Signal();
            // Either the ring never started, or the device refuses the state (NEEDS_RESET, raised by the worker once
            // the kick reaches it): never a ring at 0x7000 of 256. A ring that started there fails this wait.
            bool running = false;
            ulong status = 0;
            bool refused = Proc.WaitFor(() =>
            {
                running = _host.Dev.Vf.IsQueueRunning(0) || _host.Dev.Vf.IsQueueRunning(1);
                status = fe.GetU64(VhostUserRequest.GET_STATUS);
                return !running || (status & 0x40) != 0;
            });
            Assert.True(refused,
                $"a packed ring started at position 0x7000 of a 256-entry ring (status 0x{status:x}, running {running})\n{_host.LogText}\n{string.Join('\n', _host.EngineLogs)}");
            // ...and the worker never tripped over the ring (it used to throw every 100 ms, stalling the VF).
            Assert.DoesNotContain(_host.EngineLogs, l => l.Contains("worker error", StringComparison.Ordinal));
            _other.Ping(2);
        }
        Assert.True(_host.WaitIdle());
        _host.GoodSession(3);
    }

    [Fact]
    public void ConfigRangesThatOverflowAreRejected() => Attack(fe =>
    {
        fe.Negotiate();
        foreach (var (offset, size) in new (uint, uint)[] { (0xFFFF_FFFF, 8), (0xFFFF_FFF8, 16), (4, 256) })
        {
            var p = new byte[12 + size];
            BinaryPrimitives.WriteUInt32LittleEndian(p, offset);
            BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), size);
            Assert.Equal(1UL, fe.Request(VhostUserRequest.SET_CONFIG, p));
        }
        var g = new byte[12 + 8];
        BinaryPrimitives.WriteUInt32LittleEndian(g, 0xFFFF_FFFC);
        BinaryPrimitives.WriteUInt32LittleEndian(g.AsSpan(4), 8);
        fe.SendRaw((uint)VhostUserRequest.GET_CONFIG, TestFrontEnd.V1, g); // GET_CONFIG has its own reply: a failure closes
    }, "outside the", expectClosed: true);

    [Fact]
    public void EveryMemorySlotFilledThenDisconnectedUnmapsEverything() => Attack(fe =>
    {
        fe.Negotiate();
        for (int i = 0; i < 32; i++)
        {
            Assert.Equal(0UL, fe.AddMemReg(new MemoryRegionDesc((ulong)i * 0x10000, 0x10000, 0x100_0000 + ((ulong)i * 0x10000), (ulong)i * 0x10000), _mem.Fd));
        }
        Assert.Equal(1UL, fe.AddMemReg(new MemoryRegionDesc(0x100_0000, 0x1000, 0x900_0000, 0), _mem.Fd));
    }, "all 32 memory slots", expectClosed: false);

    [Fact]
    public void DescriptorsReplacedOverAndOverDoNotPileUp() => Attack(fe =>
    {
        var mem = new VirtioNetFrontEnd(fe, _mem);
        mem.Start(); // running: replaced call fds are retired, not closed at once
        Proc.Settle();
        int before = Proc.FdCount();
        for (int i = 0; i < 200; i++)
        {
            using var call = EventFd.Create();
            using var err = EventFd.Create();
            var (a, b) = UnixSocket.CreatePair();
            using (a)
            using (b)
            {
                Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_VRING_CALL, 0, [call.Fd]));
                Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_VRING_ERR, 1, [err.Fd]));
                Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_BACKEND_REQ_FD, 0, [b.Fd]));
            }
        }
        Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_VRING_CALL, 0x100)); // NOFD: polled from now on
        mem.Send(1, VirtioNetFrontEnd.Frame(64, 1));
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 1), mem.Receive(0, 1));
        Proc.Settle();
        // 200 replaced call fds: at most 64 are kept for racing interrupts (+ the live ones); the rest closed.
        Assert.True(Proc.FdCount() <= before + 64 + 4, $"{Proc.FdCount()} descriptors open, {before} before");
        mem.Dispose();
    }, "running", expectClosed: false);

    [Fact]
    public void SecondSetOwnerAndSetOwnerWithoutAckClose() => Attack(fe =>
    {
        fe.Negotiate(replyAck: false);
        fe.SetU64(VhostUserRequest.SET_OWNER, 0); // no ack asked: the failure closes the connection
    }, "already has an owner", expectClosed: true);

    [Fact]
    public void UnsupportedRequestsCarryingDescriptorsAreRejectedAndClosed() => Attack(fe =>
    {
        fe.Negotiate();
        using var log = MappedMemory.CreateShared("log", 4096);
        var p = new byte[16];
        fe.Send(VhostUserRequest.SET_LOG_BASE, p, [log.Fd!.Fd]);
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(fe.ReadReply(VhostUserRequest.SET_LOG_BASE)));
        var inflight = new byte[24];
        fe.Send(VhostUserRequest.SET_INFLIGHT_FD, inflight, [log.Fd!.Fd]);
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(fe.ReadReply(VhostUserRequest.SET_INFLIGHT_FD)));
        fe.SendRaw(0xFFFF, TestFrontEnd.V1 | TestFrontEnd.NeedReply, new byte[8], [log.Fd!.Fd]);
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(fe.ReadReply((VhostUserRequest)0xFFFF)));
    }, "SET_LOG_BASE", expectClosed: false);

    [Fact]
    public void DirtyLogBeyondItsFileClosesTheConnectionAndMapsNothing() => Attack(fe =>
    {
        fe.Negotiate(protocol: VhostUserProtocolFeature.Supported | VhostUserProtocolFeature.Migration);
        using var log = MappedMemory.CreateShared("vhost-log", 0x1000);
        var p = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(p, 0x1000);
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), 0x1000); // the whole log past the end of its file
        fe.Send(VhostUserRequest.SET_LOG_BASE, p, [log.Fd!.Fd]);
    }, "beyond its 0x1000-byte file", expectClosed: true);

    [Fact]
    public void DirtyLogTooSmallForGuestMemoryWhileRunningIsRefusedAndTheDeviceKeepsRunning() => Attack(fe =>
    {
        using var mem = new GuestMemoryFixture();
        using var net = new VirtioNetFrontEnd(fe, mem);
        net.Start(protocol: VhostUserProtocolFeature.Supported | VhostUserProtocolFeature.Migration);
        net.Send(1, VirtioNetFrontEnd.Frame(64, 1));
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 1), net.Receive(0, 1));
        using var log = MappedMemory.CreateShared("vhost-log", 0x1000);
        var p = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(p, 0x1000); // covers 128 MiB; guest memory reaches 1 GiB + 2 MiB
        fe.Send(VhostUserRequest.SET_LOG_BASE, p, [log.Fd!.Fd]);
        Assert.True(fe.WaitClosed());
        Assert.True(log.Span(0, 0x1000).IndexOfAnyExcept((byte)0) < 0, "the refused log was written");
    }, "guest memory reaches", expectClosed: false);

    [Fact]
    public void StalledHeaderIsDroppedAfterThePayloadTimeout() => Attack(fe =>
    {
        fe.Negotiate();
        var h = new byte[12];
        VhostUserCodec.WriteHeader(h, (uint)VhostUserRequest.SET_VRING_NUM, 1, 8);
        fe.Socket.Send(h.AsSpan(0, 6)); // half a header, then silence
        _other.Ping(4); // the other device is served meanwhile
    }, "truncated header", expectClosed: true);

    [Fact]
    public void StalledPayloadIsDroppedAfterThePayloadTimeout() => Attack(fe =>
    {
        fe.Negotiate();
        fe.SendRaw((uint)VhostUserRequest.SET_MEM_TABLE, 1, new byte[8], sizeField: 4096);
    }, "truncated SET_MEM_TABLE payload", expectClosed: true);

    [Fact]
    public void RequestsStreamedWithoutReadingRepliesDoNotWedgeTheBackend() => Attack(fe =>
    {
        // GET_FEATURES after GET_FEATURES, never reading a reply: the back-end blocks writing replies once the
        // socket buffer is full, then stops reading requests, and the requests fill the other direction. That
        // must stall only this connection, and closing it must free the back-end.
        var h = new byte[12];
        VhostUserCodec.WriteHeader(h, (uint)VhostUserRequest.GET_FEATURES, 1, 0);
        const int Limit = 200_000;
        int sent = 0;
        // A request that finds no room for 200 ms: the back-end has stopped reading, i.e. it is blocked on a
        // reply (its own send timeout is 1000 ms). A 12-byte request either fits whole or not at all.
        while (fe.Socket.TrySend(h, [], 200))
        {
            Assert.True(++sent < Limit, $"the back-end took {Limit} requests without ever blocking on its unread replies");
        }
        Assert.True(sent > 0, "no request fitted at all");
        _other.Ping(5); // the other device is served while this connection is stalled
        fe.Socket.Shutdown();
    }, "front-end #", expectClosed: false);

    [Fact]
    public void RequestsAfterAProtocolErrorAreNeverProcessed() => Attack(fe =>
    {
        fe.Negotiate();
        // A request with the REPLY flag (fatal) and a good GET_FEATURES behind it in the same write: the good
        // one is already in the back-end's socket buffer when it reads the bad one.
        var both = new byte[24];
        VhostUserCodec.WriteHeader(both, (uint)VhostUserRequest.GET_FEATURES, 0x5, 0);
        VhostUserCodec.WriteHeader(both.AsSpan(12), (uint)VhostUserRequest.GET_FEATURES, TestFrontEnd.V1, 0);
        fe.Socket.Send(both);
        // Had the second one been processed, its reply would arrive before the end of the stream.
        Assert.True(Interop.Primitives.Poll.WaitReadable(fe.Socket.Fd, 5000), "the back-end kept the connection open");
        var fds = new List<SafeFd>();
        int n = fe.Socket.Receive(new byte[64], fds, out _);
        Assert.True(n == 0, $"{n} bytes (a reply) arrived after the protocol error instead of the end of the stream");
        Assert.Empty(fds);
    }, "REPLY flag", expectClosed: false);

    [Fact]
    public void RingRemovedFromMemoryWhileRunningStopsItWithoutTouchingUnmappedMemory()
    {
        _other.Ping(1);
        using var fe = _host.Connect();
        using var net = new VirtioNetFrontEnd(fe, _mem);
        net.Start(addMemReg: true);
        var f = VirtioNetFrontEnd.Frame(64, 9);
        net.Send(1, f);
        Assert.Equal(f, net.Receive(0, 1));
        // The first half (rings live at 64 KiB) is removed while the rings run; the second half stays.
        var r = _mem.Region;
        var rem = new byte[40];
        (r with { Size = r.Size / 2 }).Write(rem.AsSpan(8));
        Assert.Equal(0UL, fe.Request(VhostUserRequest.REM_MEM_REG, rem));
        // Memory comes back: the device restarts and the queued frame goes out.
        KickWhileUnmappedThenRestore(fe, net, () => fe.AddMemReg(r with { Size = r.Size / 2 }, _mem.Fd));
        _other.Ping(2);
    }

    /// <summary>
    /// The rings' memory is gone (the request that removed it was acked). The device must have stopped every
    /// ring and dropped every DMA map, checked at once: then a kick has nothing to run. A frame is queued and
    /// kicked, then rewritten in place before the memory comes back: a device that took it while the memory
    /// was gone loops back the original, one that waits for the memory loops back the rewritten frame.
    /// </summary>
    private void KickWhileUnmappedThenRestore(TestFrontEnd fe, VirtioNetFrontEnd net, Func<ulong?> restore)
    {
        Assert.False(_host.Backend.Session!.Configured, _host.LogText);
        Assert.Equal(0, _host.Dev.Vf.DmaMapCount);
        Assert.False(_host.Dev.Vf.IsQueueRunning(0) || _host.Dev.Vf.IsQueueRunning(1), $"a ring kept running without its memory\n{_host.LogText}");
        long doorbells = _host.Dev.Vf.DoorbellCount(1);
        net.Send(1, VirtioNetFrontEnd.Frame(64, 10)); // this front-end's second TX frame: buffer slot 1
        Assert.Equal(0UL, fe.GetU64(VhostUserRequest.GET_STATUS) & 0x40); // no NEEDS_RESET: nothing ran
        VirtioNetFrontEnd.Frame(64, 11).CopyTo(_mem.At(GuestMemoryFixture.BufferGpa(1, 1) + VirtioNetFrontEnd.NetHdr, 64));
        Assert.Equal(1, _mem.UsedIdx(1));
        Assert.Equal(doorbells, _host.Dev.Vf.DoorbellCount(1)); // the kick was not relayed to the stopped device
        Assert.Equal(0UL, restore());
        Assert.True(Proc.WaitFor(() => _host.Backend.Session!.Configured), _host.LogText);
        Assert.True(net.Kicks[1].Signal());
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 11), net.Receive(0, 2));
    }

    [Fact]
    public void MemTableShrunkUnderRunningRingsStopsThem()
    {
        _other.Ping(1);
        using var fe = _host.Connect();
        using var net = new VirtioNetFrontEnd(fe, _mem);
        net.Start();
        var f = VirtioNetFrontEnd.Frame(64, 9);
        net.Send(1, f);
        Assert.Equal(f, net.Receive(0, 1));
        var r = _mem.Region;
        Assert.Equal(0UL, fe.SetMemTable([r with { Size = 0x1_0000 }], [_mem.Fd])); // rings at 64 KiB fall outside
        KickWhileUnmappedThenRestore(fe, net, () => fe.SetMemTable([r], [_mem.Fd]));
        _other.Ping(2);
    }

    [Fact]
    public void DescriptorOutsideGuestMemoryRaisesNeedsResetAndOnlyThatDeviceStops()
    {
        _other.Ping(1);
        using (var fe = _host.Connect())
        using (var net = new VirtioNetFrontEnd(fe, _mem))
        {
            net.Start();
            _mem.WriteDesc(1, 0, 0x7000_0000_0000, 64, 0); // a TX buffer nowhere in guest memory
            _mem.PushAvail(1, VirtioNetFrontEnd.Num, 0);
            Assert.True(net.Kicks[1].Signal());
            Assert.True(Proc.WaitFor(() => (fe.GetU64(VhostUserRequest.GET_STATUS) & 0x40) != 0), _host.LogText);
            _other.Ping(2);
        }
        Assert.True(_host.WaitIdle());
        _host.GoodSession(3); // the next front-end finds a clean device
        _other.Ping(3);
    }

    [Fact]
    public void ConnectionFloodIsRefusedWhileTheServedFrontEndKeepsWorking()
    {
        using var fe = _host.Connect();
        using var net = new VirtioNetFrontEnd(fe, _mem);
        net.Start();
        net.Send(1, VirtioNetFrontEnd.Frame(64, 1));
        net.Receive(0, 1);
        Proc.Settle();
        int fds = Proc.FdCount();
        var extra = new List<UnixSocket>();
        for (int i = 0; i < 200; i++)
        {
            if (UnixSocket.TryConnect(_host.SocketPath, out var s, out _))
            {
                extra.Add(s!);
            }
        }
        // Each one is accepted and closed at once: every extra socket sees EOF.
        foreach (var s in extra)
        {
            Assert.True(Interop.Primitives.Poll.WaitReadable(s.Fd, 5000));
            Assert.Equal(0, s.Receive(new byte[1], [], out _));
            s.Dispose();
        }
        Assert.True(_host.Logged("refused a second front-end"));
        var f = VirtioNetFrontEnd.Frame(100, 2);
        net.Send(1, f);
        Assert.Equal(f, net.Receive(0, 2));
        _other.Ping(1);
        Proc.Settle();
        Assert.True(Proc.FdCount() <= fds, $"descriptors grew from {fds} to {Proc.FdCount()}");
    }
}
