using System.Buffers.Binary;
using System.Collections.Concurrent;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.VhostUser.Frontend;
using IfcVdpa.VirtioNet;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// The project's vhost-user front-end migrating as QEMU does (LOG_ALL, LOG_SHMFD, SET_LOG_BASE, VHOST_VRING_F_LOG)
/// against the project's own back-end on a software IFC VF, with its LM-block dirty log (the hardware path) and
/// without it (the software relay): frames keep flowing across logging on, a stop/resume (the switch-over's ring
/// stop) and logging off, none lost or repeated; the log marks the RX buffers the device wrote and the used rings.
/// The third device is the software VF presented as a plain virtio function (what the VFIO guest proof drives):
/// no ring state, no stop of one ring, so the back-end resets it onto the relay and keeps the relay (unmarking)
/// when logging stops.
/// </summary>
public sealed class FrontendDirtyLogTests : IDisposable
{
    private const ulong Page = 4096;

    private readonly string _dir = Directory.CreateTempSubdirectory("vu-fe-log").FullName;
    private readonly ConcurrentQueue<string> _logs = new();
    private RealDevice? _dev;
    private (SoftIfcVf Vf, VirtioNetEngine Engine, GenericVirtioFunction Fn, IfcvfAdapter Adapter)? _plain;
    private VhostUserBackend? _backend;

    private string SocketPath => Path.Combine(_dir, "vhost.sock");

    private string LogText => string.Join('\n', _logs);

    public void Dispose()
    {
        _backend?.Dispose();
        _dev?.Dispose();
        if (_plain is { } p)
        {
            p.Adapter.Dispose();
            p.Fn.Dispose();
            p.Vf.AttachEngine(null);
            p.Engine.Dispose();
            p.Vf.Dispose();
        }
        Directory.Delete(_dir, true);
    }

    public enum Device
    {
        /// <summary>Software VF without the dirty log: the back-end relays.</summary>
        NoLog,

        /// <summary>Software VF with the LM-block log: the device logs the buffers, the back-end the used rings at stop.</summary>
        DeviceLog,

        /// <summary>Software VF as a plain virtio function (no LM block at all): reset onto the relay.</summary>
        Plain,
    }

    private VhostUserFrontend Serve(Device kind)
    {
        IVdpaDevice device;
        if (kind == Device.Plain)
        {
            var vf = new SoftIfcVf(new SoftIfcVfOptions { Address = "sim:0e.0" });
            var engine = new VirtioNetEngine(NetBackend.Loopback(), new EngineOptions { Mode = EngineMode.Event });
            vf.AttachEngine(engine);
            var fn = new GenericVirtioFunction(vf);
            var adapter = IfcvfAdapter.Probe(fn, new IfcvfAdapterOptions { Name = "vdpa-plain", AcceptGenericVirtioNet = true });
            _plain = (vf, engine, fn, adapter);
            Assert.False(adapter.HasLiveMigrationBlock);
            device = adapter;
        }
        else
        {
            _dev = new RealDevice(address: kind == Device.DeviceLog ? "sim:0b.0" : "sim:0c.0", dirtyLog: kind == Device.DeviceLog);
            device = _dev.Adapter;
        }
        _backend = new VhostUserBackend(device, new VhostUserBackendOptions
        {
            SocketPath = SocketPath,
            Session = new VhostUserSessionOptions { Log = _logs.Enqueue, Name = "be" },
        });
        _backend.Start();
        return VhostUserFrontend.Connect(SocketPath, FrontendSetup.Options(_logs));
    }

