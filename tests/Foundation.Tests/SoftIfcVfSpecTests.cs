using IfcVdpa.IfcvfModel;
using IfcVdpa.Ifcvf;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioPci;

namespace IfcVdpa.Foundation.Tests;

/// <summary>Register-level rules of the software IFC VF (VIRTIO 1.2 §4.1 and the IFC facts).</summary>
public class SoftIfcVfSpecTests
{
    private static readonly ulong Version1 = VirtioFeature.Bit(VirtioFeature.F_VERSION_1);

    [Fact]
    public void IdentityIsIfcN3000ByDefault()
    {
        using var vf = new SoftIfcVf();
        Assert.Equal(0x1AF4, vf.ReadConfig16(PciConfig.VendorId));
        Assert.Equal(0x1041, vf.ReadConfig16(PciConfig.DeviceId));
        Assert.Equal(0x8086, vf.ReadConfig16(PciConfig.SubsystemVendorId));
        Assert.Equal(0x001A, vf.ReadConfig16(PciConfig.SubsystemId));
        Assert.Equal(0x02, vf.ReadConfig8(PciConfig.ClassCode + 1));
    }

    [Fact]
    public void TransitionalVariantHasItsOwnIds()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { Transitional = true });
        Assert.Equal(0x1000, vf.ReadConfig16(PciConfig.DeviceId));
        Assert.Equal(0x0001, vf.ReadConfig16(PciConfig.SubsystemId));
    }

    [Fact]
    public void CapabilityListPointsIntoBar0Bar2Bar4WithOneDoorbellPerPage()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 4 });
        var caps = CapabilityWalk.Run(vf);
        Assert.True(caps.HasMsix);
        Assert.Equal(0, caps.Common.Bar);
        Assert.Equal(2, caps.Notify.Bar);
        Assert.Equal(4096u, caps.NotifyOffMultiplier);
        Assert.Equal(0, caps.Device.Bar);
        Assert.Contains(vf.Bars, b => b.Index == 4);
        // queue_notify_off(q) = q: each queue's doorbell owns a page.
        for (int q = 0; q < vf.NumQueues; q++)
        {
            Assert.Equal(q, vf.Q16(q, QueueNotifyOff));
        }
        Assert.True(vf.FindBar(2)!.Value.Size >= (ulong)vf.NumQueues * 4096);
    }

    [Fact]
    public void BarSizingReadsBackTheSizeMask()
    {
        using var vf = new SoftIfcVf();
        vf.WriteConfig32(PciConfig.Bar0, 0xFFFF_FFFF);
        uint lo = vf.ReadConfig32(PciConfig.Bar0);
        Assert.Equal(0x4u, lo & 0xF); // 64-bit memory BAR
        Assert.Equal(IfcvfLayout.Bar0Size, (ulong)(~(lo & 0xFFFF_FFF0) + 1));
        Assert.Equal(0u, vf.ReadConfig32(PciConfig.Bar0 + 4 * 3)); // BAR3 is BAR2's upper half: no size bits
    }

    [Fact]
    public void FeaturesOkStaysClearWhenDriverAsksForUnofferedFeature()
    {
        using var vf = new SoftIfcVf();
        vf.WriteStatus(Regs.AckDriver);
        vf.WriteDriverFeatures(Version1 | VirtioFeature.Bit(VirtioFeature.F_RING_PACKED));
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK);
        Assert.Equal(Regs.AckDriver, vf.Status());
    }

    [Fact]
    public void FeaturesOkStaysClearWithoutVersion1()
    {
        using var vf = new SoftIfcVf();
        vf.WriteStatus(Regs.AckDriver);
        vf.WriteDriverFeatures(VirtioFeature.Bit(VirtioFeature.NET_F_MAC));
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK);
        Assert.Equal(0, vf.Status() & VirtioStatus.FEATURES_OK);
    }

    [Fact]
    public void FeaturesOkAcceptedForSubsetAndFeaturesThenFrozen()
    {
        using var vf = new SoftIfcVf();
        ulong f = Version1 | VirtioFeature.Bit(VirtioFeature.NET_F_MAC);
        vf.WriteStatus(Regs.AckDriver);
        vf.WriteDriverFeatures(f);
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK);
        Assert.NotEqual(0, vf.Status() & VirtioStatus.FEATURES_OK);
        vf.WriteDriverFeatures(f | VirtioFeature.Bit(VirtioFeature.NET_F_MRG_RXBUF));
        Assert.Equal(f, vf.DriverFeatures);
    }

    [Fact]
    public void FeatureSelectWindowsExposeBothHalves()
    {
        using var vf = new SoftIfcVf();
        vf.WriteBar32(0, DeviceFeatureSelect, 0);
        uint lo = vf.ReadBar32(0, DeviceFeature);
        vf.WriteBar32(0, DeviceFeatureSelect, 1);
        uint hi = vf.ReadBar32(0, DeviceFeature);
        vf.WriteBar32(0, DeviceFeatureSelect, 2);
        Assert.Equal(0u, vf.ReadBar32(0, DeviceFeature));
        Assert.Equal(vf.DeviceFeatures, lo | ((ulong)hi << 32));
        Assert.True(VirtioFeature.Has(vf.DeviceFeatures, VirtioFeature.F_VERSION_1));
    }

    [Fact]
    public void DriverOkWithoutFeaturesOkSetsNeedsResetAndRaisesConfigVector()
    {
        using var vf = new SoftIfcVf();
        int configIrqs = 0;
        vf.EnableMsix([new CallbackSink(() => configIrqs++)]);
        vf.WriteBar16(0, MsixConfig, 0);
        vf.WriteStatus(Regs.AckDriver);
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.DRIVER_OK);
        Assert.NotEqual(0, vf.Status() & VirtioStatus.NEEDS_RESET);
        Assert.Equal(1, configIrqs);
        Assert.NotNull(vf.NeedsResetReason);
        vf.WriteStatus(0);
        Assert.Equal(0, vf.Status());
        Assert.Null(vf.NeedsResetReason);
    }

    [Fact]
    public void DriverCannotSetNeedsResetNorClearBits()
    {
        using var vf = new SoftIfcVf();
        vf.WriteStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.NEEDS_RESET);
        Assert.Equal(VirtioStatus.ACKNOWLEDGE, vf.Status());
        long before = vf.RegisterErrors;
        vf.WriteStatus(VirtioStatus.DRIVER);
        Assert.Equal(Regs.AckDriver, vf.Status());
        Assert.Equal(before + 1, vf.RegisterErrors);
    }

    [Fact]
    public void QueueRegistersAreFrozenWhileEnabled()
    {
        using var vf = new SoftIfcVf();
        vf.WQ16(0, QueueSize, 256);
        vf.Select(0);
        vf.WriteBar32(0, QueueDescLo, 0x1000);
        vf.WriteBar16(0, QueueEnable, 1);
        Assert.Equal(1, vf.ReadBar16(0, QueueEnable));
        vf.WriteBar16(0, QueueSize, 128);
        vf.WriteBar32(0, QueueDescLo, 0x2000);
        vf.WriteBar32(0, QueueAvailHi, 0x7);
        Assert.Equal(256, vf.ReadBar16(0, QueueSize));
        Assert.Equal(0x1000u, vf.ReadBar32(0, QueueDescLo));
        Assert.Equal(0u, vf.ReadBar32(0, QueueAvailHi));
        Assert.True(vf.RegisterErrors >= 3);
    }

    [Fact]
    public void QueueAddressesAreWrittenAsHalves()
    {
        using var vf = new SoftIfcVf();
        vf.Select(1);
        vf.WriteBar32(0, QueueUsedLo, 0x89AB_C000);
        vf.WriteBar32(0, QueueUsedHi, 0x0000_0123);
        Assert.Equal(0x89AB_C000u, vf.ReadBar32(0, QueueUsedLo));
        Assert.Equal(0x123u, vf.ReadBar32(0, QueueUsedHi));
    }

    [Fact]
    public void VectorTheDeviceCannotUseReadsBackNoVector()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { MsixVectors = 2 });
        vf.WQ16(0, QueueMsixVector, 1);
        Assert.Equal(1, vf.Q16(0, QueueMsixVector));
        vf.WQ16(0, QueueMsixVector, 2);
        Assert.Equal(NoVector, vf.Q16(0, QueueMsixVector));
        vf.WriteBar16(0, MsixConfig, 7);
        Assert.Equal(NoVector, vf.ReadBar16(0, MsixConfig));
    }

    [Fact]
    public void QueueBeyondNumQueuesReadsAsUnavailable()
    {
        using var vf = new SoftIfcVf();
        Assert.Equal(3, vf.ReadBar16(0, VirtioPci.NumQueues));
        Assert.Equal(0, vf.Q16(3, QueueSize));
        Assert.Equal(1024, vf.Q16(2, QueueSize));
    }

    [Fact]
    public void ConfigGenerationChangesWheneverDeviceConfigChanges()
    {
        using var vf = new SoftIfcVf();
        byte g0 = vf.ReadBar8(0, VirtioPci.ConfigGeneration);
        vf.SetLinkUp(false);
        byte g1 = vf.ReadBar8(0, VirtioPci.ConfigGeneration);
        Assert.NotEqual(g0, g1);
        vf.SetLinkUp(false); // no change, no new generation
        Assert.Equal(g1, vf.ReadBar8(0, VirtioPci.ConfigGeneration));
        vf.SetMac([2, 0, 0, 0, 0, 9]);
        Assert.NotEqual(g1, vf.ReadBar8(0, VirtioPci.ConfigGeneration));
    }

    [Fact]
    public void DeviceConfigIsByteReadable()
    {
        var mac = new byte[] { 0x02, 0x11, 0x22, 0x33, 0x44, 0x55 };
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { Mac = mac, Mtu = 9000, QueuePairs = 3 });
        ulong cfg = IfcvfLayout.DeviceCfgOffset;
        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(mac[i], vf.ReadBar8(0, cfg + (ulong)i));
        }
        Assert.Equal(VirtioNetConfig.S_LINK_UP, vf.ReadBar16(0, cfg + VirtioNetConfig.Status));
        Assert.Equal(3, vf.ReadBar8(0, cfg + VirtioNetConfig.MaxVirtqueuePairs));
        Assert.Equal(0, vf.ReadBar8(0, cfg + VirtioNetConfig.MaxVirtqueuePairs + 1));
        Assert.Equal(9000, vf.ReadBar8(0, cfg + VirtioNetConfig.Mtu) | (vf.ReadBar8(0, cfg + VirtioNetConfig.Mtu + 1) << 8));
    }

    [Fact]
    public void ResetClearsFeaturesQueuesVectorsAndRingState()
    {
        using var vf = new SoftIfcVf();
        vf.WriteStatus(Regs.AckDriver);
        vf.WriteDriverFeatures(Version1);
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK);
        vf.WQ16(0, QueueSize, 64);
        vf.WQ16(0, QueueMsixVector, 1);
        vf.WriteBar32(4, (ulong)IfcLiveMigration.RingStateOffset(LmLayout.PairBlocks, 0), 0x0005_0005);
        vf.WQ16(0, QueueEnable, 1);
        vf.WriteStatus(0);
        Assert.Equal(0, vf.Status());
        Assert.Equal(0ul, vf.DriverFeatures);
        Assert.Equal(1024, vf.Q16(0, QueueSize));
        Assert.Equal(NoVector, vf.Q16(0, QueueMsixVector));
        Assert.Equal(0, vf.Q16(0, QueueEnable));
        Assert.Equal(0u, vf.ReadBar32(4, (ulong)IfcLiveMigration.RingStateOffset(LmLayout.PairBlocks, 0)));
    }

    [Fact]
    public void ResetTakesConfiguredTimeToReadZero()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { ResetLatency = TimeSpan.FromMilliseconds(30) });
        vf.WriteStatus(VirtioStatus.ACKNOWLEDGE);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        vf.WriteStatus(0);
        Assert.NotEqual(0, vf.Status());
        while (vf.Status() != 0)
        {
            Assert.True(sw.ElapsedMilliseconds < 2000, "reset never completed");
            Thread.Sleep(1);
        }
        Assert.True(sw.ElapsedMilliseconds >= 25);
    }

    [Fact]
    public void IsrReadClearsAndRecordsConfigChange()
    {
        using var vf = new SoftIfcVf();
        vf.SetLinkUp(false);
        Assert.Equal(IsrConfig, vf.ReadBar8(0, IfcvfLayout.IsrOffset));
        Assert.Equal(0, vf.ReadBar8(0, IfcvfLayout.IsrOffset));
    }

    [Fact]
    public void MaskedVectorIsHeldPendingAndDeliveredOnUnmask()
    {
        using var vf = new SoftIfcVf();
        int hits = 0;
        vf.EnableMsix([new CallbackSink(() => hits++), new CallbackSink(() => hits++)]);
        vf.WQ16(0, QueueMsixVector, 1);
        ulong ctrl = IfcvfLayout.MsixTableOffset + (16 * 1) + 12;
        vf.WriteBar32(0, ctrl, 1); // mask vector 1
        vf.RaiseQueueInterrupt(0);
        Assert.Equal(0, hits);
        Assert.Equal(0b10u, vf.ReadBar32(0, IfcvfLayout.MsixPbaOffset));
        vf.WriteBar32(0, ctrl, 0);
        Assert.Equal(1, hits);
        Assert.Equal(0u, vf.ReadBar32(0, IfcvfLayout.MsixPbaOffset));
        Assert.NotEqual(0, vf.ReadConfig16(IfcvfLayout.CapMsix + PciConfig.MsixMessageControl) & PciConfig.MsixEnable);
    }

    [Fact]
    public void InterruptWithoutMsixOrVectorIsDroppedAndCounted()
    {
        using var vf = new SoftIfcVf();
        vf.RaiseQueueInterrupt(0);
        vf.RaiseInterrupt(99);
        Assert.Equal(2, vf.InterruptCounts.Dropped);
        Assert.Equal(0, vf.InterruptCounts.Delivered);
    }

    [Theory]
    [InlineData(0, 2, 0x02)]        // wrong value for the queue
    [InlineData(0x1000, 1, 0x01)]   // 8-bit write
    [InlineData(0x1004, 2, 0x01)]   // not at the page start
    [InlineData(0x3000, 2, 0x03)]   // queue beyond num_queues
    public void MalformedDoorbellWritesAreIgnoredAndCounted(int offset, int size, int value)
    {
        using var vf = new SoftIfcVf();
        if (size == 1)
        {
            vf.WriteBar8(2, (ulong)offset, (byte)value);
        }
        else
        {
            vf.WriteBar16(2, (ulong)offset, (ushort)value);
        }
        Assert.Equal(1, vf.RegisterErrors);
        for (int q = 0; q < vf.NumQueues; q++)
        {
            Assert.Equal(0, vf.DoorbellCount(q));
        }
    }

    [Fact]
    public void OutOfRangeBarAccessIsAnErrorNotACrash()
    {
        using var vf = new SoftIfcVf();
        Assert.Throws<ArgumentOutOfRangeException>(() => vf.ReadBar32(0, IfcvfLayout.Bar0Size));
        Assert.Throws<ArgumentOutOfRangeException>(() => vf.ReadBar32(1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => vf.ReadConfig32(254));
    }

    [Theory]
    [InlineData(LmLayout.PairBlocks)]
    [InlineData(LmLayout.Compact)]
    public void RingStateIsRestoredOnEnableAndSavedBeforeDisableCompletes(LmLayout layout)
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2, LmLayout = layout });
        const int q = 3;
        ulong off = (ulong)IfcLiveMigration.RingStateOffset(layout, q);
        vf.WriteBar16(4, off, 0x1234);
        vf.WriteStatus(Regs.AckDriver);
        vf.WriteDriverFeatures(Version1);
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK);
        vf.WQ16(q, QueueEnable, 1);
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
        Assert.True(vf.IsQueueRunning(q));
        vf.WriteBar16(4, off, 0x9999); // ignored: the device owns the state while the queue runs
        Assert.Equal(0x1234, vf.ReadBar16(4, off));
        vf.WQ16(q, QueueEnable, 0);
        Assert.Equal(0, vf.Q16(q, QueueEnable));
        Assert.False(vf.IsQueueRunning(q));
        Assert.Equal(0x1234, vf.ReadBar16(4, off));
        // No other queue's word was touched.
        for (int other = 0; other < vf.NumQueues; other++)
        {
            if (other != q)
            {
                Assert.Equal(0, vf.ReadBar16(4, (ulong)IfcLiveMigration.RingStateOffset(layout, other)));
            }
        }
    }

    [Fact]
    public void PairBlocksLayoutHasMqRegisterAndFullWords()
    {
        using var vf = new SoftIfcVf(new SoftIfcVfOptions { QueuePairs = 2 });
        vf.WriteBar32(4, IfcLiveMigration.MqRegister, 2);
        Assert.Equal(2u, vf.MqRegister);
        vf.WriteBar32(4, (ulong)IfcLiveMigration.RingStateOffset(LmLayout.PairBlocks, 2), 0x0007_0009);
        Assert.Equal(0x60u, (uint)IfcLiveMigration.RingStateOffset(LmLayout.PairBlocks, 2));
        Assert.Equal(0x0007_0009u, vf.ReadBar32(4, 0x60));
        Assert.Equal(0x0007, vf.ReadBar16(4, 0x62));
    }

    [Fact]
    public void DmaMapRefusesOverlapAndUnknownUnmap()
    {
        using var vf = new SoftIfcVf();
        using var mem = IfcVdpa.Interop.Primitives.MappedMemory.Allocate(0x4000);
        vf.DmaMap(0x10000, mem.All, true);
        Assert.Throws<ArgumentException>(() => vf.DmaMap(0x12000, mem.Slice(0x2000, 0x1000), true));
        Assert.Throws<ArgumentException>(() => vf.DmaMap(ulong.MaxValue - 10, mem.Slice(0, 0x100), true));
        Assert.Throws<ArgumentException>(() => vf.DmaUnmap(0x10000, 0x1000));
        Assert.True(vf.Dma.TryTranslate(0x13FF0, 16, write: true, out var span));
        Assert.Equal(16, span.Length);
        Assert.False(vf.Dma.TryTranslate(0x13FF0, 17, write: false, out _));
        Assert.False(vf.Dma.TryTranslate(0xFFFF, 2, write: false, out _));
        vf.DmaUnmap(0x10000, 0x4000);
        Assert.Equal(0, vf.DmaMapCount);
    }

    [Fact]
    public void CachedTranslationIsReusedOnlyWhileTheMapIsUnchanged()
    {
        var map = new IfcVdpa.Interop.Primitives.IovaMap();
        using var a = IfcVdpa.Interop.Primitives.MappedMemory.Allocate(0x2000);
        using var b = IfcVdpa.Interop.Primitives.MappedMemory.Allocate(0x2000);
        map.Map(0x10000, a.All, writable: true);
        var cache = default(IfcVdpa.Interop.Primitives.TranslationCache);
        Assert.True(map.TryTranslateCached(ref cache, 0x10100, 16, write: true, out var first));
        first[0] = 0x5A;
        Assert.True(map.TryTranslateCached(ref cache, 0x10100, 16, write: true, out var again));
        Assert.Equal(0x5A, again[0]);
        // A different request through the same cache is translated afresh (and refused when out of range).
        Assert.False(map.TryTranslateCached(ref cache, 0x11FF8, 16, write: false, out _));
        Assert.True(map.TryTranslateCached(ref cache, 0x10100, 16, write: true, out _));
        // The IOVA remapped to other memory: the cached answer must not survive the change.
        Assert.True(map.Unmap(0x10000, 0x2000));
        Assert.False(map.TryTranslateCached(ref cache, 0x10100, 16, write: true, out _));
        map.Map(0x10000, b.All, writable: false);
        Assert.False(map.TryTranslateCached(ref cache, 0x10100, 16, write: true, out _)); // now read-only
        Assert.True(map.TryTranslateCached(ref cache, 0x10100, 16, write: false, out var other));
        Assert.Equal(0, other[0]); // b's memory, not a's
        other[1] = 7;
        Assert.True(map.TryTranslate(0x10100, 16, write: false, out var plain));
        Assert.Equal(7, plain[1]);
    }
}
