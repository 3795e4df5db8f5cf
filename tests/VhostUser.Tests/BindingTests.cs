using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// The test front-end acting as a virtio-net driver (QEMU-like memory layout: GPA != VA != file offset)
/// over the back-end bound to the real stack: IfcvfAdapter probing a SoftIfcVf with the datapath engine
/// and a loopback backend. Frames sent on TX come back on RX.
/// </summary>
public sealed class VirtioNetFrontEnd : IDisposable
{
    public const uint Num = 256;
    public const int RxBuffers = 16;
    public const int BufLen = 2048;
    public const int NetHdr = 12;

    public VirtioNetFrontEnd(TestFrontEnd fe, GuestMemoryFixture mem, int pairs = 1)
    {
        Fe = fe;
        Mem = mem;
        Kicks = Enumerable.Range(0, pairs * 2).Select(_ => EventFd.Create()).ToArray();
        Calls = Enumerable.Range(0, pairs * 2).Select(_ => EventFd.Create()).ToArray();
    }

    public TestFrontEnd Fe { get; }

    public GuestMemoryFixture Mem { get; }

    public EventFd[] Kicks { get; }

    public EventFd[] Calls { get; }

    private readonly int[] _txNext = new int[16];

    public const ulong Features = (1UL << VirtioFeature.F_VERSION_1) | (1UL << VirtioFeature.NET_F_MAC) | (1UL << 30);

    /// <summary>QEMU's order: negotiate, memory, per ring NUM/BASE/ADDR/KICK/CALL, ENABLE, then DRIVER_OK.</summary>
    public void Start(int rings = 2, bool driverOk = true, ushort rxBase = 0, ushort txBase = 0, bool addMemReg = false)
    {
        ulong offered = Fe.Negotiate(features: Features);
        Assert.Equal(Features, offered & Features);
        if (addMemReg)
        {
            // QEMU with CONFIGURE_MEM_SLOTS: one ADD_MEM_REG per RAM block (here the region split in two).
            var r = Mem.Region;
            ulong half = r.Size / 2;
            Assert.Equal(0UL, Fe.AddMemReg(r with { Size = half }, Mem.Fd));
            Assert.Equal(0UL, Fe.AddMemReg(new MemoryRegionDesc(r.GuestPhysAddr + half, half, r.UserAddr + half, r.MmapOffset + half), Mem.Fd));
        }
        else
        {
            Assert.Equal(0UL, Fe.SetMemTable([Mem.Region], [Mem.Fd]));
        }
        for (int q = 0; q < rings; q++)
        {
            SetupRing(q, q % 2 == 0 ? rxBase : txBase);
        }
        if (driverOk)
        {
            Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_STATUS, 0xF)); // ACK|DRIVER|FEATURES_OK|DRIVER_OK
        }
    }

    public void SetupRing(int q, ushort baseIdx = 0)
    {
        Mem.SetAvailIdx(q, baseIdx);
        Mem.SetUsedIdx(q, baseIdx);
        if (q % 2 == 0)
        {
            for (int i = 0; i < RxBuffers; i++)
            {
                Mem.WriteDesc(q, i, GuestMemoryFixture.BufferGpa(q, i), BufLen, 2 /* WRITE */);
                Mem.PushAvail(q, Num, (ushort)i);
            }
        }
        var (d, a, u) = GuestMemoryFixture.RingVa(q);
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, (uint)q, Num));
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_BASE, (uint)q, baseIdx));
        Assert.Equal(0UL, Fe.SetVringAddr((uint)q, d, a, u));
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_VRING_KICK, (ulong)q, [Kicks[q].Fd]));
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_VRING_CALL, (ulong)q, [Calls[q].Fd]));
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, (uint)q, 1));
    }

    public static byte[] Frame(int len, byte seed)
    {
        var f = new byte[len];
        f[0] = 0x02; // locally administered unicast destination
        f[5] = 0x01;
        f[6] = 0x02;
        f[11] = 0x02;
        f[12] = 0x88;
        f[13] = 0xB5;
        for (int i = 14; i < len; i++)
        {
            f[i] = (byte)(seed + i);
        }
        return f;
    }

    /// <summary>Puts one frame (with a zero virtio-net header) on TX ring <paramref name="q"/> without kicking.</summary>
    public void QueueTx(int q, byte[] frame)
    {
        int slot = _txNext[q]++ % 16;
        ulong gpa = GuestMemoryFixture.BufferGpa(q, slot);
        Mem.At(gpa, NetHdr).Clear();
        frame.CopyTo(Mem.At(gpa + NetHdr, frame.Length));
        Mem.WriteDesc(q, slot, gpa, (uint)(NetHdr + frame.Length), 0);
        Mem.PushAvail(q, Num, (ushort)slot);
    }

    public void Send(int q, byte[] frame)
    {
        QueueTx(q, frame);
        Assert.True(Kicks[q].Signal());
    }

    /// <summary>Waits for RX ring <paramref name="q"/>'s used index to reach <paramref name="idx"/> and returns that frame.</summary>
    public byte[] Receive(int q, ushort idx, int timeoutMs = 5000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while ((ushort)(Mem.UsedIdx(q) - idx) > 0x7FFF)
        {
            Assert.True(Environment.TickCount64 < deadline, $"no frame on ring {q}: used idx {Mem.UsedIdx(q)}, want {idx}");
            Calls[q].WaitReadable(50);
            Calls[q].TryConsume(out _);
        }
        var (id, len) = Mem.UsedElem(q, Num, idx - 1);
        Assert.True(len >= NetHdr && len <= BufLen, $"used len {len}");
        return Mem.At(GuestMemoryFixture.BufferGpa(q, (int)id), (int)len)[NetHdr..].ToArray();
    }

    public void Dispose()
    {
        foreach (var e in Kicks.Concat(Calls))
        {
            e.Dispose();
        }
    }
}