    /// <summary>Frame <paramref name="seq"/>: its sequence number in the first payload bytes, sizes varying.</summary>
    private static byte[] Frame(int seq)
    {
        var f = VirtioNetFrontEnd.Frame(60 + (seq % 7 * 211), (byte)seq);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(14), (ushort)seq);
        return f;
    }

    /// <summary>Sends frames [from, to) one by one, each back through the loopback before the next.</summary>
    private void Exchange(VirtioNetDriver drv, BlockingCollection<byte[]> received, List<int> got, int from, int to)
    {
        for (int i = from; i < to; i++)
        {
            var f = Frame(i);
            Assert.True(drv.Send(f), $"frame {i} not sent\n{LogText}");
            Assert.True(received.TryTake(out var back, 5000), $"frame {i} did not come back\n{LogText}");
            Assert.Equal(f, back);
            got.Add(BinaryPrimitives.ReadUInt16BigEndian(back.AsSpan(14)));
        }
    }

    private static int PagesIn(IReadOnlyList<ulong> pages, ulong iova, ulong bytes) =>
        pages.Count(p => p >= iova / Page && p <= (iova + bytes - 1) / Page);

    [Theory]
    [InlineData(Device.NoLog)]
    [InlineData(Device.DeviceLog)]
    [InlineData(Device.Plain)]
    public void LoggingOnAndOffMidTrafficLosesNothingAndMarksTheWrittenPages(Device kind)
    {
        bool deviceLog = kind == Device.DeviceLog, plain = kind == Device.Plain;
        using var fe = Serve(kind);
        Assert.True(fe.CanLogDirtyPages, LogText);
        Assert.False(fe.DirtyLogging);
        using var received = new BlockingCollection<byte[]>();
        var got = new List<int>();
        using var drv = new VirtioNetDriver(fe, new VirtioNetDriverOptions { QueueSize = 64 });
        drv.SetFrameHandler(f => received.Add(f.ToArray()));
        Assert.True(FrontendSetup.WaitFor(() => _backend!.Session?.Configured == true), LogText);
        var (rxUsed, rxBuf, rxBytes) = drv.QueueArea(0);
        var (txUsed, txBuf, txBytes) = drv.QueueArea(1);
        Exchange(drv, received, got, 0, 20);

        // logging on mid-traffic (frames keep flowing while the back-end switches)
        var sender = Task.Run(() => Exchange(drv, received, got, 20, 60));
        Assert.True(FrontendSetup.WaitFor(() => got.Count > 25), LogText);
        fe.StartDirtyLog();
        sender.Wait(TimeSpan.FromSeconds(30));
        Assert.True(sender.IsCompletedSuccessfully, $"{sender.Exception}\n{LogText}");
        Assert.True(fe.DirtyLogging);
        Assert.True(_backend!.Session!.DirtyLogState.LogAll, LogText);
        if (deviceLog)
        {
            Assert.Contains("logs dirty pages into", LogText, StringComparison.Ordinal);
            Assert.False(_backend.Session.RelayState.Relaying);
        }
        else
        {
            Assert.Contains("switched to the software relay", LogText, StringComparison.Ordinal);
            Assert.True(_backend.Session.RelayState.Relaying);
            Assert.Equal(plain, LogText.Contains("resetting it to start its 2 ring(s) on the software relay", StringComparison.Ordinal));
        }

        // what the device writes while logging is marked: RX buffers (never the TX buffers it only reads)
        fe.SyncDirtyLog();
        Exchange(drv, received, got, 60, 80);
        var marked = fe.SyncDirtyLog();
        Assert.True(PagesIn(marked, rxBuf, rxBytes) > 0, $"no RX buffer page marked: {string.Join(' ', marked)}\n{LogText}");
        Assert.Equal(0, PagesIn(marked, txBuf, txBytes));
        if (!deviceLog)
        {
            Assert.Contains(rxUsed / Page, marked); // the relay marks each used entry it copies
            Assert.Contains(txUsed / Page, marked);
            Assert.True(_backend.Session.RelayState.RelayedEntries >= 40, LogText);
        }

        // the switch-over's ring stop (GET_VRING_BASE): the used rings are marked whichever way the device logs
        // (a plain function cannot restart one stopped ring: not done there)
        if (!plain)
        {
            fe.Suspend();
            var atStop = fe.SyncDirtyLog();
            Assert.Contains(rxUsed / Page, atStop);
            Assert.Contains(txUsed / Page, atStop);
            fe.Resume();
        }
        Exchange(drv, received, got, 80, 100);

        // a mapping beyond the log while logging: the back-end gets a larger log first (QEMU's resize)
        ulong oldBytes = fe.DirtyLogBytes;
        using (var extra = MappedMemory.CreateShared("fe-log-extra", 0x1_0000))
        {
            fe.DmaMap(0x40_0000_0000, extra.All, writable: true);
            Assert.True(fe.DirtyLogBytes > oldBytes);
            Assert.True(fe.DirtyLogBytes * 8 * Page >= 0x40_0001_0000);
            Exchange(drv, received, got, 100, 110);
            fe.DmaUnmap(0x40_0000_0000, 0x1_0000);
        }

        // logging off mid-traffic: direct mode again, nothing marked any more
        sender = Task.Run(() => Exchange(drv, received, got, 110, 150));
        Assert.True(FrontendSetup.WaitFor(() => got.Count > 115), LogText);
        fe.StopDirtyLog();
        sender.Wait(TimeSpan.FromSeconds(30));
        Assert.True(sender.IsCompletedSuccessfully, $"{sender.Exception}\n{LogText}");
        Assert.False(fe.DirtyLogging);
        Assert.False(_backend.Session.DirtyLogState.LogAll);
        Assert.False(_backend.Session.DirtyLogState.DeviceLogging);
        Assert.Equal(plain, _backend.Session.RelayState.Relaying); // a plain function stays relayed, unmarked
        if (kind == Device.NoLog)
        {
            Assert.Contains("software relay off", LogText, StringComparison.Ordinal);
        }
        if (plain)
        {
            Assert.Contains("software relay stops marking: 2 ring(s) stay on the relay", LogText, StringComparison.Ordinal);
        }
        fe.SyncDirtyLog();
        Exchange(drv, received, got, 150, 170);
        Assert.Empty(fe.SyncDirtyLog());

        // every frame exactly once, in order
        Assert.Equal(Enumerable.Range(0, 170), got);
        Assert.Equal((170, 170, 0), (drv.Counters.RxFrames, drv.Counters.TxFrames, drv.Counters.TxDrops));
        Assert.Empty(received);
    }

    [Fact]
    public void LoggingNeedsNegotiatedFeatures()
    {
        using var fe = Serve(Device.NoLog);
        Assert.Throws<InvalidOperationException>(fe.StartDirtyLog); // no FEATURES_OK yet
        Assert.False(fe.DirtyLogging);
        fe.StopDirtyLog(); // off already: nothing to do
    }
}
