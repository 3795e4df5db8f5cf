using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// Live migration on a device without a dirty log (a software IFC VF built with <c>DirtyLog = false</c>:
/// its LM block keeps ring state only): the back-end still offers logging, and while the front-end logs
/// it runs the rings through the software relay (mediated avail/used areas, buffer and used-ring pages
/// marked by the relay), switching in and out without losing or repeating a buffer.
/// </summary>
public sealed class SoftwareRelayTests : IDisposable
{
    private const ulong Proto = VhostUserProtocolFeature.Supported | VhostUserProtocolFeature.Migration;
    private const ulong LogAll = 1UL << VirtioFeature.F_LOG_ALL;
    private const ulong EventIdx = 1UL << VirtioFeature.F_RING_EVENT_IDX;
    private const ulong NeededLog = (GuestMemoryFixture.Gpa + GuestMemoryFixture.Size) / 4096 / 8;

    private readonly RealDevice _dev = new(dirtyLog: false);
    private readonly GuestMemoryFixture _mem = new();
    private readonly SessionHarness _h;
    private readonly VirtioNetFrontEnd _net;

    public SoftwareRelayTests()
    {
        _h = new SessionHarness(_dev.Adapter);
        _net = new VirtioNetFrontEnd(_h.Fe, _mem);
    }

    private TestFrontEnd Fe => _h.Fe;

    public void Dispose()
    {
        _h.Dispose();
        _net.Dispose();
        _dev.Dispose();
        _mem.Dispose();
    }

    private static MappedMemory LogFile(ulong size)
    {
        var f = MappedMemory.CreateShared("vhost-log", size + 0x1000);
        f.Span(0, (int)f.Length).Fill(0xA5);
        f.Span(0, (int)size).Clear();
        return f;
    }

    private static List<ulong> DirtyPages(MappedMemory f)
    {
        var pages = new List<ulong>();
        var b = f.Span(0, (int)NeededLog);
        for (int i = 0; i < b.Length; i++)
        {
            for (int bit = 0; bit < 8; bit++)
            {
                if ((Volatile.Read(ref b[i]) & (1 << bit)) != 0)
                {
                    pages.Add(((ulong)i * 8) + (ulong)bit);
                }
            }
        }
        return pages;
    }

    private static void Clear(MappedMemory f) => f.Span(0, (int)NeededLog).Clear();

    private static ulong Page(ulong gpa) => gpa / 4096;