public sealed class BindingTests : IDisposable
{
    private readonly RealDevice _dev = new();
    private readonly GuestMemoryFixture _mem = new();
    private readonly SessionHarness _h;
    private readonly VirtioNetFrontEnd _fe;

    public BindingTests()
    {
        _h = new SessionHarness(_dev.Adapter);
        _fe = new VirtioNetFrontEnd(_h.Fe, _mem);
    }

    public void Dispose()
    {
        _h.Dispose();
        _fe.Dispose();
        _dev.Dispose();
        _mem.Dispose();
    }

    [Fact]
    public void DeviceStartsOnlyAtDriverOkWithGuestPhysicalMappings()
    {
        _fe.Start(driverOk: false);
        Assert.False(_h.Session.Configured);
        Assert.Equal(0, _dev.Vf.DmaMapCount);
        Assert.Equal(0UL, _h.Fe.SetU64(VhostUserRequest.SET_STATUS, 0xF));
        Assert.True(_h.Session.Configured, _h.LogText);
        var e = Assert.Single(_dev.Vf.Dma.Entries);
        Assert.Equal(GuestMemoryFixture.Gpa, e.Iova);
        Assert.Equal(GuestMemoryFixture.Size, e.Size);
        // The device's IOVA GPA+0x40 is the guest's byte at GPA+0x40 (the region's file offset honoured).
        _mem.At(GuestMemoryFixture.Gpa + 0x40, 4).Fill(0xC3);
        Assert.True(_dev.Vf.Dma.TryTranslate(GuestMemoryFixture.Gpa + 0x40, 4, false, out var seen));
        Assert.Equal(new byte[] { 0xC3, 0xC3, 0xC3, 0xC3 }, seen.ToArray());
        Assert.NotEqual(0, _dev.Adapter.GetStatus() & VirtioStatus.DRIVER_OK);
        Assert.True(_dev.Adapter.GetVqReady(0));
        Assert.True(_dev.Adapter.GetVqReady(1));
        Assert.Equal(0xFUL, _h.Fe.GetU64(VhostUserRequest.GET_STATUS));
    }

    [Theory]
    [InlineData(60)]
    [InlineData(1514)]
    public void FramesLoopBackThroughTheDevice(int len)
    {
        _fe.Start();
        for (int i = 1; i <= 5; i++)
        {
            var f = VirtioNetFrontEnd.Frame(len, (byte)i);
            _fe.Send(1, f);
            Assert.Equal(f, _fe.Receive(0, (ushort)i));
        }
        Assert.Equal(5, _mem.UsedIdx(1));
        Assert.True(_h.Session.RelayedKicks >= 1);
    }

    [Fact]
    public void MemoryAddedRegionByRegionCarriesFrames()
    {
        _fe.Start(addMemReg: true);
        Assert.Equal(2, _dev.Vf.DmaMapCount);
        var f = VirtioNetFrontEnd.Frame(300, 5);
        _fe.Send(1, f); // TX ring in the first half, RX buffers in the second
        Assert.Equal(f, _fe.Receive(0, 1));
    }

