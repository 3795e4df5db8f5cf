using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

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
        Assert.False(_dev.Vf.IsQueueRunning(1)); // stopped synchronously by the disable: no worker can take it
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