    private void StartLogging(MappedMemory log, ulong features = VirtioNetFrontEnd.Features)
    {
        var p = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(p, NeededLog);
        Fe.Send(VhostUserRequest.SET_LOG_BASE, p, [log.Fd!.Fd]);
        Assert.Equal(8, Fe.ReadReply(VhostUserRequest.SET_LOG_BASE).Length);
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, features | LogAll));
    }

    private void StopLogging(ulong features = VirtioNetFrontEnd.Features) =>
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, features));

    /// <summary>One frame TX -> loopback -> RX: it must arrive as the <paramref name="n"/>-th RX buffer, intact.</summary>
    private void RoundTrip(byte n)
    {
        _net.Send(1, VirtioNetFrontEnd.Frame(64, n));
        Assert.Equal(VirtioNetFrontEnd.Frame(64, n), _net.Receive(0, n));
        Assert.True(Wait.Until(() => _mem.UsedIdx(1) == n), $"TX used idx {_mem.UsedIdx(1)}, want {n}\n{_h.LogText}");
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
        _net.Start(protocol: Proto);
        RoundTrip(1);
        StartLogging(log);
        Assert.True(_h.Logged("switched to the software relay"), _h.LogText);
        Assert.True(_h.Session.RelayState.Relaying);
        Assert.False(_dev.Vf.DirtyLog.Enabled); // the VF has no log: nothing was programmed
        Assert.Equal(3, _dev.Vf.DmaMapCount);   // guest memory + the two mediated rings
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
        Assert.Equal(2, _h.Session.RelayState.RelayedEntries); // one RX and one TX used entry
        Assert.True(_h.Session.DirtyLogState.DeviceLogging);
    }

    [Fact]
    public void SwitchingToTheRelayAndBackLosesAndRepeatsNoBuffer()
    {
        using var log = LogFile(NeededLog);
        _net.Start(protocol: Proto);
        for (byte n = 1; n <= 3; n++)
        {
            RoundTrip(n);
        }
        // two frames queued (not kicked) on TX when the switch comes: they must go out exactly once
        _net.QueueTx(1, VirtioNetFrontEnd.Frame(64, 4));
        _net.QueueTx(1, VirtioNetFrontEnd.Frame(64, 5));
        StartLogging(log);
        Assert.True(_net.Kicks[1].Signal());
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 4), _net.Receive(0, 4));
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 5), _net.Receive(0, 5));
        for (byte n = 6; n <= 8; n++)
        {
            RoundTrip(n);
        }
        Assert.Equal(8, _mem.UsedIdx(1));

        // A cancelled migration: LOG_ALL off. The rings go back to the guest's areas; nothing is marked any more.
        _net.QueueTx(1, VirtioNetFrontEnd.Frame(64, 9));
        StopLogging();
        Assert.True(_h.Logged("software relay off"), _h.LogText);
        Assert.False(_h.Session.RelayState.Relaying);
        Assert.Equal(1, _dev.Vf.DmaMapCount); // the mediated rings are unmapped
        Clear(log);
        Assert.True(_net.Kicks[1].Signal());
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 9), _net.Receive(0, 9));
        for (byte n = 10; n <= 12; n++)
        {
            RoundTrip(n);
        }
        Assert.Empty(DirtyPages(log));
        Assert.Equal(12, _mem.UsedIdx(0));
        Assert.Equal(12, _mem.UsedIdx(1));
        Assert.Equal(12u, Fe.GetVringBase(1));
        Assert.Equal(12u, Fe.GetVringBase(0));
        Assert.False(_h.Logged("differs from used->idx"), _h.LogText);
        Assert.False(_h.Logged("restarting the device"), _h.LogText);
    }

    [Fact]
    public void GetVringBaseWhileRelayingHandsOverTheExactPositionAndMarksTheUsedRings()
    {
        using var log = LogFile(NeededLog);
        _net.Start(protocol: Proto);
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
        Assert.Equal(1, _dev.Vf.DmaMapCount); // the stopped rings' mediated areas are released
    }

    [Fact]
    public void WithEventIdxTheGuestIsAskedForEveryKickAndNotifiedAsItAsks()
    {
        using var log = LogFile(NeededLog);
        _net.Start(protocol: Proto, extraFeatures: EventIdx);
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
        _net.Start(protocol: Proto);
        StartLogging(log);
        RoundTrip(1);
        _mem.SetAvailIdx(1, (ushort)(_mem.UsedIdx(1) + VirtioNetFrontEnd.Num + 5)); // more than a ring's worth
        Assert.True(_net.Kicks[1].Signal());
        Assert.True(Wait.Until(() => (Fe.GetU64(VhostUserRequest.GET_STATUS) & VirtioStatus.NEEDS_RESET) != 0), _h.LogText);
        Assert.True(log.Span(NeededLog, 0x1000).IndexOfAnyExcept((byte)0xA5) < 0, "bytes after the log were written");
        Assert.NotEqual(0UL, Fe.GetU64(VhostUserRequest.GET_FEATURES)); // the session carries on
    }

    private void SetUsedEvent(int q, ushort v) =>
        SharedIndex.Store16(_mem.At(GuestMemoryFixture.RingGpa(q).Avail + 4 + (2 * VirtioNetFrontEnd.Num), 2), 0, v);

    private ushort AvailEvent(int q) =>
        SharedIndex.Load16(_mem.At(GuestMemoryFixture.RingGpa(q).Used + 4 + (8 * VirtioNetFrontEnd.Num), 2), 0);
}
