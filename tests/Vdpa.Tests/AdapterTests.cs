using IfcVdpa.Interop.Primitives;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;
using S = IfcVdpa.Virtio.VirtioStatus;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>The vDPA ops table of the IFC VF adapter, driven like a virtio-net driver would drive it.</summary>
public class AdapterTests
{
    internal static readonly ulong BaseFeatures = Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(NET_F_MAC) | Bit(NET_F_STATUS);

    internal static void BringUp(IVdpaDevice a, ulong features, ushort size = 256)
    {
        a.Reset();
        a.SetStatus(S.ACKNOWLEDGE);
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER);
        a.SetDriverFeatures(features);
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
        Assert.Equal(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK, a.GetStatus());
        for (int q = 0; q < a.NumVqs; q++)
        {
            a.SetVqNum(q, size);
            a.SetVqAddress(q, 0x10_0000UL * (ulong)(q + 1), (0x10_0000UL * (ulong)(q + 1)) + 0x4000, (0x10_0000UL * (ulong)(q + 1)) + 0x8000);
            a.SetVqReady(q, true);
        }
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    }

    [Fact]
    public void FullBringUpKicksReachTheDeviceAndInterruptsReachTheCallbacks()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 1 });
        using var a = IfcvfAdapter.Probe(vf);
        Assert.Equal(3, a.NumVqs);
        Assert.Equal(1u, a.GetDeviceId());
        Assert.Equal(0x8086u, a.GetVendorId());
        Assert.Equal(4096u, a.GetVqAlign());
        Assert.Equal(1024, a.GetVqNumMax());
        Assert.Equal(64, a.GetVqNumMin());
        Assert.Equal(vf.DeviceFeatures, a.GetDeviceFeatures());

        var hits = new int[3];
        int configHits = 0;
        ulong f = BaseFeatures | Bit(NET_F_CTRL_VQ);
        a.Reset();
        a.SetStatus(S.ACKNOWLEDGE);
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER);
        a.SetDriverFeatures(f);
        Assert.Equal(f, a.GetDriverFeatures());
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
        Assert.Equal(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK, a.GetStatus());
        for (int q = 0; q < 3; q++)
        {
            int qq = q;
            a.SetVqCallback(q, VdpaCallback.ForHandler(() => Interlocked.Increment(ref hits[qq])));
            a.SetVqNum(q, 256);
            Assert.Equal(256, a.GetVqSize(q));
            a.SetVqAddress(q, 0x1000UL * (ulong)(q + 1), 0x20_0000, 0x30_0000);
            Assert.False(a.GetVqReady(q));
            a.SetVqReady(q, true);
            Assert.True(a.GetVqReady(q));
        }
        a.SetConfigCallback(VdpaCallback.ForHandler(() => Interlocked.Increment(ref configHits)));
        Assert.False(vf.MsixEnabled);
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);

        Assert.Equal(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK, vf.Status);
        Assert.Equal(f, vf.DriverFeatures);
        Assert.True(vf.MsixEnabled);
        Assert.Equal(IfcvfIrqMode.PerVq, a.IrqMode);
        for (int q = 0; q < 3; q++)
        {
            Assert.True(vf.IsQueueRunning(q));
            Assert.Equal(q, vf.QueueVector(q));
        }

        a.KickVq(1);
        a.KickVq(1);
        a.KickVq(2);
        Assert.Equal(0, vf.DoorbellCount(0));
        Assert.Equal(2, vf.DoorbellCount(1));
        Assert.Equal(1, vf.DoorbellCount(2));
        Assert.Equal(2, a.GetVqStats(1).Kicks);

        vf.RaiseQueueInterrupt(0);
        vf.RaiseQueueInterrupt(2);
        vf.RaiseQueueInterrupt(2);
        Assert.Equal([1, 0, 2], hits);

        vf.SetLinkUp(false);
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref configHits) == 1, 5000));
        Span<byte> status = stackalloc byte[2];
        a.GetConfig(VirtioNetConfig.Status, status);
        Assert.Equal(0, status[0] & VirtioNetConfig.S_LINK_UP);

        a.Reset();
        Assert.Equal(0, a.GetStatus());
        Assert.False(vf.MsixEnabled);
        Assert.Equal(IfcvfIrqMode.None, a.IrqMode);
        Assert.Equal(VirtioPci.NoVector, vf.QueueVector(0));
        Assert.False(vf.IsQueueRunning(0));
        vf.RaiseQueueInterrupt(0);
        Assert.Equal(1, hits[0]);
    }

    [Fact]
    public void RepeatedEqualStatusIsANoOp()
    {
        using var fn = new TestFunction(new SoftIfcVf());
        using var a = IfcvfAdapter.Probe(fn);
        BringUp(a, BaseFeatures);
        Assert.Equal(1, fn.EnableMsixCalls);
        a.SetStatus(a.GetStatus());
        a.SetStatus(a.GetStatus());
        Assert.Equal(1, fn.EnableMsixCalls);
        Assert.True(fn.Inner.MsixEnabled);
    }

    [Fact]
    public void ConfigHandlerMayReadTheConfigWhileAControlOpRuns()
    {
        // The model raises the config interrupt under its register lock; a handler that reads the config
        // must not deadlock against a control op that holds the adapter lock and waits for the registers.
        using var vf = new SoftIfcVf();
        using var a = IfcvfAdapter.Probe(vf);
        BringUp(a, BaseFeatures);
        int seen = 0;
        a.SetConfigCallback(VdpaCallback.ForHandler(() =>
        {
            var st = new byte[2];
            a.GetConfig(VirtioNetConfig.Status, st);
            Interlocked.Increment(ref seen);
        }));
        using var stop = new CancellationTokenSource();
        var control = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                a.GetVqSize(1);
                a.GetGeneration();
            }
        });
        for (int i = 0; i < 200; i++)
        {
            vf.SetLinkUp(i % 2 == 1); // starts up: every call is a change
        }
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref seen) == 200, 10_000), $"only {seen} config callbacks completed");
        stop.Cancel();
        Assert.True(control.Wait(5000));
    }

    [Fact]
    public void ResetQuiescesInterruptsBeforeResettingTheDevice()
    {
        using var fn = new TestFunction(new SoftIfcVf());
        using var a = IfcvfAdapter.Probe(fn);
        BringUp(a, BaseFeatures);
        fn.Events.Clear();
        a.Reset();
        // config vector to NO_VECTOR, MSI-X off, and only then the status write of 0. The three queues are
        // enabled: their vectors are not rewritten (VIRTIO 1.2 §4.1.4.3.2, a strict VF would need a reset);
        // with MSI-X off they cannot signal, and the reset clears them.
        Assert.Equal(["novector", "msix-off", "reset"], fn.Events);
        for (int q = 0; q < 3; q++)
        {
            Assert.Equal(VirtioPci.NoVector, fn.Inner.QueueVector(q));
        }
    }

    [Fact]
    public void ConfigEventFdCallbackBecomesTheConfigVectorSink()
    {
        using var fn = new TestFunction(new SoftIfcVf());
        using var a = IfcvfAdapter.Probe(fn);
        using var cfg = EventFd.Create();
        BringUp(a, BaseFeatures);
        a.SetConfigCallback(VdpaCallback.ForEventFd(cfg));
        Assert.Same(cfg, Assert.IsType<EventFdSink>(fn.LastSinks[3]).EventFd);
        fn.Inner.SetLinkUp(false);
        Assert.True(cfg.TryConsume(out ulong n));
        Assert.Equal(1UL, n);
    }

    [Fact]
    public void LeavingDriverOkReleasesInterrupts()
    {
        using var fn = new TestFunction(new SoftIfcVf());
        using var a = IfcvfAdapter.Probe(fn);
        BringUp(a, BaseFeatures);
        Assert.True(fn.Inner.MsixEnabled);
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
        Assert.False(fn.Inner.MsixEnabled);
        Assert.Equal(IfcvfIrqMode.None, a.IrqMode);
        // Queue 1 is enabled: it keeps its vector (not reconfigured while enabled), but nothing is delivered.
        var before = fn.Inner.InterruptCounts;
        fn.Inner.RaiseQueueInterrupt(1);
        Assert.Equal(before.Delivered, fn.Inner.InterruptCounts.Delivered);
        Assert.Equal(before.Dropped + 1, fn.Inner.InterruptCounts.Dropped);
    }

    [Fact]
    public void EventFdCallbackBecomesTheVectorSinkWithNoExtraHop()
    {
        using var fn = new TestFunction(new SoftIfcVf());
        using var a = IfcvfAdapter.Probe(fn);
        using var call = EventFd.Create();
        BringUp(a, BaseFeatures);
        a.SetVqCallback(0, VdpaCallback.ForEventFd(call));
        var sink = Assert.IsType<EventFdSink>(fn.LastSinks[0]);
        Assert.Same(call, sink.EventFd);
        Assert.IsType<CallbackSink>(fn.LastSinks[1]);

        fn.Inner.RaiseQueueInterrupt(0);
        Assert.True(call.TryConsume(out ulong n));
        Assert.Equal(1UL, n);
        Assert.Equal(0, a.GetVqStats(0).Interrupts); // never went through the adapter
    }

    [Theory]
    [InlineData(1, IfcvfIrqMode.DeviceShared)]
    [InlineData(2, IfcvfIrqMode.SharedVq)]
    [InlineData(3, IfcvfIrqMode.SharedVq)]
    [InlineData(4, IfcvfIrqMode.PerVq)]
    public void VectorFallbacksStillDeliverEveryInterrupt(int vectors, IfcvfIrqMode expected)
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { MsixVectors = vectors });
        using var a = IfcvfAdapter.Probe(vf);
        BringUp(a, BaseFeatures);
        var hits = new int[3];
        int cfg = 0;
        for (int q = 0; q < 3; q++)
        {
            int qq = q;
            a.SetVqCallback(q, VdpaCallback.ForHandler(() => Interlocked.Increment(ref hits[qq])));
        }
        a.SetConfigCallback(VdpaCallback.ForHandler(() => Interlocked.Increment(ref cfg)));
        Assert.Equal(expected, a.IrqMode);

        vf.RaiseQueueInterrupt(1);
        if (expected == IfcvfIrqMode.PerVq)
        {
            Assert.Equal([0, 1, 0], hits);
            Assert.Equal(1, vf.QueueVector(1));
        }
        else
        {
            // A shared vector carries no per-queue cause: every vq callback runs (Linux's shared handler).
            Assert.Equal([1, 1, 1], hits);
            Assert.Equal(0, vf.QueueVector(1));
        }
        int vqHitsBefore = hits.Sum();
        vf.SetLinkUp(false);
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref cfg) == 1, 5000));
        if (expected == IfcvfIrqMode.SharedVq)
        {
            Assert.Equal(vqHitsBefore, hits.Sum()); // config has its own vector
        }
        Assert.Equal(0, a.CallbackErrors);
    }

    [Fact]
    public void NoMsixVectorsMeansDriverOkIsRefusedAndNotWritten()
    {
        using var vf = new SoftIfcVf();
        using var fn = new ZeroVectorFunction(vf);
        using var a = IfcvfAdapter.Probe(fn);
        var e = Assert.Throws<IfcvfDeviceException>(() => BringUp(a, BaseFeatures));
        Assert.Contains("MSI-X", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, a.GetStatus() & S.DRIVER_OK);
    }

    private sealed class ZeroVectorFunction(SoftIfcVf inner) : TestFunction(inner), IPciFunction
    {
        int IPciFunction.MsixVectorCount => 0;
    }

    [Fact]
    public void DriverFeaturesAreValidated()
    {
        using var vf = new SoftIfcVf();
        using var a = IfcvfAdapter.Probe(vf);
        var e = Assert.Throws<VdpaException>(() => a.SetDriverFeatures(Bit(F_ACCESS_PLATFORM) | Bit(NET_F_MAC)));
        Assert.Contains("VERSION_1", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<VdpaException>(() => a.SetDriverFeatures(Bit(F_VERSION_1) | Bit(NET_F_MAC)));
        Assert.Contains("ACCESS_PLATFORM", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<VdpaException>(() => a.SetDriverFeatures(BaseFeatures | Bit(F_RING_PACKED)));
        Assert.Contains("RING_PACKED", e.Message, StringComparison.Ordinal);
        Assert.Equal(0UL, vf.DriverFeatures);

        a.RequireAccessPlatform = false; // the vhost-user consumer's setting
        a.SetDriverFeatures(Bit(F_VERSION_1) | Bit(NET_F_MAC));
        Assert.Equal(Bit(F_VERSION_1) | Bit(NET_F_MAC), vf.DriverFeatures);
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
        Assert.Throws<VdpaException>(() => a.SetDriverFeatures(BaseFeatures));
    }

    [Fact]
    public void OptionCreatesTheAdapterForVhostUserWithoutAccessPlatform()
    {
        using var vf = new SoftIfcVf();
        using var a = IfcvfAdapter.Probe(vf, new IfcvfAdapterOptions { RequireAccessPlatform = false });
        a.SetDriverFeatures(Bit(F_VERSION_1));
        Assert.Equal(Bit(F_VERSION_1), a.GetDriverFeatures());
    }

    [Fact]
    public void VqStateRoundTripsThroughTheLmBlockPerQueue()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        using var a = IfcvfAdapter.Probe(vf);
        Assert.True(a.HasLiveMigrationBlock);
        a.Reset();
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER);
        a.SetDriverFeatures(BaseFeatures);
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
        for (int q = 0; q < 4; q++)
        {
            a.SetVqNum(q, 128);
            a.SetVqAddress(q, 0x1000, 0x2000, 0x3000);
            a.SetVqState(q, new VdpaVqState((ushort)(10 + q), (ushort)(10 + q)));
            a.SetVqReady(q, true);
        }
        Assert.Throws<VdpaException>(() => a.SetVqState(0, new VdpaVqState(1, 1)));
        a.SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
        for (int q = 0; q < 4; q++)
        {
            a.SetVqReady(q, false);
            Assert.False(vf.IsQueueRunning(q));
            Assert.Equal(new VdpaVqState((ushort)(10 + q), (ushort)(10 + q)), a.GetVqState(q));
        }
    }

    [Fact]
    public void EnabledQueueRefusesLayoutChangesAndBadSizesAreRejected()
    {
        using var vf = new SoftIfcVf();
        using var a = IfcvfAdapter.Probe(vf);
        BringUp(a, BaseFeatures);
        Assert.Throws<VdpaException>(() => a.SetVqNum(0, 128));
        Assert.Throws<VdpaException>(() => a.SetVqAddress(0, 1, 2, 3));
        a.SetVqReady(0, false);
        Assert.Throws<VdpaException>(() => a.SetVqNum(0, 100));
        Assert.Throws<VdpaException>(() => a.SetVqNum(0, 2048));
        Assert.Throws<VdpaException>(() => a.SetVqNum(0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.SetVqNum(3, 64));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.KickVq(3));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.KickVq(-1));
        Assert.Equal(0, a.GetVqSize(3));
        a.SetVqNum(0, 128);
        Assert.Equal(128, a.GetVqSize(0));
        Assert.Equal(0, vf.RegisterErrors);
    }

    [Fact]
    public void NotificationAreaIsThePerQueueDoorbellPage()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        using var a = IfcvfAdapter.Probe(vf);
        Assert.Equal(new VdpaNotificationArea(2, 3 * 0x1000UL, 0x1000), a.GetVqNotification(3));
    }

    [Fact]
    public void SuspendAndResumeWithoutQueuesAreNoOpsAndAGenericFunctionSaysWhyItCannot()
    {
        using var vf = new SoftIfcVf();
        using var a = IfcvfAdapter.Probe(vf);
        a.Suspend(); // no queue enabled: nothing to stop (ring-state behaviour: VhostUser.Tests LiveMigrationTests)
        Assert.False(a.Suspended);
        a.Resume();
        Assert.True(a.CanLogDirtyPages);
        using var fn = new TestFunction(new SoftIfcVf()).Set16(PciConfig.SubsystemVendorId, 0x1af4).Set16(PciConfig.SubsystemId, 0x1100);
        using var g = IfcvfAdapter.Probe(fn, new IfcvfAdapterOptions { AcceptGenericVirtioNet = true });
        Assert.Contains("live-migration block", Assert.Throws<VdpaNotSupportedException>(g.Suspend).Message, StringComparison.Ordinal);
        Assert.Throws<VdpaNotSupportedException>(g.Resume);
        Assert.False(g.CanLogDirtyPages);
        Assert.Throws<VdpaNotSupportedException>(() => g.EnableDirtyLog(0x1000_0000_0000, 0x1000));
    }

    [Fact]
    public void ConfigReadsAreBoundedAndShowTheDevice()
    {
        using var vf = new SoftIfcVf();
        using var a = IfcvfAdapter.Probe(vf);
        Assert.Equal(24u, a.GetConfigSize());
        var mac = new byte[6];
        a.GetConfig(0, mac);
        Assert.Equal(vf.Mac, mac);
        Assert.Throws<VdpaException>(() => a.GetConfig(20, new byte[8]));
        Assert.Throws<VdpaException>(() => a.GetConfig(uint.MaxValue, new byte[2]));
        a.SetConfig(0, new byte[] { 0x02, 1, 2, 3, 4, 5 });
        Assert.Equal(new byte[] { 0x02, 1, 2, 3, 4, 5 }, vf.Mac);
    }

    [Fact]
    public void DmaMapsGoToTheFunctionAndRemovalReleasesThem()
    {
        using var vf = new SoftIfcVf();
        var a = IfcvfAdapter.Probe(vf);
        var mem = MappedMemory.Allocate(0x4000);
        try
        {
            a.DmaMap(0x1000_0000, mem.Slice(0, 0x2000), true);
            a.DmaMap(0x2000_0000, mem.Slice(0x2000, 0x2000), false);
            Assert.Equal(2, vf.DmaMapCount);
            a.DmaUnmap(0x1000_0000, 0x2000);
            Assert.Equal(1, vf.DmaMapCount);
            BringUp(a, BaseFeatures);
            Assert.True(vf.MsixEnabled);
            a.Dispose();
            Assert.Equal(0, vf.DmaMapCount);
            Assert.False(vf.MsixEnabled);
            Assert.Equal(0, vf.Status);
            Assert.Throws<ObjectDisposedException>(() => a.SetStatus(1));
        }
        finally
        {
            mem.Dispose();
        }
    }

    [Fact]
    public void StatsComeFromTheFunctionWhenItKeepsThem()
    {
        using var fn = new StatsFunction(new SoftIfcVf());
        using var a = IfcvfAdapter.Probe(fn);
        Assert.Equal(new VdpaVqStats(101, 2001, 7, 8, 1, 2), a.GetVqStats(1));
    }

    [Fact]
    public void AdapterCountsKicksAndInterruptsWhenTheFunctionKeepsNoCounters()
    {
        using var fn = new TestFunction(new SoftIfcVf());
        using var a = IfcvfAdapter.Probe(fn);
        BringUp(a, BaseFeatures);
        a.SetVqCallback(2, VdpaCallback.ForHandler(() => { }));
        a.KickVq(2);
        fn.Inner.RaiseQueueInterrupt(2);
        fn.Inner.RaiseQueueInterrupt(2);
        Assert.Equal(new VdpaVqStats(0, 0, 1, 2, 0, 0), a.GetVqStats(2));
        Assert.Equal(new VdpaVqStats(0, 0, 0, 0, 0, 0), a.GetVqStats(0));
    }

    [Fact]
    public void ThrowingCallbackIsContainedAndCounted()
    {
        using var vf = new SoftIfcVf();
        using var a = IfcvfAdapter.Probe(vf);
        BringUp(a, BaseFeatures);
        a.SetVqCallback(0, VdpaCallback.ForHandler(() => throw new InvalidOperationException("consumer bug")));
        vf.RaiseQueueInterrupt(0);
        Assert.Equal(1, a.CallbackErrors);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ProbeAcceptsBothIfcIdentities(bool transitional)
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { Transitional = transitional });
        using var a = IfcvfAdapter.Probe(vf);
        Assert.True(a.IsIfc);
    }

    [Fact]
    public void GenericVirtioNetNeedsTheOptionAndGetsNoLmBlock()
    {
        using var fn = new TestFunction(new SoftIfcVf()).Set16(PciConfig.SubsystemVendorId, 0x1af4).Set16(PciConfig.SubsystemId, 0x1100);
        var e = Assert.Throws<IfcvfProbeException>(() => IfcvfAdapter.Probe(fn));
        Assert.Contains("generic virtio-net", e.Message, StringComparison.Ordinal);

        using var a = IfcvfAdapter.Probe(fn, new IfcvfAdapterOptions { AcceptGenericVirtioNet = true });
        Assert.False(a.IsIfc);
        Assert.False(a.HasLiveMigrationBlock);
        Assert.Equal(0x1af4u, a.GetVendorId());
        Assert.Throws<VdpaNotSupportedException>(() => a.GetVqState(0));
        Assert.Throws<VdpaNotSupportedException>(() => a.SetVqState(0, new VdpaVqState(5, 5)));
        a.SetVqState(0, new VdpaVqState(0, 0)); // the reset state is fine
        BringUp(a, BaseFeatures);
        a.KickVq(0);
        Assert.Equal(1, fn.Inner.DoorbellCount(0));
    }

    [Fact]
    public void AGenericFunctionIsNeverWrittenQueueEnableZeroAndRestartsAQueueOnlyAfterReset()
    {
        using var fn = new TestFunction(new SoftIfcVf()).Set16(PciConfig.SubsystemVendorId, 0x1af4).Set16(PciConfig.SubsystemId, 0x1100);
        using var a = IfcvfAdapter.Probe(fn, new IfcvfAdapterOptions { AcceptGenericVirtioNet = true });
        BringUp(a, BaseFeatures);
        ushort HwQueueEnable(int q)
        {
            fn.Inner.WriteBar16(IfcvfLayout.CommonBar, IfcvfLayout.CommonOffset + VirtioPci.QueueSelect, (ushort)q);
            return fn.Inner.ReadBar16(IfcvfLayout.CommonBar, IfcvfLayout.CommonOffset + VirtioPci.QueueEnable);
        }

        // virtio 1.x: a driver must not write 0 to queue_enable (QEMU rejects it); the queue is stopped for
        // the consumer, the function keeps it until reset, and the state cannot be read back
        a.SetVqReady(1, false);
        Assert.False(a.GetVqReady(1));
        Assert.True(a.GetVqReady(0));
        Assert.Equal(1, HwQueueEnable(1));
        Assert.Throws<VdpaNotSupportedException>(() => a.GetVqState(1));
        var e = Assert.Throws<IfcvfDeviceException>(() => a.SetVqReady(1, true));
        Assert.Contains("only after a device reset", e.Message, StringComparison.Ordinal);

        a.Reset();
        Assert.Equal(0, HwQueueEnable(1));
        BringUp(a, BaseFeatures);
        Assert.True(a.GetVqReady(1));
    }

    [Theory]
    [InlineData(0x8086, 0x1041, 0x8086, 0x001a, "not a virtio function")]
    [InlineData(0x1af4, 0x1042, 0x8086, 0x0000, "not an IFC VF")]
    [InlineData(0x1af4, 0x1000, 0x1af4, 0x0001, "not an IFC VF")]
    [InlineData(0x1af4, 0x1043, 0x8086, 0x001a, "not an IFC VF")]
    public void ProbeRejectsOtherFunctionsWithAClearError(int vendor, int device, int subVendor, int subDevice, string expected)
    {
        using var fn = new TestFunction(new SoftIfcVf())
            .Set16(PciConfig.VendorId, (ushort)vendor).Set16(PciConfig.DeviceId, (ushort)device)
            .Set16(PciConfig.SubsystemVendorId, (ushort)subVendor).Set16(PciConfig.SubsystemId, (ushort)subDevice);
        var e = Assert.Throws<IfcvfProbeException>(() => IfcvfAdapter.Probe(fn, new IfcvfAdapterOptions { AcceptGenericVirtioNet = true }));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false, 0x1042)]
    [InlineData(true, 0x1001)]
    public void ProbeDrivesTheBlockVf(bool transitional, int device)
    {
        var vf = new SoftIfcVf(SoftIfcVfOptions.ForBlock(new VirtioBlkConfig { Capacity = 2048, NumQueues = 3 }) with { Transitional = transitional });
        using var fn = new TestFunction(vf);
        Assert.Equal(device, fn.ReadConfig16(PciConfig.DeviceId));
        using var a = IfcvfAdapter.Probe(fn);
        Assert.Equal(IfcDeviceClass.Block, a.DeviceClass);
        Assert.Equal(VirtioBlk.DeviceId, a.GetDeviceId());
        Assert.Equal(3, a.NumVqs);
        Assert.True(a.HasLiveMigrationBlock);
        Assert.Equal(LmLayout.PerQueueBlocks, a.Hw.Options.LmLayout);
        var raw = new byte[a.GetConfigSize()];
        a.GetConfig(0, raw);
        Assert.Equal(2048UL, VirtioBlkConfig.Parse(raw).Capacity);
        // Net provisioning attributes do not apply to a block VF.
        var e = Assert.Throws<VdpaException>(() => IfcvfAdapter.Probe(fn, new IfcvfAdapterOptions { Mac = new byte[] { 2, 0, 0, 0, 0, 1 } }));
        Assert.Contains("block VF", e.Message, StringComparison.Ordinal);
    }
}
