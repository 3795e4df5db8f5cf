using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;
using static IfcVdpa.VhostUser.Tests.MigrationFixture;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// Live migration on a device without a dirty log (a software IFC VF built with <c>DirtyLog = false</c>:
/// its LM block keeps ring state only): the back-end still offers logging, and while the front-end logs
/// it runs the rings through the software relay (mediated avail/used areas, buffer and used-ring pages
/// marked by the relay), switching in and out without losing or repeating a buffer.
/// </summary>
public sealed class SoftwareRelayTests : IDisposable
{
    private const ulong EventIdx = 1UL << VirtioFeature.F_RING_EVENT_IDX;

    private readonly MigrationFixture _f = new(dirtyLog: false);

    private TestFrontEnd Fe => _f.Fe;

    public void Dispose() => _f.Dispose();

    private static void Clear(MappedMemory f) => f.Span(0, (int)NeededLog).Clear();

    private void StartLogging(MappedMemory log, ulong features = VirtioNetFrontEnd.Features)
    {
        _f.SetLogBase(log, NeededLog);
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, features | LogAll));
    }

    private void StopLogging(ulong features = VirtioNetFrontEnd.Features) =>
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, features));

    /// <summary>One frame TX -> loopback -> RX: it must arrive as the <paramref name="n"/>-th RX buffer, intact.</summary>
    private void RoundTrip(byte n)
    {
        _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, n));
        Assert.Equal(VirtioNetFrontEnd.Frame(64, n), _f.Net.Receive(0, n));
        Assert.True(Wait.Until(() => _f.Mem.UsedIdx(1) == n), $"TX used idx {_f.Mem.UsedIdx(1)}, want {n}\n{_f.H.LogText}");
    }

    [Fact]
    public void ADeviceWithoutADirtyLogStillOffersLoggingButNoPackedRings()
    {
        using var dev = new RealDevice(address: "sim:09.0", extraFeatures: 1UL << VirtioFeature.F_RING_PACKED, dirtyLog: false);
        Assert.False(dev.Adapter.CanLogDirtyPages);
        Assert.Throws<VdpaNotSupportedException>(() => dev.Adapter.EnableDirtyLog(0x1000_0000_0000, 0x1000));
        using var h = new SessionHarness(dev.Adapter);
        ulong f = h.Fe.GetU64(VhostUserRequest.GET_FEATURES);
        Assert.NotEqual(0UL, f & LogAll);
        Assert.Equal(0UL, f & (1UL << VirtioFeature.F_RING_PACKED)); // the relay mediates split rings only
        Assert.Equal(Proto, h.Fe.GetU64(VhostUserRequest.GET_PROTOCOL_FEATURES) & Proto);

        using var withLog = new RealDevice(address: "sim:0a.0", extraFeatures: 1UL << VirtioFeature.F_RING_PACKED);
        Assert.True(withLog.Adapter.CanLogDirtyPages);
        using var h2 = new SessionHarness(withLog.Adapter);
        Assert.NotEqual(0UL, h2.Fe.GetU64(VhostUserRequest.GET_FEATURES) & (1UL << VirtioFeature.F_RING_PACKED));
    }

    [Fact]
    public void TheRelayMarksTheBuffersTheDeviceWroteAndTheUsedRings()
    {
        using var log = LogFile(NeededLog);
        _f.Net.Start(protocol: Proto);
        RoundTrip(1);
        StartLogging(log);
        Assert.True(_f.H.Logged("switched to the software relay"), _f.H.LogText);
        Assert.True(_f.H.Session.RelayState.Relaying);
        Assert.False(_f.Dev.Vf.DirtyLog.Enabled); // the VF has no log: nothing was programmed
        Assert.Equal(3, _f.Dev.Vf.DmaMapCount);   // guest memory + the two mediated rings
        Clear(log);

        RoundTrip(2);
        var pages = DirtyPages(log);
        // The RX buffer the device wrote and both used rings (the relay wrote them); TX buffers are only read.
        Assert.Contains(Page(GuestMemoryFixture.BufferGpa(0, 1)), pages);
        Assert.Contains(Page(GuestMemoryFixture.RingGpa(0).Used), pages);
        Assert.Contains(Page(GuestMemoryFixture.RingGpa(1).Used), pages);
        Assert.DoesNotContain(Page(GuestMemoryFixture.BufferGpa(1, 1)), pages);
        Assert.Equal(3, pages.Count);
        Assert.True(log.Span(NeededLog, 0x1000).IndexOfAnyExcept((byte)0xA5) < 0, "bytes after the log were written");
        Assert.Equal(2, _f.H.Session.RelayState.RelayedEntries); // one RX and one TX used entry
        Assert.True(_f.H.Session.DirtyLogState.DeviceLogging);
    }

    [Fact]
    public void SwitchingToTheRelayAndBackLosesAndRepeatsNoBuffer()
    {
        using var log = LogFile(NeededLog);
        _f.Net.Start(protocol: Proto);
        for (byte n = 1; n <= 3; n++)
        {
            RoundTrip(n);
        }
        // two frames queued (not kicked) on TX when the switch comes: they must go out exactly once
        _f.Net.QueueTx(1, VirtioNetFrontEnd.Frame(64, 4));
        _f.Net.QueueTx(1, VirtioNetFrontEnd.Frame(64, 5));
        StartLogging(log);
        Assert.True(_f.Net.Kicks[1].Signal());
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 4), _f.Net.Receive(0, 4));
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 5), _f.Net.Receive(0, 5));
        for (byte n = 6; n <= 8; n++)
        {
            RoundTrip(n);
        }
        Assert.Equal(8, _f.Mem.UsedIdx(1));

        // A cancelled migration: LOG_ALL off. The rings go back to the guest's areas; nothing is marked any more.
        _f.Net.QueueTx(1, VirtioNetFrontEnd.Frame(64, 9));
        StopLogging();
        Assert.True(_f.H.Logged("software relay off"), _f.H.LogText);
        Assert.False(_f.H.Session.RelayState.Relaying);
        Assert.Equal(1, _f.Dev.Vf.DmaMapCount); // the mediated rings are unmapped
        Clear(log);
        Assert.True(_f.Net.Kicks[1].Signal());
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 9), _f.Net.Receive(0, 9));
        for (byte n = 10; n <= 12; n++)
        {
            RoundTrip(n);
        }
        Assert.Empty(DirtyPages(log));
        Assert.Equal(12, _f.Mem.UsedIdx(0));
        Assert.Equal(12, _f.Mem.UsedIdx(1));
        Assert.Equal(12u, Fe.GetVringBase(1));
        Assert.Equal(12u, Fe.GetVringBase(0));
        Assert.False(_f.H.Logged("differs from used->idx"), _f.H.LogText);
        Assert.False(_f.H.Logged("restarting the device"), _f.H.LogText);
    }

    [Fact]
    public void GetVringBaseWhileRelayingHandsOverTheExactPositionAndMarksTheUsedRings()
    {
        using var log = LogFile(NeededLog);
        _f.Net.Start(protocol: Proto);
        StartLogging(log);
        for (byte n = 1; n <= 5; n++)
        {
            RoundTrip(n);
        }
        Clear(log);
        Assert.Equal(5u, Fe.GetVringBase(0));
        Assert.Equal(5u, Fe.GetVringBase(1));
        var pages = DirtyPages(log);
        Assert.Contains(Page(GuestMemoryFixture.RingGpa(0).Used), pages);
        Assert.Contains(Page(GuestMemoryFixture.RingGpa(1).Used), pages);
        Assert.Equal(1, _f.Dev.Vf.DmaMapCount); // the stopped rings' mediated areas are released
    }

    [Fact]
    public void WithEventIdxTheGuestIsAskedForEveryKickAndNotifiedAsItAsks()
    {
        using var log = LogFile(NeededLog);
        _f.Net.Start(protocol: Proto, extraFeatures: EventIdx);
        // the guest asks for an interrupt at every used entry (used_event = its last seen idx)
        SetUsedEvent(0, 0);
        SetUsedEvent(1, 0);
        StartLogging(log, VirtioNetFrontEnd.Features | EventIdx);
        for (byte n = 1; n <= 4; n++)
        {
            SetUsedEvent(0, (ushort)(n - 1));
            SetUsedEvent(1, (ushort)(n - 1));
            RoundTrip(n);
            // avail_event in the guest's used ring follows its avail idx: the guest kicks for the next buffer
            Assert.True(Wait.Until(() => AvailEvent(1) == n), $"avail_event {AvailEvent(1)}, want {n}");
        }
    }

    [Fact]
    public void AnAvailIndexJumpWhileRelayedIsTheDevicesRingErrorAndTheConnectionStays()
    {
        using var log = LogFile(NeededLog);
        _f.Net.Start(protocol: Proto);
        StartLogging(log);
        RoundTrip(1);
        _f.Mem.SetAvailIdx(1, (ushort)(_f.Mem.UsedIdx(1) + VirtioNetFrontEnd.Num + 5)); // more than a ring's worth
        Assert.True(_f.Net.Kicks[1].Signal());
        Assert.True(Wait.Until(() => (Fe.GetU64(VhostUserRequest.GET_STATUS) & VirtioStatus.NEEDS_RESET) != 0), _f.H.LogText);
        Assert.True(log.Span(NeededLog, 0x1000).IndexOfAnyExcept((byte)0xA5) < 0, "bytes after the log were written");
        Assert.NotEqual(0UL, Fe.GetU64(VhostUserRequest.GET_FEATURES)); // the session carries on
    }

    private void SetUsedEvent(int q, ushort v) =>
        SharedIndex.Store16(_f.Mem.At(GuestMemoryFixture.RingGpa(q).Avail + 4 + (2 * VirtioNetFrontEnd.Num), 2), 0, v);

    private ushort AvailEvent(int q) =>
        SharedIndex.Load16(_f.Mem.At(GuestMemoryFixture.RingGpa(q).Used + 4 + (8 * VirtioNetFrontEnd.Num), 2), 0);
}
