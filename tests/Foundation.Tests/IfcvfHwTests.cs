using IfcVdpa.IfcvfModel;
using IfcVdpa.Ifcvf;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;

namespace IfcVdpa.Foundation.Tests;

/// <summary>The ifcvf hardware layer driving the software IFC VF end to end at register level.</summary>
public class IfcvfHwTests
{
    private static readonly ulong NetFeatures =
        VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM) |
        VirtioFeature.Bit(VirtioFeature.NET_F_MAC) | VirtioFeature.Bit(VirtioFeature.NET_F_MRG_RXBUF);

    private static HwQueue Q(int i, ushort lastAvail = 0, ushort lastUsed = 0, ushort vector = 0) =>
        new(true, 256, 0x10_0000UL + ((ulong)i * 0x1_0000), 0x10_4000UL + ((ulong)i * 0x1_0000), 0x10_8000UL + ((ulong)i * 0x1_0000), lastAvail, lastUsed, vector);

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
    public void StartProgramsEveryQueueAndStopSavesState()
    {
        using var vf = new SoftIfcVf();
        var hw = IfcvfHw.Init(vf);
        vf.EnableMsix(new IMsixSink?[vf.MsixVectorCount]);
        hw.StartHw(NetFeatures, [Q(0, 5, 5, vector: 1), Q(1, 9, 7, vector: 2)], configVector: 0, mqPairs: 1);

        Assert.Equal(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK, hw.GetStatus());
        Assert.Equal(NetFeatures, vf.DriverFeatures);
        Assert.Equal(NetFeatures, hw.GetDriverFeatures());
        Assert.True(vf.IsQueueRunning(0));
        Assert.True(vf.IsQueueRunning(1));
        Assert.False(vf.IsQueueRunning(2));
        Assert.Equal((0x11_0000UL, 0x11_4000UL, 0x11_8000UL), hw.GetVqAddress(1));
        Assert.Equal(256, hw.GetVqNum(1));
        Assert.Equal(2, vf.QueueVector(1));
        Assert.Equal(1u, vf.MqRegister);

        var saved = hw.StopHw();
        Assert.Equal(((ushort)5, (ushort)5), saved[0]);
        Assert.Equal(((ushort)9, (ushort)7), saved[1]);
        Assert.Null(saved[2]);
        Assert.Equal(0, hw.GetStatus());
        Assert.False(vf.IsQueueRunning(0));
    }

    [Theory]
    [InlineData(LmLayout.PairBlocks)]
    [InlineData(LmLayout.Compact)]
    public void VqStateSaveAndRestoreKeepsEveryQueueApartAcrossPairs(LmLayout layout)
    {
        // Linux once computed the LM pair index as qid / nr_vring: all queues aliased pair 0.
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 4, LmLayout = layout });
        var hw = IfcvfHw.Init(vf, new IfcvfHwOptions { LmLayout = layout });
        var queues = Enumerable.Range(0, 8).Select(i => Q(i, (ushort)(100 + i), (ushort)(100 + i), NoVec)).ToList();
        hw.StartHw(NetFeatures | VirtioFeature.Bit(VirtioFeature.NET_F_MQ) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ), queues, NoVec, 4);
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal((ushort)(100 + i), hw.GetVqState(i));
        }
        var saved = hw.StopHw();
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal((ushort)(100 + i), saved[i]!.Value.LastAvail);
        }
        // Restore into a fresh start with the saved values shifted: still per-queue.
        var again = Enumerable.Range(0, 8).Select(i => Q(i, (ushort)(saved[i]!.Value.LastAvail + 1000), (ushort)(saved[i]!.Value.LastAvail + 1000), NoVec)).ToList();
        hw.StartHw(NetFeatures, again, NoVec, 4);
        var saved2 = hw.StopHw();
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal((ushort)(1100 + i), saved2[i]!.Value.LastAvail);
        }
    }

    private const ushort NoVec = VirtioPci.NoVector;

    [Fact]
    public void StartFailsClearlyWhenDeviceRefusesFeatures()
    {
        using var vf = new SoftIfcVf();
        var hw = IfcvfHw.Init(vf);
        var e = Assert.Throws<IfcvfDeviceException>(() =>
            hw.StartHw(NetFeatures | VirtioFeature.Bit(VirtioFeature.F_RING_PACKED), [Q(0)], NoVec, 0));
        Assert.Contains("FEATURES_OK", e.Message);
        Assert.Equal(0, hw.GetStatus() & VirtioStatus.DRIVER_OK);
    }

    [Fact]
    public void StartFailsClearlyWhenDeviceRefusesAVector()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { MsixVectors = 2 });
        var hw = IfcvfHw.Init(vf);
        var e = Assert.Throws<IfcvfDeviceException>(() => hw.StartHw(NetFeatures, [Q(0, vector: 1), Q(1, vector: 2)], 0, 0));
        Assert.Contains("vector 2 for queue 1", e.Message);
    }

    [Fact]
    public void ResetPollsUntilTheDeviceReadsZero()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { ResetLatency = TimeSpan.FromMilliseconds(20) });
        var hw = IfcvfHw.Init(vf);
        hw.AddStatus(VirtioStatus.ACKNOWLEDGE);
        hw.Reset();
        Assert.Equal(0, hw.GetStatus());
    }

    [Fact]
    public void ResetOfADeviceThatNeverFinishesIsABoundedError()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { NeverCompleteReset = true });
        var hw = IfcvfHw.Init(vf, new IfcvfHwOptions { ResetTimeout = TimeSpan.FromMilliseconds(50) });
        hw.AddStatus(VirtioStatus.ACKNOWLEDGE);
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
    public void DirtyLogAndMqRegistersAreProgrammed()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        var hw = IfcvfHw.Init(vf);
        hw.EnableDirtyLog(0x1000_0000_0000, 0x8000);
        Assert.Equal((true, 0x1000_0000_0000UL, 0x1000_0000_8000UL), vf.DirtyLog);
        hw.DisableDirtyLog();
        Assert.False(vf.DirtyLog.Enabled);
        hw.SetMq(2);
        Assert.Equal(2u, vf.MqRegister);
    }

    [Fact]
    public void DisablingAQueueWaitsForTheDeviceAndKeepsOthersRunning()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        var hw = IfcvfHw.Init(vf);
        hw.StartHw(NetFeatures, [Q(0, 3, 3, NoVec), Q(1, 4, 4, NoVec), Q(2, 5, 5, NoVec), Q(3, 6, 6, NoVec)], NoVec, 2);
        hw.DisableVqAndWait(2);
        Assert.False(vf.IsQueueRunning(2));
        Assert.True(vf.IsQueueRunning(3));
        Assert.Equal(5, hw.GetVqState(2));
        // Re-enable with a new state while the device stays DRIVER_OK (DPDK set_vring_state).
        hw.SetVqState(2, 42);
        hw.SetVqReady(2, true);
        Assert.True(vf.IsQueueRunning(2));
        Assert.Equal(42, hw.GetVqState(2));
    }

    [Fact]
    public void NoLmBlockMeansNoRingStateButStartStillWorks()
    {
        using var vf = new SoftIfcVf();
        var noBar4 = new WithoutBar(vf, 4);
        var hw = IfcvfHw.Init(noBar4);
        Assert.False(hw.HasLm);
        hw.StartHw(NetFeatures, [Q(0, vector: NoVec)], NoVec, 1);
        Assert.Throws<IfcvfDeviceException>(() => hw.GetVqState(0));
        Assert.Equal(0u, vf.MqRegister);
    }

    /// <summary>The model with one BAR hidden (a PF or other firmware without the LM BAR).</summary>
    private sealed class WithoutBar(SoftIfcVf vf, int hidden) : DelegatingPciFunction(vf, ownsInner: false)
    {
        public override IReadOnlyList<PciBar> Bars => vf.Bars.Where(b => b.Index != hidden).ToList();
    }
}
