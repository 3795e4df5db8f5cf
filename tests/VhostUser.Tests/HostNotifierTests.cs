using System.Buffers.Binary;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// A software IFC VF whose notify BAR is offered for mapping through a memfd, the way VFIO offers a
/// BAR through the device fd at its region offset. (The model itself cannot trap stores to shared
/// memory and offers nothing; here the memfd stands in for the device fd, so what the front-end
/// receives can be checked byte for byte.) Optionally the notify_off_multiplier read from config space
/// is patched, to make doorbells share a page.
/// </summary>
internal sealed class MappableNotifyFunction : DelegatingPciFunction
{
    /// <summary>Where BAR2 starts in the memfd (a VFIO region offset stand-in), deliberately not 0.</summary>
    public const ulong FileOffset = 0x3_0000;

    private readonly uint? _multiplier;

    public MappableNotifyFunction(IPciFunction inner, uint? multiplier = null) : base(inner, ownsInner: false)
    {
        _multiplier = multiplier;
        BarSize = inner.FindBar(IfcvfLayout.NotifyBar)!.Value.Size;
        File = MappedMemory.CreateShared("notify-bar", FileOffset + BarSize);
    }

    public ulong BarSize { get; }

    /// <summary>The memfd standing in for the device fd; BAR2 byte 0 is at <see cref="FileOffset"/>.</summary>
    public MappedMemory File { get; }

    public override uint ReadConfig32(int offset) =>
        _multiplier is uint m && offset == IfcvfLayout.CapNotify + VirtioPci.NotifyOffMultiplier ? m : base.ReadConfig32(offset);

    public override PciBarMapping? GetBarMapping(int bar) =>
        bar == IfcvfLayout.NotifyBar ? new PciBarMapping(File.Fd!, FileOffset, BarSize) : null;

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            File.Dispose();
        }
        base.Dispose(disposing);
    }
}

/// <summary>The IFC driver over a (possibly mappable) software IFC VF, with the datapath engine.</summary>
internal sealed class NotifierDevice : IDisposable
{
    public NotifierDevice(bool mappable = true, uint? multiplier = null)
    {
        Vf = new SoftIfcVf(new SoftIfcVfOptions { Address = "sim:09.0" });
        Engine = new VirtioNetEngine(NetBackend.Loopback(), new EngineOptions { Mode = EngineMode.Event });
        Vf.AttachEngine(Engine);
        Function = mappable || multiplier is not null ? new MappableNotifyFunction(Vf, multiplier) : null;
        Adapter = IfcvfAdapter.Probe(Function ?? (IPciFunction)Vf, new IfcvfAdapterOptions { Name = "vdpa-hn" });
    }

    public SoftIfcVf Vf { get; }

    public VirtioNetEngine Engine { get; }

    public MappableNotifyFunction? Function { get; }

    public IfcvfAdapter Adapter { get; }

    /// <summary>Ring q's doorbell offset in BAR2, from the capability: notify cap offset + queue_notify_off * multiplier.</summary>
    public ulong DoorbellOffset(int q)
    {
        uint capOffset = Vf.ReadConfig32(IfcvfLayout.CapNotify + VirtioPci.CapOffset);
        uint multiplier = Vf.ReadConfig32(IfcvfLayout.CapNotify + VirtioPci.NotifyOffMultiplier);
        return capOffset + ((ulong)q * multiplier); // the model's queue_notify_off is the queue index
    }

    public void Dispose()
    {
        Adapter.Dispose();
        Function?.Dispose();
        Vf.AttachEngine(null);
        Engine.Dispose();
        Vf.Dispose();
    }
}

public sealed class HostNotifierTests : IDisposable
{
    private const ulong Page = 4096;
    private const ulong NotifierProtocol = (1UL << VhostUserProtocolFeature.HOST_NOTIFIER) |
        (1UL << VhostUserProtocolFeature.BACKEND_REQ) | (1UL << VhostUserProtocolFeature.BACKEND_SEND_FD);

    private readonly GuestMemoryFixture _mem = new();
    private NotifierDevice? _dev;
    private SessionHarness? _h;
    private VirtioNetFrontEnd? _net;
    private UnixSocket? _channel;

    public void Dispose()
    {
        _net?.Dispose();
        _h?.Dispose();
        _channel?.Dispose();
        _dev?.Dispose();
        _mem.Dispose();
    }

    private SessionHarness Start(NotifierDevice dev)
    {
        _dev = dev;
        _h = new SessionHarness(dev.Adapter);
        _net = new VirtioNetFrontEnd(_h.Fe, _mem);
        return _h;
    }

