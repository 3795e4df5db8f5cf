using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.Datapath.Tests;

/// <summary>
/// Issue 17 part 3 on the ring walk: each malformed-ring case of <see cref="HostileRingTests"/> and the block
/// ring errors is also counted under the virtio rule it breaks (once logged, with its section), and a
/// device's own limits (DMA map, frame size) are not reported as spec violations.
/// </summary>
/// <summary>Checks of the spec counters after a ring error (shared by the hostile-ring and block tests).</summary>
public static class SpecAsserts
{
    /// <summary>The rule a ring error's reason stands for (the datapath's wording), or None.</summary>
    public static SpecRule RuleOf(string reason) => reason switch
    {
        _ when reason.Contains("ahead of used idx", StringComparison.Ordinal) => SpecRule.AvailAhead,
        _ when reason.Contains("loop", StringComparison.Ordinal) => SpecRule.ChainTooLong,
        _ when reason.Contains("overflows", StringComparison.Ordinal) => SpecRule.ChainLengthOverflow,
        _ when reason.Contains("head index", StringComparison.Ordinal) || reason.Contains("next index", StringComparison.Ordinal) => SpecRule.DescriptorIndex,
        _ when reason.Contains("without VIRTIO_F_RING_INDIRECT_DESC", StringComparison.Ordinal) => SpecRule.IndirectNotNegotiated,
        _ when reason.Contains("inside an indirect table", StringComparison.Ordinal) => SpecRule.IndirectNested,
        _ when reason.Contains("both INDIRECT and NEXT", StringComparison.Ordinal) => SpecRule.IndirectWithNext,
        _ when reason.Contains("indirect table length", StringComparison.Ordinal) => SpecRule.IndirectLength,
        _ when reason.Contains("readable descriptor after a device-writable one", StringComparison.Ordinal) => SpecRule.WritableBeforeReadable,
        _ => SpecRule.None,
    };

    /// <summary>After a ring error: exactly the rule behind it counted once (or nothing for a device limit), logged once with its section.</summary>
    public static void AssertCounted(TestNic nic, string reason)
    {
        var rule = RuleOf(reason);
        if (rule == SpecRule.None)
        {
            Assert.Equal(0, nic.Vf.ViolationTotal);
            Assert.Empty(nic.SpecLogs);
            return;
        }
        var info = SpecRules.Get(rule);
        Assert.Equal(new[] { (info, 1L) }, nic.Vf.Violations);
        string line = Assert.Single(nic.SpecLogs);
        Assert.Contains($"virtio spec violation {info.Counter} (VIRTIO 1.2 §{info.Section})", line, StringComparison.Ordinal);
        Assert.Contains(reason, line, StringComparison.Ordinal);
    }

}

