using System.Buffers.Binary;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;
using static IfcVdpa.VhostUser.Tests.MigrationFixture;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// The back-end half of live migration over the real stack (IfcvfAdapter on a software IFC VF with its
/// engine): negotiation, SET_LOG_BASE, the hardware dirty log (the VF marks RX buffers through the LM
/// block), used rings marked at GET_VRING_BASE, log replacement, LOG_ALL off, hostile logs, SEND_RARP,
/// and suspend/resume on the adapter.
/// </summary>
public sealed class LiveMigrationTests : IDisposable
{
    private readonly string _pcap = Path.Combine(Path.GetTempPath(), $"lm-{Environment.ProcessId}-{Guid.NewGuid():N}.pcap");
    private readonly MigrationFixture _f = new();

    private TestFrontEnd Fe => _f.Fe;

    public void Dispose()
    {
        _f.Dispose();
        File.Delete(_pcap);
    }

    private static void AssertGuardsIntact(MappedMemory f, ulong size, ulong offset)
    {
        Assert.True(f.Span(0, (int)offset).IndexOfAnyExcept((byte)0xA5) < 0, "bytes before the log were written");
        Assert.True(f.Span(offset + size, (int)(f.Length - offset - size)).IndexOfAnyExcept((byte)0xA5) < 0, "bytes after the log were written");
    }

