using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;
using static IfcVdpa.Virtio.VirtioFeature;
using S = IfcVdpa.Virtio.VirtioStatus;

namespace IfcVdpa.Vduse.Tests;

/// <summary>
/// The session answering the kernel for a real IFC VF adapter on a software VF: status changes drive the
/// device, hostile or malformed requests get FAILED replies logged once, the IOTLB and kicks reach the device.
/// </summary>
public sealed class VduseSessionTests : IDisposable
{
    private const ulong RegionBase = 0x10_0000;
    private readonly SoftIfcVf _vf = new(new SoftIfcVfOptions { QueuePairs = 1 });
    private readonly IfcvfAdapter _dev;
    private readonly FakeKernel _k = new();
    private readonly VduseSession _s;
    private readonly List<string> _log = [];
    private uint _id;

    public VduseSessionTests()
    {
        _dev = IfcvfAdapter.Probe(_vf);
        Spec = VduseDeviceSpec.From(_dev, "vduse0");
        _k.AddRegion(RegionBase, 0x10_0000);
        for (uint q = 0; q < 2; q++)
        {
            ulong b = RegionBase + (q * 0x1_0000);
            _k.Queues[q] = new VduseVqInfoView(q, 256, b, b + 0x1000, b + 0x2000, true, 0, 0, 0, 0, 0);
        }
        _k.DriverFeatures = Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(NET_F_MAC) | Bit(NET_F_STATUS);
        _s = new VduseSession(_dev, _k, Spec, l => { lock (_log) { _log.Add(l); } });
    }

    private VduseDeviceSpec Spec { get; }

    private (bool Ok, byte[] Reply) Send(VduseRequestType type, params byte[] union)
    {
        var m = new byte[VduseMessages.Size];
        uint id = ++_id;
        VduseMessages.EncodeRequest(m, type, id, union);
        var r = new byte[VduseMessages.Size];
        Assert.True(_s.Handle(m, r));
        Assert.Equal(id, BitConverter.ToUInt32(r, 0));
        return (BitConverter.ToUInt32(r, 4) == VduseMessages.ResultOk, r);
    }

    private bool SetStatus(byte s) => Send(VduseRequestType.SetStatus, s).Ok;

    private static byte[] Range(ulong start, ulong last)
    {
        var u = new byte[16];
        BitConverter.TryWriteBytes(u.AsSpan(0, 8), start);
        BitConverter.TryWriteBytes(u.AsSpan(8, 8), last);
        return u;
    }

    private int LogCount(string fragment)
    {
        lock (_log)
        {
            return _log.Count(l => l.Contains(fragment, StringComparison.Ordinal));
        }
    }