    [Fact]
    public void SameRegionAddedTwiceIsMappedOnceAndRemovedWithItsLastReference()
    {
        // QEMU with MQ: one vhost device per queue pair on the same connection, each adding every region.
        _fe.Start(addMemReg: true);
        var r = _fe.Mem.Region;
        var firstHalf = r with { Size = r.Size / 2 };
        Assert.Equal(0UL, _fe.Fe.AddMemReg(firstHalf, _fe.Mem.Fd));
        Assert.Equal(2, _dev.Vf.DmaMapCount);
        var f = VirtioNetFrontEnd.Frame(200, 9);
        _fe.Send(1, f);
        Assert.Equal(f, _fe.Receive(0, 1));
        // The first removal only drops a reference: traffic still flows through that region.
        Assert.Equal(0UL, _fe.Fe.RemMemReg(firstHalf));
        Assert.Equal(2, _dev.Vf.DmaMapCount);
        _fe.Send(1, f);
        Assert.Equal(f, _fe.Receive(0, 1));
        // A region that overlaps without being identical is still refused.
        Assert.NotEqual(0UL, _fe.Fe.AddMemReg(firstHalf with { Size = r.Size / 4 }, _fe.Mem.Fd) ?? 0UL);
    }

    [Fact]
    public void GetVringBaseStopsTheRingAndReportsTheDeviceIndex()
    {
        _fe.Start();
        for (int i = 1; i <= 3; i++)
        {
            _fe.Send(1, VirtioNetFrontEnd.Frame(60, (byte)i));
            _fe.Receive(0, (ushort)i);
        }
        Assert.Equal(3u, _h.Fe.GetVringBase(1));
        Assert.False(_dev.Adapter.GetVqReady(1));
        Assert.True(_dev.Adapter.GetVqReady(0));
        Assert.Equal(3u, _h.Fe.GetVringBase(0));
        Assert.True(_h.Logged("ring 1 stopped at 3"), _h.LogText);

        // Restart both rings from those bases (a guest driver reload): traffic continues.
        _fe.SetupRing(0, 3);
        _fe.SetupRing(1, 3);
        var f = VirtioNetFrontEnd.Frame(100, 7);
        _fe.Send(1, f);
        Assert.Equal(f, _fe.Receive(0, 4));
    }

    [Fact]
    public void KickSentBeforeDriverOkIsNotLost()
    {
        _fe.Start(driverOk: false);
        var f = VirtioNetFrontEnd.Frame(80, 3);
        _fe.Send(1, f);
        Assert.Equal(0UL, _h.Fe.SetU64(VhostUserRequest.SET_STATUS, 0xF));
        Assert.Equal(f, _fe.Receive(0, 1));
    }

    [Fact]
    public void SetVringEnableStopsAndRestartsOneRingWhileRunning()
    {
        _fe.Start();
        _fe.Send(1, VirtioNetFrontEnd.Frame(60, 1));
        _fe.Receive(0, 1);
        Assert.Equal(0UL, _h.Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 1, 0));
        Assert.False(_dev.Adapter.GetVqReady(1));
        Assert.True(_h.Session.Configured);
        _fe.Send(1, VirtioNetFrontEnd.Frame(60, 2)); // queued while TX is disabled: nothing moves
        Thread.Sleep(200);
        Assert.Equal(1, _mem.UsedIdx(0));
        Assert.Equal(0UL, _h.Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 1, 1));
        Assert.True(_dev.Adapter.GetVqReady(1));
        _fe.Kicks[1].Signal();
        Assert.Equal(VirtioNetFrontEnd.Frame(60, 2), _fe.Receive(0, 2));
    }

    [Fact]
    public void SetMemTableWhileRunningRemapsAndRestarts()
    {
        _fe.Start();
        _fe.Send(1, VirtioNetFrontEnd.Frame(60, 1));
        _fe.Receive(0, 1);
        using var extra = MappedMemory.CreateShared("vu-test-hotplug", 0x10_0000);
        var hotplug = new MemoryRegionDesc(0x1_0000_0000, 0x10_0000, 0x7f20_0000_0000, 0);
        Assert.Equal(0UL, _h.Fe.SetMemTable([_mem.Region, hotplug], [_mem.Fd, extra.Fd!.Fd]));
        Assert.True(_h.Logged("(device restarted)"), _h.LogText);
        Assert.True(_h.Session.Configured);
        Assert.Equal(2, _dev.Vf.DmaMapCount);
        var f = VirtioNetFrontEnd.Frame(200, 9);
        _fe.Send(1, f);
        Assert.Equal(f, _fe.Receive(0, 2));
        // The same table again is recognised and changes nothing.
        Assert.Equal(0UL, _h.Fe.SetMemTable([_mem.Region, hotplug], [_mem.Fd, extra.Fd!.Fd]));
        Assert.True(_h.Logged("unchanged"), _h.LogText);
    }

    [Fact]
    public void CallFdCanBeReplacedWhileRunning()
    {
        _fe.Start();
        using var newCall = EventFd.Create();
        Assert.Equal(0UL, _h.Fe.SetU64(VhostUserRequest.SET_VRING_CALL, 0, [newCall.Fd]));
        _fe.Calls[0].TryConsume(out _);
        _fe.Send(1, VirtioNetFrontEnd.Frame(60, 1));
        Assert.True(newCall.WaitReadable(5000), "the RX interrupt should reach the new call fd");
        Assert.False(_fe.Calls[0].WaitReadable(100));
        Assert.Equal(1, _mem.UsedIdx(0));
    }

    [Fact]
    public void DisconnectResetsTheDeviceAndUnmapsEverything()
    {
        _fe.Start();
        _fe.Send(1, VirtioNetFrontEnd.Frame(60, 1));
        _fe.Receive(0, 1);
        Assert.Equal(1, _dev.Vf.DmaMapCount);
        _h.Fe.Socket.Shutdown();
        Assert.True(_h.WaitEnded(), _h.LogText);
        Assert.Equal(0, _dev.Vf.DmaMapCount);
        Assert.Equal(0, _dev.Adapter.GetStatus());
        Assert.False(_dev.Adapter.GetVqReady(0));
        Assert.True(_h.Logged("front-end disconnected"), _h.LogText);
    }

    [Fact]
    public void SetStatusZeroStopsTheDevice()
    {
        _fe.Start();
        Assert.Equal(0UL, _h.Fe.SetU64(VhostUserRequest.SET_STATUS, 0));
        Assert.False(_h.Session.Configured);
        Assert.Equal(0, _dev.Vf.DmaMapCount);
        Assert.Equal(0, _dev.Adapter.GetStatus());
    }

    [Fact]
    public void DeviceGetsTheNegotiatedFeaturesWithAccessPlatform()
    {
        _fe.Start();
        ulong drv = _dev.Adapter.GetDriverFeatures();
        Assert.True(VirtioFeature.Has(drv, VirtioFeature.F_VERSION_1));
        Assert.True(VirtioFeature.Has(drv, VirtioFeature.F_ACCESS_PLATFORM));
        Assert.False(VirtioFeature.Has(drv, VirtioFeature.F_PROTOCOL_FEATURES));
        Assert.False(VirtioFeature.Has(drv, VirtioFeature.NET_F_MRG_RXBUF)); // not acked by this front-end
    }
}