    /// <summary>QEMU's migration start: SET_LOG_BASE, SET_FEATURES + LOG_ALL, SET_VRING_ADDR + F_LOG per ring.</summary>
    private void StartLogging(MappedMemory f, ulong size, ulong offset)
    {
        Assert.Equal(0UL, _f.SetLogBase(f, size, offset));
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, VirtioNetFrontEnd.Features | LogAll));
        for (int q = 0; q < 2; q++)
        {
            var (d, a, u) = GuestMemoryFixture.RingVa(q);
            Assert.Equal(0UL, SetVringAddrLog((uint)q, d, a, u, GuestMemoryFixture.RingGpa(q).Used));
        }
    }

    private ulong? SetVringAddrLog(uint q, ulong desc, ulong avail, ulong used, ulong logGpa)
    {
        var p = new byte[40];
        new VringAddr(q, VhostUserWire.VringFlagLog, desc, used, avail, logGpa).Write(p);
        return Fe.Request(VhostUserRequest.SET_VRING_ADDR, p);
    }

    [Fact]
    public void NegotiationOffersLogAllLogShmfdAndRarp()
    {
        ulong f = Fe.GetU64(VhostUserRequest.GET_FEATURES);
        Assert.NotEqual(0UL, f & LogAll);
        ulong p = Fe.GetU64(VhostUserRequest.GET_PROTOCOL_FEATURES);
        Assert.Equal(Proto, p);
        // LOG_ALL never reaches the device: it is a vhost feature.
        _f.Net.Start(protocol: Proto, extraFeatures: LogAll);
        Assert.Equal(0UL, _f.Dev.Adapter.GetDriverFeatures() & LogAll);
    }

    [Fact]
    public void RxFramesMarkExactlyTheirPagesAndGetVringBaseMarksTheUsedRings()
    {
        const ulong offset = 0x1008; // not page-aligned: the bitmap starts inside the mapping's first page
        using var log = LogFile(NeededLog, offset);
        _f.Net.Start(protocol: Proto);
        StartLogging(log, NeededLog, offset);
        Assert.True(_f.Dev.Vf.DirtyLog.Enabled);
        Assert.Empty(DirtyPages(log, NeededLog, offset)); // a restart of the rings would have marked them

        _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, 1));
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 1), _f.Net.Receive(0, 1));
        // Only the RX buffer the VF wrote: TX buffers are read, used rings are marked at stop.
        Assert.Equal([Page(GuestMemoryFixture.BufferGpa(0, 0))], DirtyPages(log, NeededLog, offset));
        Assert.Equal(1, _f.Dev.Adapter.GetVqStats(0).DirtyPages);

        _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, 2));
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 2), _f.Net.Receive(0, 2));

        Fe.GetVringBase(0);
        Fe.GetVringBase(1);
        var pages = DirtyPages(log, NeededLog, offset);
        Assert.Contains(Page(GuestMemoryFixture.RingGpa(0).Used), pages);
        Assert.Contains(Page(GuestMemoryFixture.RingGpa(1).Used), pages);
        Assert.Contains(Page(GuestMemoryFixture.BufferGpa(0, 1)), pages);
        Assert.DoesNotContain(Page(GuestMemoryFixture.BufferGpa(1, 0)), pages); // TX buffers are only read
        Assert.Equal(3, pages.Count); // RX buffers share a page; two used rings
        AssertGuardsIntact(log, NeededLog, offset);
        Assert.True(_f.H.Session.DirtyLogState.LogAll);
        Assert.Equal(2, _f.H.Session.DirtyLogState.UsedRingPagesMarked);
    }

    [Fact]
    public void ANewLogBaseWhileRunningIsUsedFromThenOn()
    {
        using var first = LogFile(NeededLog, 0);
        using var second = LogFile(NeededLog * 2, 0x2000); // QEMU resizes: a bigger log in a new memfd
        _f.Net.Start(protocol: Proto);
        StartLogging(first, NeededLog, 0);
        _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, 1));
        _f.Net.Receive(0, 1);
        Assert.Single(DirtyPages(first, NeededLog, 0));

        Assert.Equal(0UL, _f.SetLogBase(second, NeededLog * 2, 0x2000));
        first.Span(0, (int)NeededLog).Clear(); // the front-end synced and dropped the old one
        _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, 2));
        _f.Net.Receive(0, 2);
        Assert.Empty(DirtyPages(first, NeededLog, 0));
        Assert.Equal([Page(GuestMemoryFixture.BufferGpa(0, 1))], DirtyPages(second, NeededLog * 2, 0x2000));
        Assert.False(_f.H.Logged("restarting the device"), _f.H.LogText);
        Fe.GetVringBase(0);
        Assert.Contains(Page(GuestMemoryFixture.RingGpa(0).Used), DirtyPages(second, NeededLog * 2, 0x2000));
        Assert.Empty(DirtyPages(first, NeededLog, 0));
        AssertGuardsIntact(second, NeededLog * 2, 0x2000);
        // Only guest memory and the one live log stay mapped for the device.
        Assert.Equal(2, _f.Dev.Vf.DmaMapCount);
    }

    [Fact]
    public void LogAllOffStopsMarkingWithoutStoppingTheRings()
    {
        using var log = LogFile(NeededLog, 0);
        _f.Net.Start(protocol: Proto);
        StartLogging(log, NeededLog, 0);
        _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, 1));
        _f.Net.Receive(0, 1);
        Assert.NotEmpty(DirtyPages(log, NeededLog, 0));

        // A cancelled migration: LOG_ALL off, ring addresses without F_LOG.
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_FEATURES, VirtioNetFrontEnd.Features));
        var (d, a, u) = GuestMemoryFixture.RingVa(0);
        Assert.Equal(0UL, Fe.SetVringAddr(0, d, a, u));
        Assert.False(_f.Dev.Vf.DirtyLog.Enabled);
        log.Span(0, (int)NeededLog).Clear();
        _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, 2));
        _f.Net.Receive(0, 2);
        Fe.GetVringBase(0);
        Assert.Empty(DirtyPages(log, NeededLog, 0));
        Assert.False(_f.H.Logged("restarting the device"), _f.H.LogText);
        Assert.Equal(1, _f.Dev.Vf.DmaMapCount); // guest memory only: the log is unmapped
    }

    public static TheoryData<string, ulong, ulong, ulong, int> HostileLogs => new()
    {
        // name, size, offset, file size, descriptors
        { "too small for guest memory", NeededLog / 2, 0, 0x10000, 1 },
        { "offset beyond the file", NeededLog, 0x20000, 0x10000, 1 },
        { "size beyond the file", 0x20000, 0, 0x10000, 1 },
        { "size 0", 0, 0, 0x10000, 1 },
        { "wraps around", 0x1000, ulong.MaxValue - 0x10, 0x10000, 1 },
        { "no descriptor", NeededLog, 0, 0x10000, 0 },
        { "two descriptors", NeededLog, 0, 0x10000, 2 },
    };

    [Theory]
    [MemberData(nameof(HostileLogs))]
    public void HostileLogBasesAreRefusedAndNothingIsMapped(string name, ulong size, ulong offset, ulong fileSize, int fds)
    {
        using var f = MappedMemory.CreateShared("vhost-log", fileSize);
        f.Span(0, (int)fileSize).Fill(0xA5);
        _f.Net.Start(protocol: Proto);
        var p = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(p, size);
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), offset);
        int[] descriptors = [.. Enumerable.Repeat(f.Fd!.Fd, fds)];
        Fe.Send(VhostUserRequest.SET_LOG_BASE, p, descriptors);
        // SET_LOG_BASE carries its own reply with LOG_SHMFD: a refusal closes the connection (a front-end must not
        // migrate with a log nobody writes).
        Assert.True(Fe.WaitClosed(), $"{name}: the back-end kept the connection\n{_f.H.LogText}");
        Assert.True(_f.H.WaitEnded());
        Assert.True(_f.H.Logged("SET_LOG_BASE:"), _f.H.LogText);
        Assert.False(_f.Dev.Vf.DirtyLog.Enabled);
        Assert.Equal(0, _f.Dev.Vf.DmaMapCount);
        Assert.True(f.Span(0, (int)fileSize).IndexOfAnyExcept((byte)0xA5) < 0, $"{name}: the log file was written");
    }

    [Fact]
    public void UsedRingLogAddressOutsideGuestMemoryIsRefused()
    {
        using var log = LogFile(NeededLog, 0);
        _f.Net.Start(protocol: Proto);
        Assert.Equal(0UL, _f.SetLogBase(log, NeededLog, 0));
        var (d, a, u) = GuestMemoryFixture.RingVa(0);
        Assert.Equal(1UL, SetVringAddrLog(0, d, a, u, 0x1000));
        Assert.Equal(1UL, SetVringAddrLog(0, d, a, u, GuestMemoryFixture.Gpa + GuestMemoryFixture.Size - 8));
        Assert.True(_f.H.Logged("outside guest memory"), _f.H.LogText);
        Assert.Equal(1UL, SetVringAddrLog(0, d, a, u, GuestMemoryFixture.RingGpa(0).Used + 2));
        Assert.True(_f.H.Logged("misaligned"), _f.H.LogText);
        Assert.Empty(DirtyPages(log, NeededLog, 0));
    }

    [Fact]
    public void SetLogBaseWithoutLogShmfdIsRefusedWithAnAck()
    {
        using var log = LogFile(NeededLog, 0);
        _f.Net.Start(); // no migration bits negotiated
        var p = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(p, NeededLog);
        Assert.Equal(1UL, Fe.Request(VhostUserRequest.SET_LOG_BASE, p, [log.Fd!.Fd]));
        Assert.True(_f.H.Logged("without LOG_SHMFD"), _f.H.LogText);
        Assert.NotEqual(0UL, Fe.GetU64(VhostUserRequest.GET_FEATURES));
    }

    [Fact]
    public void SendRarpPutsARarpFrameOnTheWire()
    {
        using var dev = new RealDevice(backend: NetBackend.Pcap(_pcap), address: "sim:08.0");
        using var mem = new GuestMemoryFixture();
        using var h = new SessionHarness(dev.Adapter);
        using var net = new VirtioNetFrontEnd(h.Fe, mem);
        net.Start(protocol: Proto);
        byte[] mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        var p = new byte[8];
        mac.CopyTo(p, 0);
        Assert.Equal(0UL, h.Fe.Request(VhostUserRequest.SEND_RARP, p));

        byte[] frame = [];
        Assert.True(Wait.Until(() =>
        {
            using var s = new FileStream(_pcap, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            var all = new byte[s.Length];
            s.ReadExactly(all);
            if (all.Length < 24 + 16)
            {
                return false;
            }
            int incl = (int)BinaryPrimitives.ReadUInt32LittleEndian(all.AsSpan(24 + 8));
            if (all.Length < 40 + incl)
            {
                return false;
            }
            frame = all.AsSpan(40, incl).ToArray();
            return true;
        }), h.LogText);

        var want = new byte[60];
        want.AsSpan(0, 6).Fill(0xFF);                      // broadcast
        mac.CopyTo(want, 6);                               // from the guest's MAC
        want[12] = 0x80; want[13] = 0x35;                  // RARP
        want[14] = 0; want[15] = 1;                        // Ethernet
        want[16] = 0x08; want[17] = 0x00;                  // IPv4
        want[18] = 6; want[19] = 4;
        want[20] = 0; want[21] = 3;                        // request reverse
        mac.CopyTo(want, 22);                              // sender hardware address, sender IP 0
        mac.CopyTo(want, 32);                              // target hardware address, target IP 0
        Assert.Equal(want, frame);
        Assert.True(h.Logged("RARP sent for 52:54:00:12:34:56"), h.LogText);
    }

    /// <summary>A TAP in a namespace the test creates; returns its carrier as /sys shows it ("0"/"1").</summary>
    private static string Carrier(string ns, string tap)
    {
        using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("ip", ["netns", "exec", ns, "cat", $"/sys/class/net/{tap}/carrier"]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string o = p.StandardOutput.ReadToEnd().Trim() + p.StandardError.ReadToEnd().Trim();
        p.WaitForExit();
        return o;
    }

    private static void Ip(params string[] args)
    {
        using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("ip", args) { RedirectStandardError = true })!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"ip {string.Join(' ', args)}: {err}");
    }

    /// <summary>
    /// The switch-over (every ring stopped while QEMU logs) takes the software VF's TAP off the wire (carrier off:
    /// a bridge then floods the guest's frames to the destination's port); the front-end leaving puts it back. A
    /// stop without logging (a reboot, a plain shutdown) leaves the carrier alone.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TheSwitchOverTakesTheTapOffTheWireUntilTheFrontEndLeaves(bool logging)
    {
        string tap = $"lmw{Environment.ProcessId % 100000}{(logging ? 1 : 0)}";
        string ns = $"lmwns{Environment.ProcessId}{(logging ? 1 : 0)}";
        Ip("netns", "add", ns);
        try
        {
            using var f = new MigrationFixture(backend: NetBackend.Tap(tap));
            Ip("link", "set", tap, "netns", ns);
            Ip("-n", ns, "link", "set", tap, "up");
            f.Net.Start(protocol: Proto);
            Assert.Equal("1", Carrier(ns, tap));
            using var log = LogFile(NeededLog, 0);
            if (logging)
            {
                Assert.Equal(0UL, f.SetLogBase(log, NeededLog, 0));
                Assert.Equal(0UL, f.Fe.SetU64(VhostUserRequest.SET_FEATURES, VirtioNetFrontEnd.Features | LogAll));
            }
            f.Fe.GetVringBase(0);
            Assert.Equal(logging ? "0" : "1", Carrier(ns, tap)); // the first ring stopped while logging is the switch-over
            f.Fe.GetVringBase(1);
            Assert.Equal(logging ? "0" : "1", Carrier(ns, tap));
            Assert.Equal(logging, f.H.Logged("carrier of its wire off"));

            f.Fe.Dispose(); // the front-end leaves (QEMU quits after the migration)
            Assert.True(f.H.WaitEnded(), f.H.LogText);
            Assert.Equal("1", Carrier(ns, tap));
            Assert.Equal(logging, f.H.Logged("carrier of its wire on again"));
        }
        finally
        {
            Ip("netns", "del", ns);
        }
    }

    [Fact]
    public void WithoutADirtyLogTheBackEndStillOffersLoggingButNoRarp()
    {
        // a device that neither logs nor sends frames: logging goes through the software relay (SoftwareRelayTests)
        var fake = new FakeVdpaDevice(pairs: 1);
        using var h = new SessionHarness(fake);
        Assert.NotEqual(0UL, h.Fe.GetU64(VhostUserRequest.GET_FEATURES) & LogAll);
        Assert.Equal(VhostUserProtocolFeature.Supported | (1UL << VhostUserProtocolFeature.LOG_SHMFD), h.Fe.GetU64(VhostUserRequest.GET_PROTOCOL_FEATURES));
        h.Fe.Negotiate();
        Assert.Equal(0UL, h.Fe.SetU64(VhostUserRequest.SET_FEATURES, FakeVdpaDevice.Features & ~(1UL << VirtioFeature.F_ACCESS_PLATFORM) | LogAll));
        var p = new byte[8];
        Assert.Equal(1UL, h.Fe.Request(VhostUserRequest.SEND_RARP, p));
        Assert.True(h.Logged("cannot send a frame"), h.LogText);
    }

    [Fact]
    public void SuspendAndResumeKeepTheRingState()
    {
        _f.Net.Start();
        for (byte i = 1; i <= 3; i++)
        {
            _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, i));
            _f.Net.Receive(0, i);
        }
        _f.Dev.Adapter.Suspend();
        Assert.True(_f.Dev.Adapter.Suspended);
        Assert.True(_f.Dev.Adapter.GetVqReady(1)); // stopped, not unconfigured
        Assert.Equal(VdpaVqState.Split(3, 3), _f.Dev.Adapter.GetVqState(0));
        Assert.Equal(VdpaVqState.Split(3, 3), _f.Dev.Adapter.GetVqState(1));

        long doorbells = _f.Dev.Vf.DoorbellCount(1);
        long kicks = _f.Dev.Adapter.GetKickCount(1);
        _f.Net.Send(1, VirtioNetFrontEnd.Frame(64, 4)); // kicked while suspended: not processed
        Assert.True(SpinWait.SpinUntil(() => _f.Dev.Adapter.GetKickCount(1) > kicks, 2000)); // the kick reached the driver ...
        Assert.Equal(doorbells, _f.Dev.Vf.DoorbellCount(1)); // ... which holds it: the queue is disabled (VIRTIO 1.2 §4.1.5.2)
        Assert.False(_f.Dev.Vf.IsQueueRunning(1));
        Assert.Equal(3, _f.Mem.UsedIdx(1));
        Assert.Equal(3, _f.Mem.UsedIdx(0));

        _f.Dev.Adapter.Resume();
        Assert.False(_f.Dev.Adapter.Suspended);
        Assert.Equal(doorbells + 1, _f.Dev.Vf.DoorbellCount(1)); // rung once the queue runs again
        Assert.Equal(VirtioNetFrontEnd.Frame(64, 4), _f.Net.Receive(0, 4));
        Assert.Equal(4, _f.Mem.UsedIdx(1));
        Assert.Equal(4u, Fe.GetVringBase(1));
    }
}