    /// <summary>QEMU's order: negotiate, back-end channel, memory, rings, DRIVER_OK. Returns the channel's front-end end.</summary>
    private UnixSocket BringUp(ulong protocol = VhostUserProtocolFeature.Supported, bool replyAck = true)
    {
        var fe = _h!.Fe;
        fe.Negotiate(protocol, VirtioNetFrontEnd.Features, replyAck);
        var (ch, peer) = UnixSocket.CreatePair();
        _channel = ch;
        using (peer)
        {
            Assert.Equal(0UL, fe.Request(VhostUserRequest.SET_BACKEND_REQ_FD, [], [peer.Fd]) ?? 0);
        }
        Assert.Equal(0UL, fe.SetMemTable([_mem.Region], [_mem.Fd]) ?? 0);
        if (replyAck)
        {
            _net!.SetupRing(0);
            _net.SetupRing(1);
        }
        else
        {
            for (int q = 0; q < 2; q++)
            {
                var (d, a, u) = GuestMemoryFixture.RingVa(q);
                fe.SetState(VhostUserRequest.SET_VRING_NUM, (uint)q, VirtioNetFrontEnd.Num);
                fe.SetVringAddr((uint)q, d, a, u);
                fe.SetU64(VhostUserRequest.SET_VRING_KICK, (ulong)q, [_net!.Kicks[q].Fd]);
                fe.SetU64(VhostUserRequest.SET_VRING_CALL, (ulong)q, [_net.Calls[q].Fd]);
                fe.SetState(VhostUserRequest.SET_VRING_ENABLE, (uint)q, 1);
            }
        }
        Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_STATUS, 0xF) ?? 0);
        fe.GetU64(VhostUserRequest.GET_FEATURES); // always answered: everything before it was handled
        Assert.True(_h.Session.Configured, _h.LogText);
        return ch;
    }

    private sealed record BackendMessage(uint Request, uint Flags, VringArea Area, List<SafeFd> Fds);

    private static BackendMessage ReadBackend(UnixSocket ch, int timeoutMs = 3000)
    {
        var fds = new List<SafeFd>();
        var h = new byte[12];
        ch.ReceiveExact(h, fds, timeoutMs);
        var (req, flags, size) = VhostUserCodec.ReadHeader(h);
        Assert.Equal((uint)VringArea.WireSize, size);
        var p = new byte[size];
        ch.ReceiveExact(p, fds, timeoutMs);
        return new BackendMessage(req, flags, VringArea.Read(p), fds);
    }

    private static void Ack(UnixSocket ch, ulong value)
    {
        var m = new byte[20];
        VhostUserCodec.WriteHeader(m, (uint)VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG, VhostUserWire.ReplyFlags, 8);
        BinaryPrimitives.WriteUInt64LittleEndian(m.AsSpan(12), value);
        ch.Send(m);
    }

    private static void AssertSameFile(NotifierDevice dev, SafeFd received, ulong offset)
    {
        // A store through the front-end's mapping lands in the BAR's file at the doorbell's offset.
        using var map = MappedMemory.MapFd(received.Fd, Page, offset);
        BinaryPrimitives.WriteUInt32LittleEndian(map.Span(0, 4), 0xC0FFEE01);
        Assert.Equal(0xC0FFEE01u, BinaryPrimitives.ReadUInt32LittleEndian(dev.Function!.File.Span(offset, 4)));
    }

    [Fact]
    public void EachStartedRingGetsItsDoorbellPageAndLosesItWhenStopped()
    {
        var h = Start(new NotifierDevice());
        var ch = BringUp();
        for (int i = 0; i < 2; i++)
        {
            var m = ReadBackend(ch);
            Assert.Equal((uint)VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG, m.Request);
            Assert.Equal(VhostUserWire.FlagVersion | VhostUserWire.FlagNeedReply, m.Flags); // REPLY_ACK negotiated
            Assert.False(m.Area.NoFd);
            int q = m.Area.Index;
            Assert.Equal(i, q); // in ring order
            Assert.Equal(Page, m.Area.Size);
            ulong expected = MappableNotifyFunction.FileOffset + _dev!.DoorbellOffset(q);
            Assert.Equal(expected, m.Area.Offset);
            Assert.Equal(MappableNotifyFunction.FileOffset + ((ulong)q * Page), expected); // page per queue
            var fd = Assert.Single(m.Fds);
            AssertSameFile(_dev, fd, m.Area.Offset);
            fd.Dispose();
            Ack(ch, 0);
        }
        Assert.True(h.Logged("ring 0: host notifier offered"), h.LogText);
        Assert.True(h.Logged("ring 1: host notifier offered"), h.LogText);

        // Kicks still work through the eventfd relay: the front-end may use either path.
        _net!.Send(1, VirtioNetFrontEnd.Frame(60, 3));
        Assert.Equal(VirtioNetFrontEnd.Frame(60, 3), _net.Receive(0, 1));

        // GET_VRING_BASE stops ring 0: its notifier is taken back (after the reply), ring 1 keeps its own.
        h.Fe.GetVringBase(0);
        var rm = ReadBackend(ch);
        Assert.True(rm.Area.NoFd);
        Assert.Equal(0, rm.Area.Index);
        Assert.Equal(VhostUserWire.VringNoFdMask, rm.Area.IndexFlags);
        Assert.Empty(rm.Fds);
        Ack(ch, 0);
        Assert.False(Poll.WaitReadable(ch.Fd, 200));
        Assert.True(h.Logged("ring 0: host notifier removed"), h.LogText);
        Assert.False(h.Logged("refused"), h.LogText);
        Assert.False(h.Logged("back-end channel:"), h.LogText);

        // The session ends: the remaining notifier is removed too (no ack asked: nobody would read it).
        h.Fe.Dispose();
        Assert.True(h.WaitEnded(), h.LogText);
        var end = ReadBackend(ch);
        Assert.True(end.Area.NoFd);
        Assert.Equal(1, end.Area.Index);
        Assert.Equal(VhostUserWire.FlagVersion, end.Flags);
    }

    [Fact]
    public void AdapterReportsTheDoorbellsFileOffsetInTheFunctionsMapping()
    {
        using var dev = new NotifierDevice();
        var a = dev.Adapter.GetVqNotification(1);
        Assert.Equal(IfcvfLayout.NotifyBar, a.Bar);
        Assert.Same(dev.Function!.File.Fd, a.MapFd);
        Assert.Equal(MappableNotifyFunction.FileOffset + dev.DoorbellOffset(1), a.MapOffset);
        Assert.Null(HostNotifierOffers.Refusal(1, a, Page));
    }

    [Fact]
    public void WithoutReplyAckNoAckIsAskedFor()
    {
        var h = Start(new NotifierDevice());
        var ch = BringUp(VhostUserProtocolFeature.Supported & ~(1UL << VhostUserProtocolFeature.REPLY_ACK), replyAck: false);
        for (int i = 0; i < 2; i++)
        {
            var m = ReadBackend(ch);
            Assert.Equal(VhostUserWire.FlagVersion, m.Flags);
            Assert.Single(m.Fds).Dispose();
        }
        h.Fe.GetVringBase(1);
        var rm = ReadBackend(ch);
        Assert.True(rm.Area.NoFd);
        Assert.Equal(1, rm.Area.Index);
        Assert.Equal(VhostUserWire.FlagVersion, rm.Flags);
    }

    [Fact]
    public void AnUnansweredNotifierDoesNotBlockTheSession()
    {
        // The front-end never services its back-end channel (QEMU may be blocked on our reply): requests
        // are still answered at once, and the acks are matched when they finally come.
        var h = Start(new NotifierDevice());
        var ch = BringUp();
        var started = Environment.TickCount64;
        Assert.Equal(0xFUL, h.Fe.GetU64(VhostUserRequest.GET_STATUS));
        h.Fe.GetVringBase(0);
        Assert.Equal(0UL, h.Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, 1, 1));
        Assert.True(Environment.TickCount64 - started < 1000, "the session waited for an ack");
        var msgs = Enumerable.Range(0, 3).Select(_ => ReadBackend(ch)).ToList();
        Assert.Equal([(0, false), (1, false), (0, true)], msgs.Select(m => (m.Area.Index, m.Area.NoFd)));
        foreach (var m in msgs)
        {
            m.Fds.ForEach(f => f.Dispose());
        }
        Ack(ch, 1); // ring 0 refused
        Ack(ch, 0);
        Ack(ch, 0);
        Assert.True(SpinWait.SpinUntil(() => h.Logged("ring 0: the front-end refused the host notifier (1;"), 3000), h.LogText);
        Assert.False(h.Logged("back-end channel:"), h.LogText);
    }

    [Fact]
    public void AGarbledAckClosesOnlyTheBackendChannel()
    {
        var h = Start(new NotifierDevice());
        var ch = BringUp();
        ReadBackend(ch).Fds.ForEach(f => f.Dispose());
        var bad = new byte[20];
        VhostUserCodec.WriteHeader(bad, 99, VhostUserWire.ReplyFlags, 8);
        ch.Send(bad);
        Assert.True(SpinWait.SpinUntil(() => h.Logged("back-end channel: unexpected reply"), 3000), h.LogText);
        h.Fe.GetVringBase(0); // the main connection carries on
        Assert.True(h.Session.Configured);
        Assert.False(h.Logged("ring 0: host notifier removed"), h.LogText); // no channel left to send it on
    }

    [Fact]
    public void NotNegotiatedMeansNoMessage()
    {
        var h = Start(new NotifierDevice());
        var ch = BringUp(VhostUserProtocolFeature.Supported & ~(1UL << VhostUserProtocolFeature.HOST_NOTIFIER));
        h.Fe.GetVringBase(0);
        Assert.False(Poll.WaitReadable(ch.Fd, 300));
        Assert.False(h.Logged("host notifier"), h.LogText);
    }

    [Fact]
    public void WithoutBackendSendFdNothingIsSentAndTheReasonIsLogged()
    {
        var h = Start(new NotifierDevice());
        var ch = BringUp(VhostUserProtocolFeature.Supported & ~(1UL << VhostUserProtocolFeature.BACKEND_SEND_FD));
        Assert.False(Poll.WaitReadable(ch.Fd, 300));
        Assert.True(h.Logged("without BACKEND_REQ and BACKEND_SEND_FD"), h.LogText);
    }

    [Fact]
    public void DoorbellsSharingAPageAreNotOfferedAndSaidSoOnce()
    {
        var h = Start(new NotifierDevice(multiplier: 4));
        var ch = BringUp();
        Assert.False(Poll.WaitReadable(ch.Fd, 300));
        var lines = h.Logs.Where(l => l.Contains("host notifiers not offered", StringComparison.Ordinal)).ToList();
        var line = Assert.Single(lines);
        Assert.Contains("notify_off_multiplier", line, StringComparison.Ordinal);
        // Ring 0 restarts: no second line.
        h.Fe.GetVringBase(0);
        _net!.SetupRing(0);
        Assert.Single(h.Logs, l => l.Contains("host notifiers not offered", StringComparison.Ordinal));
        Assert.False(Poll.WaitReadable(ch.Fd, 200));
    }

    [Fact]
    public void SoftwareDeviceOffersNoMappingAndSaysWhy()
    {
        var h = Start(new NotifierDevice(mappable: false));
        var ch = BringUp();
        Assert.Null(_dev!.Adapter.GetVqNotification(0).MapFd);
        Assert.False(Poll.WaitReadable(ch.Fd, 300));
        Assert.Single(h.Logs, l => l.Contains("no mappable descriptor", StringComparison.Ordinal));
        _net!.Send(1, VirtioNetFrontEnd.Frame(64, 9)); // the relay carries the kicks
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 9), _net.Receive(0, 1));
    }

    [Fact]
    public void RefusalRules()
    {
        using var f = MappedMemory.CreateShared("rules", Page);
        var ok = new VdpaNotificationArea(2, 0x1000, 0x1000) { MapFd = f.Fd, MapOffset = 0x10_0000_1000 };
        Assert.Null(HostNotifierOffers.Refusal(1, ok, Page));
        Assert.Null(HostNotifierOffers.Refusal(1, ok with { Size = 0x2000 }, Page));
        Assert.Contains("no mappable descriptor", HostNotifierOffers.Refusal(1, ok with { MapFd = null }, Page), StringComparison.Ordinal);
        Assert.Contains("does not start a 4096-byte page", HostNotifierOffers.Refusal(1, ok with { MapOffset = 0x10_0000_1004 }, Page), StringComparison.Ordinal);
        Assert.Contains("other rings' doorbells", HostNotifierOffers.Refusal(1, ok with { Size = 4 }, Page), StringComparison.Ordinal);
        using var closed = MappedMemory.CreateShared("closed", Page);
        var fd = SafeFd.Dup(closed.Fd!.Fd);
        fd.Dispose();
        Assert.NotNull(HostNotifierOffers.Refusal(1, ok with { MapFd = fd }, Page));
    }

    [Fact]
    public void HostNotifierIsOfferedWithWhatItNeeds()
    {
        var h = Start(new NotifierDevice());
        ulong p = h.Fe.GetU64(VhostUserRequest.GET_PROTOCOL_FEATURES);
        Assert.Equal(NotifierProtocol, p & NotifierProtocol);
    }
}