public sealed class MultiQueueBindingTests : IDisposable
{
    private readonly RealDevice _dev = new(pairs: 2);
    private readonly GuestMemoryFixture _mem = new();
    private readonly SessionHarness _h;
    private readonly VirtioNetFrontEnd _fe;

    public MultiQueueBindingTests()
    {
        _h = new SessionHarness(_dev.Adapter);
        _fe = new VirtioNetFrontEnd(_h.Fe, _mem, pairs: 2);
    }

    public void Dispose()
    {
        _h.Dispose();
        _fe.Dispose();
        _dev.Dispose();
        _mem.Dispose();
    }

    [Fact]
    public void SecondPairIsEnabledWhileRunningAndCarriesFrames()
    {
        Assert.Equal(2UL, _h.Fe.GetU64(VhostUserRequest.GET_QUEUE_NUM));
        _fe.Start(rings: 2);
        Assert.False(_dev.Adapter.GetVqReady(2));
        // The guest raises its queue count (ethtool -L combined 2): QEMU sets up and enables pair 1.
        _fe.SetupRing(2);
        _fe.SetupRing(3);
        Assert.True(_dev.Adapter.GetVqReady(2));
        Assert.True(_dev.Adapter.GetVqReady(3));
        var f0 = VirtioNetFrontEnd.Frame(90, 1);
        _fe.Send(1, f0);
        Assert.Equal(f0, _fe.Receive(0, 1));
        var f1 = VirtioNetFrontEnd.Frame(90, 2);
        _fe.Send(3, f1);
        Assert.Equal(1, WaitTx(3, 1));
        Assert.Equal(f1, _fe.Receive(2, 1)); // loopback answers on the same pair
        // And back down to one pair: rings 2 and 3 stop, pair 0 keeps working.
        Assert.Equal(0UL, _h.Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 2, 0));
        Assert.Equal(0UL, _h.Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 3, 0));
        Assert.False(_dev.Adapter.GetVqReady(2));
        Assert.False(_dev.Adapter.GetVqReady(3));
        var f2 = VirtioNetFrontEnd.Frame(90, 3);
        _fe.Send(1, f2);
        Assert.Equal(f2, _fe.Receive(0, 2));
    }

    private int WaitTx(int q, int want)
    {
        var deadline = Environment.TickCount64 + 5000;
        while (_mem.UsedIdx(q) < want && Environment.TickCount64 < deadline)
        {
            Thread.Sleep(5);
        }
        return _mem.UsedIdx(q);
    }
}
