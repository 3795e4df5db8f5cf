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
}