    private static void WaitFor(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            Thread.Yield();
        }
    }

    private void BringUp()
    {
        Assert.True(SetStatus(S.ACKNOWLEDGE));
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER));
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK));
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK));
    }

    [Fact]
    public void SpecComesFromTheDevice()
    {
        Assert.Equal(1u, Spec.DeviceId);
        Assert.Equal(0x8086u, Spec.VendorId);
        Assert.Equal(2, Spec.VqNum);              // one pair, no control queue
        Assert.Equal(1024, Spec.VqMaxSize);
        Assert.True(Has(Spec.Features, F_ACCESS_PLATFORM));
        Assert.False(Has(Spec.Features, NET_F_CTRL_VQ));
        var cfg = new byte[Spec.Config.Length];
        _dev.GetConfig(0, cfg);
        Assert.Equal(cfg, Spec.Config);
    }

    [Fact]
    public void DriverOkStartsTheDeviceAndResetStopsIt()
    {
        BringUp();
        Assert.True(_s.Running);
        Assert.Equal(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK, _dev.GetStatus());
        Assert.Equal(_k.DriverFeatures & Spec.DeviceFeatures, _dev.GetDriverFeatures() & _k.DriverFeatures);
        Assert.Equal(1, _s.MappedRegions);
        Assert.Equal(1, _dev.DmaMapCount);
        Assert.True(_dev.GetVqReady(0) && _dev.GetVqReady(1));
        int[] kickFds;
        lock (_k.KickFds)
        {
            Assert.Equal([0u, 1u], _k.KickFds.Select(k => k.Index).ToArray());
            kickFds = _k.KickFds.Select(k => k.Fd).ToArray();
        }

        // a kick through the eventfd the kernel was given reaches the device; with no region at IOVA 0 yet
        // (virtio_vdpa's bounce map comes with the first buffer) the IOTLB is scanned again first
        int queries = _k.IotlbQueries;
        using (var kick = EventFd.Adopt(SafeFd.Dup(kickFds[1])))
        {
            kick.Signal();
        }
        WaitFor(() => _s.KicksRelayed >= 1, "the kick relay");
        Assert.Equal(1, _s.KickRescans);
        Assert.True(_k.IotlbQueries > queries);

        Assert.True(SetStatus(0));
        Assert.False(_s.Running);
        Assert.Equal(0, _dev.GetStatus());
        Assert.Equal(0, _s.MappedRegions);
        Assert.Equal(0, _dev.DmaMapCount);
        lock (_k.KickFds)
        {
            Assert.Contains((0u, -1), _k.KickFds);
            Assert.Contains((1u, -1), _k.KickFds);
        }
    }

    [Fact]
    public void LinkChangeReachesTheKernelConfigAndRaisesAConfigInterrupt()
    {
        BringUp();
        _vf.SetLinkUp(false);
        WaitFor(() => Volatile.Read(ref _k.ConfigIrqs) > 0, "a config interrupt");
        byte[] last;
        lock (_k.ConfigWrites)
        {
            last = _k.ConfigWrites[^1];
        }
        Assert.Equal(0, last[6] & 1);            // virtio_net_config.status: LINK_UP clear
        _vf.SetLinkUp(true);
        WaitFor(() => { lock (_k.ConfigWrites) { return (_k.ConfigWrites[^1][6] & 1) == 1; } }, "link up in the kernel's config");
        WaitFor(() => Volatile.Read(ref _k.ConfigIrqs) >= 2, "the second config interrupt"); // SET_CONFIG comes first, then the interrupt
    }

    [Fact]
    public void UnknownRequestTypeGetsAFailedReplyLoggedOnce()
    {
        var m = new byte[VduseMessages.Size];
        var r = new byte[VduseMessages.Size];
        for (uint id = 100; id < 103; id++)
        {
            VduseMessages.EncodeRequest(m, (VduseRequestType)77, id, []);
            Assert.True(_s.Handle(m, r));
            Assert.Equal(id, BitConverter.ToUInt32(r, 0));
            Assert.Equal(VduseMessages.ResultFailed, BitConverter.ToUInt32(r, 4));
        }
        Assert.Equal(1, LogCount("unknown type 77"));
        Assert.True(SetStatus(S.ACKNOWLEDGE)); // the session goes on
    }

    [Fact]
    public void BadIotlbRangeGetsAFailedReplyLoggedOnceAndAGoodOneRemaps()
    {
        BringUp();
        Assert.False(Send(VduseRequestType.UpdateIotlb, Range(0x2000, 0x1000)).Ok);
        Assert.False(Send(VduseRequestType.UpdateIotlb, Range(ulong.MaxValue, 0)).Ok);
        Assert.Equal(1, LogCount("bad range"));
        Assert.Equal(1, _s.MappedRegions);
        Assert.True(Send(VduseRequestType.UpdateIotlb, Range(0, ulong.MaxValue)).Ok);
        Assert.Equal(1, _s.MappedRegions); // unmapped and mapped again
        Assert.True(_s.Running);
    }

    [Fact]
    public void VqStateRequestsAreCheckedAndAnswered()
    {
        BringUp();
        var bad = new byte[4];
        BitConverter.TryWriteBytes(bad, 9u);
        Assert.False(Send(VduseRequestType.GetVqState, bad).Ok);
        Assert.False(Send(VduseRequestType.GetVqState, bad).Ok);
        Assert.Equal(1, LogCount("GET_VQ_STATE for vq 9"));
        var (ok, reply) = Send(VduseRequestType.GetVqState, 1, 0, 0, 0);
        Assert.True(ok);
        Assert.Equal(1u, BitConverter.ToUInt32(reply, 24));
        Assert.Equal(0, BitConverter.ToUInt16(reply, 28)); // nothing consumed yet
    }

    [Fact]
    public void FeaturesNotOfferedAreRefusedAtFeaturesOk()
    {
        _k.DriverFeatures |= Bit(NET_F_CTRL_VQ);
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER));
        Assert.False(SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK));
        Assert.Equal(0UL, _s.NegotiatedFeatures);
        Assert.Equal(1, LogCount("not offered"));
    }

    [Fact]
    public void DriverOkWithABadQueueIsRefusedAndLeavesNothingRunning()
    {
        _k.Queues[1] = _k.Queues[1] with { Num = 200 }; // split ring: not a power of 2
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK));
        Assert.False(SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK));
        Assert.False(_s.Running);
        Assert.Equal(0, _s.MappedRegions);
        Assert.Equal(0, _dev.DmaMapCount);
        Assert.Equal(1, LogCount("not a power of 2"));
        Assert.Null(VduseSession.CheckQueue(0, _k.Queues[0], packed: false, 1024));
        Assert.NotNull(VduseSession.CheckQueue(0, _k.Queues[0] with { Num = 2048 }, packed: false, 1024));
        Assert.NotNull(VduseSession.CheckQueue(0, _k.Queues[0] with { DescAddr = 0 }, packed: false, 1024));
        Assert.Null(VduseSession.CheckQueue(0, _k.Queues[0] with { Num = 200 }, packed: true, 1024));
    }

    [Fact]
    public void ShortMessageIsRefusedWithItsIdWhenItHasOne()
    {
        var r = new byte[VduseMessages.Size];
        var m = new byte[20];
        BitConverter.TryWriteBytes(m.AsSpan(4, 4), 55u);
        Assert.True(_s.Handle(m, r));
        Assert.Equal(55u, BitConverter.ToUInt32(r, 0));
        Assert.Equal(VduseMessages.ResultFailed, BitConverter.ToUInt32(r, 4));
        Assert.False(_s.Handle(new byte[3], r));
        Assert.Equal(1, LogCount("kernel message refused"));
    }

    [Fact]
    public void WriteOnlyRegionIsNotMappedAndSaysWhy()
    {
        _k.AddRawRegion(0, 0xfff, 2, 0);
        BringUp();
        Assert.Equal(1, _s.MappedRegions); // only the read-write one
        Assert.Equal(1, LogCount("access 2"));
    }

    [Fact]
    public void AdjacentRegionsBecomeOneMappingAndAnUpdateInsideRemapsTheWholeRun()
    {
        _k.AddRegion(RegionBase + 0x10_0000, 0x20_0000);   // follows the first region in IOVA (a hugepage behind it)
        BringUp();
        Assert.Equal(1, _s.MappedRegions);
        Assert.Equal(1, _dev.DmaMapCount);
        Assert.True(Send(VduseRequestType.UpdateIotlb, Range(RegionBase + 0x18_0000, RegionBase + 0x18_0fff)).Ok);
        Assert.Equal(1, _s.MappedRegions); // the whole run again, not just the part the update named
        Assert.True(_s.Running);
    }

    [Fact]
    public void RingOutsideTheMappedRegionsIsNamedAtDriverOkAndTheQueueNeedsReset()
    {
        // A userspace front-end on vhost-vdpa giving ring addresses in another IOVA space than its DMA maps
        // (DPDK in IOVA-as-PA mode): the TX ring lies in no mapped region.
        ulong va = 0x1_0819_f000;
        _k.Queues[1] = new VduseVqInfoView(1, 256, va, va + 0x1000, va + 0x2000, true, 0, 0, 0, 0, 0);
        using var engine = new VirtioNetEngine(NetBackend.Loopback(), new EngineOptions());
        _vf.AttachEngine(engine);
        BringUp();
        Assert.Equal(1, LogCount("vq 1: descriptor table [0x10819f000, +0x1000) is not inside one mapped IOTLB region; mapped: [0x100000, 0x1fffff]"));
        Assert.Equal(0, LogCount("vq 0:"));
        using (var kick = EventFd.Adopt(SafeFd.Dup(_k.KickFds.Single(k => k.Index == 1).Fd)))
        {
            kick.Signal();
        }
        WaitFor(() => (_dev.GetStatus() & S.NEEDS_RESET) != 0, "NEEDS_RESET from the queue whose ring is not mapped");
        Assert.True(_s.Running); // the session keeps answering the kernel
        Assert.True(SetStatus(0));
        _vf.AttachEngine(null);
    }

    public void Dispose()
    {
        _s.Dispose();
        _dev.Dispose();
        _vf.Dispose();
        _k.Dispose();
    }
}
