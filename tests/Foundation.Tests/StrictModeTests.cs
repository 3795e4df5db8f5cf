using System.Collections.Concurrent;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioPci;

namespace IfcVdpa.Foundation.Tests;

/// <summary>
/// Issue 17 part 3: a hostile driver breaks each register-level virtio rule through the register layer. The
/// device counts it under the rule, logs the first of each kind once with the rule's section, and sets
/// NEEDS_RESET (with the config interrupt) only in strict mode; tolerant mode keeps today's behaviour.
/// </summary>
public class StrictModeTests
{
    private static readonly ulong Features =
        VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM) |
        VirtioFeature.Bit(VirtioFeature.NET_F_MAC) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ);

    private sealed class Rig : IDisposable
    {
        public Rig(bool strict)
        {
            Vf = new SoftIfcVf(new SoftIfcVfOptions { Strict = strict, Log = Logs.Enqueue });
            var sinks = new IMsixSink?[Vf.MsixVectorCount];
            sinks[0] = new CallbackSink(() => Interlocked.Increment(ref _configIrqs));
            Vf.EnableMsix(sinks);
        }

        private long _configIrqs;

        public SoftIfcVf Vf { get; }

        public ConcurrentQueue<string> Logs { get; } = new();

        public long ConfigIrqs => Interlocked.Read(ref _configIrqs);

        public void Dispose() => Vf.Dispose();
    }

    // ---- a well-behaved driver's steps (none breaks a rule) ----

    private static void Ack(SoftIfcVf vf)
    {
        vf.WriteStatus(0);
        Assert.Equal(0, vf.Status());
        vf.WriteStatus(VirtioStatus.ACKNOWLEDGE);
        vf.WriteStatus(Regs.AckDriver);
    }

    private static void Negotiate(SoftIfcVf vf, ulong features)
    {
        Ack(vf);
        vf.WriteDriverFeatures(features);
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK);
    }

    private static void SetupQueue(SoftIfcVf vf, int q)
    {
        vf.Select(q);
        vf.WriteBar16(0, QueueSize, 256);
        vf.WriteBar32(0, QueueDescLo, 0x10_0000);
        vf.WriteBar32(0, QueueDescHi, 0);
        vf.WriteBar32(0, QueueAvailLo, 0x11_0000);
        vf.WriteBar32(0, QueueAvailHi, 0);
        vf.WriteBar32(0, QueueUsedLo, 0x12_0000);
        vf.WriteBar32(0, QueueUsedHi, 0);
        vf.WriteBar16(0, QueueMsixVector, 1);
    }

    /// <summary>DRIVER_OK with queue 0 enabled and the config vector on MSI-X vector 0.</summary>
    private static void Live(SoftIfcVf vf)
    {
        Negotiate(vf, Features);
        vf.WriteBar16(0, MsixConfig, 0);
        SetupQueue(vf, 0);
        vf.WQ16(0, QueueEnable, 1);
        vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
    }

    private static void Doorbell(SoftIfcVf vf, int q, ushort value) => vf.WriteBar16(IfcvfLayout.NotifyBar, (ulong)q * IfcvfLayout.NotifyOffMultiplier, value);

    private sealed record Case(Action<SoftIfcVf> Prepare, Action<SoftIfcVf> Violate);

    private static readonly Dictionary<SpecRule, Case> Cases = new()
    {
        [SpecRule.StatusBitCleared] = new(Ack, vf => vf.WriteStatus(VirtioStatus.ACKNOWLEDGE)),
        [SpecRule.StatusOutOfOrder] = new(_ => { }, vf => vf.WriteStatus(VirtioStatus.DRIVER)),
        [SpecRule.DriverOkWithoutFeaturesOk] = new(Ack, vf => vf.WriteStatus(Regs.AckDriver | VirtioStatus.DRIVER_OK)),
        [SpecRule.ReinitBeforeResetDone] = new(Live, vf =>
        {
            vf.WriteStatus(0);
            vf.WriteStatus(VirtioStatus.ACKNOWLEDGE); // without reading device_status back as 0
        }),
        [SpecRule.FeaturesAfterFeaturesOk] = new(vf => Negotiate(vf, Features), vf =>
        {
            vf.WriteBar32(0, DriverFeatureSelect, 0);
            vf.WriteBar32(0, DriverFeature, 0x20);
        }),
        [SpecRule.UnofferedFeature] = new(vf =>
        {
            Ack(vf);
            vf.WriteDriverFeatures(Features | VirtioFeature.Bit(VirtioFeature.F_RING_PACKED)); // not offered by default
        }, vf => vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK)),
        [SpecRule.FeatureDependency] = new(vf =>
        {
            Ack(vf);
            vf.WriteDriverFeatures(VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_RX)); // needs CTRL_VQ
        }, vf => vf.WriteStatus(Regs.AckDriver | VirtioStatus.FEATURES_OK)),
        [SpecRule.AccessWidth] = new(Ack, vf => vf.ReadBar32(0, MsixConfig)),
        [SpecRule.ReadOnlyWrite] = new(Ack, vf => vf.WriteBar16(0, VirtioPci.NumQueues, 8)),
        [SpecRule.QueueWriteWhileEnabled] = new(Live, vf => vf.WQ16(0, QueueSize, 128)),
        [SpecRule.VectorWriteWhileEnabled] = new(Live, vf => vf.WQ16(0, QueueMsixVector, 2)),
        [SpecRule.QueueSizeInvalid] = new(vf => Negotiate(vf, Features), vf => vf.WQ16(0, QueueSize, 100)),
        [SpecRule.QueueSizeTooLarge] = new(vf => Negotiate(vf, Features), vf => vf.WQ16(0, QueueSize, 2048)),
        [SpecRule.QueueEnableValue] = new(vf =>
        {
            Negotiate(vf, Features);
            SetupQueue(vf, 0);
        }, vf => vf.WQ16(0, QueueEnable, 2)),
        [SpecRule.QueueEnableZero] = new(Live, vf => vf.WQ16(0, QueueEnable, 0)),
        [SpecRule.QueueEnableBeforeFeaturesOk] = new(vf =>
        {
            Ack(vf);
            vf.WriteDriverFeatures(Features);
            SetupQueue(vf, 0);
        }, vf => vf.WQ16(0, QueueEnable, 1)),
        [SpecRule.VectorOutOfRange] = new(Ack, vf => vf.WriteBar16(0, MsixConfig, 100)),
        [SpecRule.DeviceConfigWrite] = new(Live, vf => vf.WriteBar8(0, IfcvfLayout.DeviceCfgOffset + (ulong)VirtioNetConfig.Status, 1)),
        [SpecRule.MacConfigWrite] = new(Live, vf => vf.WriteBar8(0, IfcvfLayout.DeviceCfgOffset + (ulong)VirtioNetConfig.Mac, 0x02)),
        [SpecRule.NotifyBeforeDriverOk] = new(vf =>
        {
            Negotiate(vf, Features);
            SetupQueue(vf, 0);
            vf.WQ16(0, QueueEnable, 1);
        }, vf => Doorbell(vf, 0, 0)),
        [SpecRule.NotifyDisabledQueue] = new(Live, vf => Doorbell(vf, 1, 1)),
        [SpecRule.NotifyUnknownQueue] = new(Live, vf => Doorbell(vf, vf.NumQueues, (ushort)vf.NumQueues)),
        [SpecRule.NotifyData] = new(Live, vf => Doorbell(vf, 0, 7)),
    };

    public static TheoryData<SpecRule, bool> RegisterRules()
    {
        var d = new TheoryData<SpecRule, bool>();
        foreach (var rule in Cases.Keys)
        {
            d.Add(rule, false);
            d.Add(rule, true);
        }
        return d;
    }

    [Theory]
    [MemberData(nameof(RegisterRules))]
    public void EachRegisterRuleIsCountedLoggedOnceAndNeedsResetOnlyWhenStrict(SpecRule rule, bool strict)
    {
        using var rig = new Rig(strict);
        var vf = rig.Vf;
        var c = Cases[rule];
        c.Prepare(vf);
        Assert.Empty(vf.Violations); // the preparation is a well-behaved driver
        Assert.Equal(0, vf.Status & VirtioStatus.NEEDS_RESET);
        long irqsBefore = rig.ConfigIrqs;
        bool configVector = vf.ReadBar16(0, MsixConfig) == 0;

        c.Violate(vf);

        var info = SpecRules.Get(rule);
        Assert.Equal(new[] { (info, 1L) }, vf.Violations);
        string line = Assert.Single(rig.Logs);
        Assert.Contains($"virtio spec violation {info.Counter} (VIRTIO 1.2 §{info.Section})", line, StringComparison.Ordinal);
        Assert.Contains(vf.Address, line, StringComparison.Ordinal);
        bool alwaysResets = rule == SpecRule.DriverOkWithoutFeaturesOk; // today's behaviour in both modes
        bool wantReset = alwaysResets || (strict && !info.Extension);
        Assert.Equal(wantReset, (vf.Status & VirtioStatus.NEEDS_RESET) != 0);
        Assert.Equal(wantReset ? 1 : 0, vf.NeedsResetEvents);
        if (wantReset && !alwaysResets)
        {
            Assert.Contains(info.Counter, vf.NeedsResetReason, StringComparison.Ordinal);
        }
        if (wantReset && configVector && (vf.Status & VirtioStatus.DRIVER_OK) != 0)
        {
            Assert.Equal(irqsBefore + 1, rig.ConfigIrqs); // NEEDS_RESET after DRIVER_OK: config interrupt (VIRTIO 1.2 §2.1.2)
            Assert.False(vf.IsQueueRunning(0));
        }
        if (!wantReset)
        {
            Assert.Equal(irqsBefore, rig.ConfigIrqs);
        }
    }

    [Fact]
    public void ARepeatedViolationIsCountedEachTimeAndLoggedOnce()
    {
        using var rig = new Rig(strict: false);
        Negotiate(rig.Vf, Features);
        for (int i = 0; i < 5; i++)
        {
            rig.Vf.WQ16(0, QueueSize, 100);
        }
        rig.Vf.WQ16(0, QueueSize, 3000);
        Assert.Equal(5, rig.Vf.ViolationCount(SpecRule.QueueSizeInvalid));
        Assert.Equal(1, rig.Vf.ViolationCount(SpecRule.QueueSizeTooLarge));
        Assert.Equal(6, rig.Vf.ViolationTotal);
        Assert.Equal(2, rig.Logs.Count);
        Assert.Equal(0, rig.Vf.Status & VirtioStatus.NEEDS_RESET);
    }

    [Fact]
    public void AWellBehavedDriverBreaksNoRuleInStrictMode()
    {
        using var rig = new Rig(strict: true);
        var vf = rig.Vf;
        Live(vf);
        SetupQueue(vf, 1);
        vf.WQ16(1, QueueEnable, 1); // a queue enabled while the device runs
        Doorbell(vf, 0, 0);
        Doorbell(vf, 1, 1);
        _ = vf.ReadBar16(0, QueueNotifyOff);
        _ = vf.ReadBar8(0, VirtioPci.ConfigGeneration);
        _ = vf.ReadBar8(0, IfcvfLayout.DeviceCfgOffset + (ulong)VirtioNetConfig.Status);
        vf.WriteStatus(0);
        Assert.Equal(0, vf.Status());
        Negotiate(vf, Features);
        Assert.Empty(vf.Violations);
        Assert.Empty(rig.Logs);
        Assert.Equal(0, vf.NeedsResetEvents);
    }

    [Fact]
    public void AResetClearsNeedsResetButKeepsTheCounts()
    {
        using var rig = new Rig(strict: true);
        Live(rig.Vf);
        Doorbell(rig.Vf, 0, 9);
        Assert.NotEqual(0, rig.Vf.Status & VirtioStatus.NEEDS_RESET);
        rig.Vf.WriteStatus(0);
        Assert.Equal(0, rig.Vf.Status());
        Live(rig.Vf);
        Assert.Equal(0, rig.Vf.Status & VirtioStatus.NEEDS_RESET);
        Assert.True(rig.Vf.IsQueueRunning(0));
        Assert.Equal(1, rig.Vf.ViolationCount(SpecRule.NotifyData));
    }

    [Fact]
    public void TheRuleTableNamesEveryRuleOnceWithASection()
    {
        var all = SpecRules.All.ToList();
        Assert.Equal(Enum.GetValues<SpecRule>().Length - 1, all.Count);
        Assert.Equal(all.Count, all.Select(r => r.Counter).Distinct().Count());
        Assert.All(all, r => Assert.Matches(@"^\d+(\.\d+)+(, \d+(\.\d+)+)*$", r.Section));
        Assert.All(Enum.GetValues<SpecRule>().Where(r => r != SpecRule.None), r => Assert.Equal(r, SpecRules.Get(r).Rule));
    }
}