public class StrictRingTests
{
    [Fact]
    public void IndirectWithoutTheFeatureIsCounted()
    {
        using var nic = new TestNic(NetBackend.Loopback());
        nic.Start(TestNic.BaseFeatures, queues: 2); // no VIRTIO_F_RING_INDIRECT_DESC
        var q = nic.Queues[1];
        ushort id = q.TakeFree();
        q.WriteDesc(id, q.Alloc(32), 32, VIRTQ_DESC_F_INDIRECT, 0);
        q.PushAvail(id);
        nic.Kick(1);
        Assert.True(nic.WaitFor(() => nic.NeedsReset));
        Assert.Contains("without VIRTIO_F_RING_INDIRECT_DESC", nic.Vf.NeedsResetReason, StringComparison.Ordinal);
        SpecAsserts.AssertCounted(nic, nic.Vf.NeedsResetReason!);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TheProjectsDriverAndDatapathRunCleanOnAStrictVf(bool packed)
    {
        // The fixture's VF is strict: bring-up, traffic both ways, stop with the ring state read back and a
        // restart from it, through the project's driver (IfcvfAdapter), break no rule but the IFC VF's own
        // queue stop (queue_enable = 0, an IFC VF extension that never sets NEEDS_RESET).
        using var nic = new TestNic(NetBackend.Loopback(), vf: new SoftIfcVfOptions
        {
            Strict = true,
            DeviceFeatures = SoftIfcVfOptions.DefaultFeatures | VirtioFeature.Bit(VirtioFeature.F_RING_PACKED),
        });
        Assert.True(nic.Vf.Strict);
        ulong features = TestNic.BaseFeatures | LoopbackTests.Indirect | (packed ? VirtioFeature.Bit(VirtioFeature.F_RING_PACKED) : 0);
        nic.Start(features, queues: 2);
        for (int i = 0; i < 3; i++)
        {
            nic.PostRx(0, 1);
            var f = TestNic.Frame(100 + i, i);
            nic.Send(1, f);
            Assert.Equal(f, nic.ReceiveOne(0));
        }
        var state = nic.Stop();
        nic.Restart(state);
        nic.PostRx(0, 1);
        var g = TestNic.Frame(90, 7);
        nic.Send(1, g);
        Assert.Equal(g, nic.ReceiveOne(0));
        Assert.False(nic.NeedsReset);
        Assert.All(nic.Vf.Violations, v => Assert.True(v.Rule.Extension, $"{v.Rule.Counter} x{v.Count}"));
        Assert.All(nic.SpecLogs, l => Assert.Contains("IFC VF extension", l, StringComparison.Ordinal));
    }

    // ---- VIRTIO 1.2 §2.7.7.1: the avail ring's flags (used buffer notification suppression) ----

    private static TestNic FlagsNic(bool strict, bool eventIdx)
    {
        var nic = new TestNic(NetBackend.Loopback(), vf: new SoftIfcVfOptions { Strict = strict });
        nic.Start(TestNic.BaseFeatures | (eventIdx ? VirtioFeature.Bit(VirtioFeature.F_RING_EVENT_IDX) : 0), queues: 2);
        return nic;
    }

    [Theory]
    [InlineData(false, false, (ushort)0x0003)] // a bit beyond NO_INTERRUPT
    [InlineData(true, false, (ushort)0x0003)]
    [InlineData(false, true, (ushort)0x0001)] // NO_INTERRUPT with EVENT_IDX: flags MUST be 0
    [InlineData(true, true, (ushort)0x0001)]
    public void AvailFlagsTheDriverMustNotSetAreCounted(bool strict, bool eventIdx, ushort flags)
    {
        using var nic = FlagsNic(strict, eventIdx);
        if (eventIdx)
        {
            nic.Queues[1].SetUsedEvent(0); // interrupt on the first TX completion
        }
        nic.Queues[1].SetAvailFlags(flags);
        nic.PostRx(0, 4);
        var f = TestNic.Frame(64, 1);
        nic.Send(1, f);
        var info = SpecRules.Get(SpecRule.AvailFlags);
        if (strict)
        {
            Assert.True(nic.WaitFor(() => nic.NeedsReset), "strict: NEEDS_RESET expected");
            Assert.Contains($"avail ring flags 0x{flags:x4}", nic.Vf.NeedsResetReason, StringComparison.Ordinal);
            Assert.True(nic.ConfigIrqs > 0);
        }
        else
        {
            Assert.Equal(f, nic.ReceiveOne(0));
            Assert.True(nic.WaitFor(() => nic.Vf.ViolationCount(SpecRule.AvailFlags) == 1));
            // Tolerant: without EVENT_IDX bit 0 is honoured (no TX interrupt); with it the flags are ignored
            // and used_event 0 asks for the interrupt.
            Assert.Equal(eventIdx ? 1 : 0, nic.Irqs(1));
            nic.Send(1, TestNic.Frame(64, 2));
            Assert.NotEmpty(nic.ReceiveOne(0));
            Assert.True(nic.WaitFor(() => nic.Vf.ViolationCount(SpecRule.AvailFlags) == 2)); // counted once per published burst
            Assert.False(nic.NeedsReset);
        }
        Assert.Equal(new[] { info }, nic.Vf.Violations.Select(v => v.Rule));
        string line = Assert.Single(nic.SpecLogs);
        Assert.Contains("avail_flags (VIRTIO 1.2 §2.7.7.1)", line, StringComparison.Ordinal);
        Assert.Contains($"vq 1: avail ring flags 0x{flags:x4}", line, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AvailFlagsTheRuleAllowsAreNotCounted(bool eventIdx)
    {
        // Without EVENT_IDX: 0 and NO_INTERRUPT; with it: 0. A strict VF keeps running.
        using var nic = FlagsNic(strict: true, eventIdx);
        nic.Queues[1].SetAvailFlags(eventIdx ? (ushort)0 : SplitRing.VIRTQ_AVAIL_F_NO_INTERRUPT);
        nic.PostRx(0, 4);
        for (int i = 0; i < 3; i++)
        {
            var f = TestNic.Frame(64, i);
            nic.Send(1, f);
            Assert.Equal(f, nic.ReceiveOne(0));
        }
        Assert.False(nic.NeedsReset);
        Assert.Equal(0, nic.Vf.ViolationTotal);
    }
}
