using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.Foundation.Tests;

/// <summary>The ifcvf hardware layer driving the software IFC VF end to end at register level.</summary>
public class IfcvfHwTests
{
    private static readonly ulong NetFeatures =
        VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM) |
        VirtioFeature.Bit(VirtioFeature.NET_F_MAC) | VirtioFeature.Bit(VirtioFeature.NET_F_MRG_RXBUF);

    private const ushort NoVec = VirtioPci.NoVector;

    private static ulong Ring(int q) => 0x10_0000UL + ((ulong)q * 0x1_0000);

    /// <summary>
    /// Brings the queues up through the driver's production path (the adapter's vDPA ops: features, then per
    /// queue size, addresses, ring state, ready, then DRIVER_OK), with guest memory mapped under the rings so
    /// the device never finds a ring outside its DMA map.
    /// </summary>
    private static MappedMemory BringUp(IfcvfAdapter a, ulong features, IReadOnlyList<(int Q, VdpaVqState State)> queues)
    {
        var mem = MappedMemory.Allocate(0x10_0000);
        a.DmaMap(Ring(0), mem.All, writable: true);
        a.Reset();
        a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
        a.SetDriverFeatures(features);
        a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
        foreach (var (q, state) in queues)
        {
            a.SetVqNum(q, 256);
            a.SetVqAddress(q, Ring(q), Ring(q) + 0x4000, Ring(q) + 0x8000);
            a.SetVqState(q, state);
            a.SetVqReady(q, true);
        }
        a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
        return mem;
    }

    [Fact]
    public void KicksWaitForDriverOkAndNoneReachesADeviceBeingReset()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { Strict = true });
        using var a = IfcvfAdapter.Probe(vf);
        using var mem = MappedMemory.Allocate(0x10_0000);
        a.DmaMap(Ring(0), mem.All, writable: true);
        a.Reset();
        a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
        a.SetDriverFeatures(NetFeatures);
        a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
        foreach (int q in new[] { 0, 1 })
        {
            a.SetVqNum(q, 256);
            a.SetVqAddress(q, Ring(q), Ring(q) + 0x4000, Ring(q) + 0x8000);
            a.SetVqState(q, VdpaVqState.Split(0, 0));
            a.SetVqReady(q, true);
        }
        a.KickVq(1); // a front-end's kick before DRIVER_OK (vhost-user sends them): it must wait
        Assert.Equal(0, vf.ViolationCount(SpecRule.NotifyBeforeDriverOk));
        Assert.Equal(0, a.GetVqStats(1).Kicks);
        a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
        Assert.Equal(1, a.GetVqStats(1).Kicks); // rung once, at DRIVER_OK
        Assert.Equal(0, a.GetVqStats(0).Kicks);

        // Kicks racing a reset (a relay thread against the control path): none may reach the device without DRIVER_OK.
        using var stop = new CancellationTokenSource();
        var kicker = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                a.KickVq(1);
            }
        });
        for (int i = 0; i < 200; i++)
        {
            a.Reset();
            a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
            a.SetDriverFeatures(NetFeatures);
            a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
            a.SetVqNum(1, 256);
            a.SetVqAddress(1, Ring(1), Ring(1) + 0x4000, Ring(1) + 0x8000);
            a.SetVqReady(1, true);
            a.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
        }
        stop.Cancel();
        kicker.Wait();
        Assert.Equal(0, vf.ViolationCount(SpecRule.NotifyBeforeDriverOk));
        Assert.Equal(0, vf.ViolationCount(SpecRule.NotifyDisabledQueue));
        Assert.Equal(0, vf.Status & VirtioStatus.NEEDS_RESET);
    }

    [Fact]
    public void InitFindsCapabilitiesQueuesAndLmBlock()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        var hw = IfcvfHw.Init(vf);
        Assert.Equal(5, hw.NumQueues);
        Assert.True(hw.HasLm);
        Assert.Equal(vf.DeviceFeatures, hw.GetDeviceFeatures());
        Assert.Equal((2, 3UL * 4096, 4096UL), hw.GetVqNotification(3));
    }

    [Fact]
    public void StartProgramsEveryQueueAndTheMqRegisterAndStopSavesState()
    {
        using var vf = new SoftIfcVf();
        using var a = IfcvfAdapter.Probe(vf);
        using var mem = BringUp(a, NetFeatures, [(0, VdpaVqState.Split(5, 5)), (1, VdpaVqState.Split(9, 7))]);

        Assert.Equal(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK, a.GetStatus());
        Assert.Equal(NetFeatures, vf.DriverFeatures);
        Assert.True(vf.IsQueueRunning(0));
        Assert.True(vf.IsQueueRunning(1));
        Assert.False(vf.IsQueueRunning(2));
        Assert.Equal((Ring(1), Ring(1) + 0x4000, Ring(1) + 0x8000), a.Hw.GetVqAddress(1));
        Assert.Equal(256, a.Hw.GetVqNum(1));
        Assert.NotEqual(NoVec, vf.QueueVector(1));
        Assert.Equal(1u, vf.MqRegister); // written on DRIVER_OK, as DPDK's driver does

        a.SetVqReady(0, false);
        a.SetVqReady(1, false);
        Assert.Equal(VdpaVqState.Split(5, 5), a.GetVqState(0));
        Assert.Equal(VdpaVqState.Split(9, 7), a.GetVqState(1));
        a.Reset();
        Assert.Equal(0, a.GetStatus());
        Assert.False(vf.IsQueueRunning(0));
    }

    [Theory]
    [InlineData(LmLayout.PairBlocks)]
    [InlineData(LmLayout.Compact)]
    public void VqStateSaveAndRestoreKeepsEveryQueueApartAcrossPairs(LmLayout layout)
    {
        // Linux once computed the LM pair index as qid / nr_vring: all queues aliased pair 0.
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 4, LmLayout = layout });
        using var a = IfcvfAdapter.Probe(vf, new IfcvfAdapterOptions { Hw = new IfcvfHwOptions { LmLayout = layout } });
        ulong features = NetFeatures | VirtioFeature.Bit(VirtioFeature.NET_F_MQ) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ);
        var first = Enumerable.Range(0, 8).Select(i => (i, VdpaVqState.Split((ushort)(100 + i), (ushort)(100 + i)))).ToList();
        using (BringUp(a, features, first))
        {
            for (int i = 0; i < 8; i++)
            {
                Assert.Equal((ushort)(100 + i), a.GetVqState(i).AvailIndex);
            }
            for (int i = 0; i < 8; i++)
            {
                a.SetVqReady(i, false);
            }
            var saved = Enumerable.Range(0, 8).Select(a.GetVqState).ToList();
            for (int i = 0; i < 8; i++)
            {
                Assert.Equal((ushort)(100 + i), saved[i].AvailIndex);
            }
            // Restore into a fresh start with the saved values shifted: still per-queue.
            a.Reset();
            a.DmaUnmap(Ring(0), 0x10_0000);
            var again = Enumerable.Range(0, 8).Select(i => (i, VdpaVqState.Split((ushort)(saved[i].AvailIndex + 1000), (ushort)(saved[i].AvailIndex + 1000)))).ToList();
            using (BringUp(a, features, again))
            {
                for (int i = 0; i < 8; i++)
                {
                    a.SetVqReady(i, false);
                    Assert.Equal((ushort)(1100 + i), a.GetVqState(i).AvailIndex);
                }
            }
        }
    }

    [Fact]
    public void DeviceRefusesFeaturesOkForBitsItDoesNotOffer()
    {
        using var vf = new SoftIfcVf();
        var hw = IfcvfHw.Init(vf);
        hw.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
        hw.SetDriverFeatures(NetFeatures | VirtioFeature.Bit(VirtioFeature.F_RING_PACKED));
        hw.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
        Assert.Equal(0, hw.GetStatus() & VirtioStatus.FEATURES_OK);
    }

    [Fact]
    public void DeviceRefusesAVectorBeyondItsTableAndReadsBackNoVector()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { MsixVectors = 2 });
        var hw = IfcvfHw.Init(vf);
        Assert.Equal((ushort)1, hw.SetVqVector(0, 1));
        Assert.Equal(NoVec, hw.SetVqVector(1, 2));
    }

    [Fact]
    public void ResetPollsUntilTheDeviceReadsZero()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { ResetLatency = TimeSpan.FromMilliseconds(20) });
        var hw = IfcvfHw.Init(vf);
        hw.SetStatus(VirtioStatus.ACKNOWLEDGE);
        hw.Reset();
        Assert.Equal(0, hw.GetStatus());
    }

    [Fact]
    public void ResetOfADeviceThatNeverFinishesIsABoundedError()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { NeverCompleteReset = true });
        var hw = IfcvfHw.Init(vf, new IfcvfHwOptions { ResetTimeout = TimeSpan.FromMilliseconds(50) });
        hw.SetStatus(VirtioStatus.ACKNOWLEDGE);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.Throws<IfcvfDeviceException>(hw.Reset);
        Assert.Contains("did not finish reset", e.Message);
        Assert.True(sw.ElapsedMilliseconds < 5000);
    }

    [Fact]
    public void ConfigReadRetriesWhileGenerationMoves()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { ConfigChurnReads = 9 });
        var hw = IfcvfHw.Init(vf);
        Span<byte> mac = stackalloc byte[6];
        hw.ReadDeviceConfig(VirtioNetConfig.Mac, mac);
        Assert.Equal(vf.Mac, mac.ToArray());
    }

    [Fact]
    public void ConfigThatNeverSettlesIsABoundedError()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { ConfigChurnReads = -1 });
        var hw = IfcvfHw.Init(vf, new IfcvfHwOptions { ConfigReadRetries = 8 });
        var e = Assert.Throws<IfcvfDeviceException>(() => hw.ReadDeviceConfig(0, new byte[6]));
        Assert.Contains("never settled", e.Message);
    }

    [Fact]
    public void ConfigAccessBeyondDeviceConfigIsRefused()
    {
        using var vf = new SoftIfcVf();
        var hw = IfcvfHw.Init(vf);
        Assert.Throws<ArgumentOutOfRangeException>(() => hw.ReadDeviceConfig(20, new byte[8]));
    }

    [Fact]
    public void ConfigWriteOfMacReachesTheDevice()
    {
        using var vf = new SoftIfcVf();
        var hw = IfcvfHw.Init(vf);
        hw.WriteDeviceConfig(0, new byte[] { 2, 4, 6, 8, 10, 12 });
        Assert.Equal(new byte[] { 2, 4, 6, 8, 10, 12 }, vf.Mac);
    }

    [Fact]
    public void DoorbellWriteReachesTheQueue()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        var hw = IfcvfHw.Init(vf);
        var seen = new List<int>();
        vf.DoorbellObserver = seen.Add;
        hw.NotifyQueue(3);
        hw.NotifyQueue(3);
        hw.NotifyQueue(0);
        Assert.Equal(2, vf.DoorbellCount(3));
        Assert.Equal(1, vf.DoorbellCount(0));
        Assert.Equal([3, 3, 0], seen);
        Assert.Equal(0, vf.RegisterErrors);
    }

    [Fact]
    public void DirtyLogRegistersAreProgrammedThroughTheAdapter()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        using var a = IfcvfAdapter.Probe(vf);
        a.EnableDirtyLog(0x1000_0000_0000, 0x8000);
        Assert.Equal((true, 0x1000_0000_0000UL, 0x1000_0000_8000UL), vf.DirtyLog);
        a.DisableDirtyLog();
        Assert.False(vf.DirtyLog.Enabled);
        Assert.Throws<VdpaException>(() => a.EnableDirtyLog(ulong.MaxValue - 10, 0x100));
    }

    [Fact]
    public void TwoPairsInUseAreWrittenToTheMqRegister()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        using var a = IfcvfAdapter.Probe(vf);
        ulong features = NetFeatures | VirtioFeature.Bit(VirtioFeature.NET_F_MQ) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ);
        using var mem = BringUp(a, features, Enumerable.Range(0, 5).Select(q => (q, default(VdpaVqState))).ToList());
        Assert.Equal(2u, vf.MqRegister);
    }

    [Fact]
    public void DisablingAQueueWaitsForTheDeviceAndKeepsOthersRunning()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        using var a = IfcvfAdapter.Probe(vf);
        using var mem = BringUp(a, NetFeatures, Enumerable.Range(0, 4).Select(q => (q, VdpaVqState.Split((ushort)(3 + q), (ushort)(3 + q)))).ToList());
        a.SetVqReady(2, false);
        Assert.False(vf.IsQueueRunning(2));
        Assert.True(vf.IsQueueRunning(3));
        Assert.Equal(5, a.GetVqState(2).AvailIndex);
        // Re-enable with a new state while the device stays DRIVER_OK (DPDK set_vring_state).
        a.SetVqState(2, VdpaVqState.Split(42, 42));
        a.SetVqReady(2, true);
        Assert.True(vf.IsQueueRunning(2));
        Assert.Equal(42, a.GetVqState(2).AvailIndex);
    }

    [Fact]
    public void NoLmBlockMeansNoRingStateButStartStillWorks()
    {
        using var vf = new SoftIfcVf();
        var noBar4 = new WithoutBar(vf, 4);
        using var a = IfcvfAdapter.Probe(noBar4);
        Assert.False(a.HasLiveMigrationBlock);
        using var mem = BringUp(a, NetFeatures, [(0, default(VdpaVqState))]);
        Assert.True(vf.IsQueueRunning(0));
        Assert.Throws<VdpaNotSupportedException>(() => a.GetVqState(0));
        Assert.Equal(0u, vf.MqRegister);
    }

    /// <summary>The model with one BAR hidden (a PF or other firmware without the LM BAR).</summary>
    private sealed class WithoutBar(SoftIfcVf vf, int hidden) : DelegatingPciFunction(vf, ownsInner: false)
    {
        public override IReadOnlyList<PciBar> Bars => vf.Bars.Where(b => b.Index != hidden).ToList();
    }
}
