using IfcVdpa.IfcvfModel;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using Xunit.Abstractions;

namespace IfcVdpa.Fidelity.Tests;

/// <summary>
/// Issue 17 part 1 for the block VF: DPDK's unmodified IFC VF base code (ifcvf.c of Debian's dpdk 22.11) drives
/// the software IFC block VF with hw->device_type = IFCVF_BLK: the per-queue LM ring-state layout (one 0x40
/// block per queue, last_avail in bits 0-15 and last_used in 16-31, both read back), the MQ register holding
/// the number of queues, and real virtio-blk requests against a mem: backend. The VF is strict throughout.
/// </summary>
public sealed class DpdkIfcvfBlkTests(ITestOutputHelper output)
{
    private const ushort Start = 1000;

    [Fact]
    public void ProbeFindsTheBlockVfByDpdksIdTableAndReadsItsConfig()
    {
        using var rig = new DpdkBlkVf(queues: 2);
        var init = rig.Harness.InitHw(DpdkBlkVf.Dev);
        Assert.Equal(0, init.Rc);
        // Same capability layout as the net VF: DPDK's walk finds every structure.
        Assert.Equal(new DpdkIfcHarness.Location(IfcvfLayout.CommonBar, IfcvfLayout.CommonOffset), init.Common);
        Assert.Equal(new DpdkIfcHarness.Location(IfcvfLayout.NotifyBar, 0), init.Notify);
        Assert.Equal(new DpdkIfcHarness.Location(IfcvfLayout.CommonBar, IfcvfLayout.DeviceCfgOffset), init.Device);
        Assert.Equal(new DpdkIfcHarness.Location(IfcLiveMigration.Bar, 0), init.Lm);
        Assert.Equal(new DpdkIfcHarness.Location(IfcLiveMigration.Bar, (ulong)IfcLiveMigration.MqRegister), init.Mq);
        rig.Harness.Trace.Clear();

        var p = rig.Harness.Probe(DpdkBlkVf.Dev);
        // ifcvf.h's IDs: 1AF4:1042, subsystem 8086:0002 -> IFCVF_BLK.
        Assert.Equal((0x1AF4, 0x1042, 0x8086, 0x0002, DpdkIfcHarness.IfcvfBlk), (p.Vendor, p.Device, p.SubsystemVendor, p.SubsystemDevice, p.Type));
        // The block config through hw->blk_cfg, plain dereferences trapped into BAR0's device config.
        Assert.Equal(DpdkBlkVf.CapacitySectors, p.Capacity);
        Assert.Equal((rig.Config.SizeMax, rig.Config.SegMax, rig.Config.BlkSize, rig.Config.NumQueues), (p.SizeMax, p.SegMax, p.BlkSize, p.NumQueues));
        Assert.Equal((rig.Config.Cylinders, rig.Config.Heads, rig.Config.Sectors), (p.Cylinders, p.Heads, p.Sectors));
        var cfgReads = rig.Harness.Trace.Where(a => a.Path == AccessPath.Trapped).ToList();
        Assert.NotEmpty(cfgReads);
        Assert.All(cfgReads, a => Assert.Equal((false, IfcvfLayout.CommonBar), (a.Write, a.Bar)));
        Assert.All(cfgReads, a => Assert.InRange(a.Offset, (ulong)IfcvfLayout.DeviceCfgOffset, (ulong)IfcvfLayout.DeviceCfgOffset + VirtioBlkConfig.Size - 1));
        foreach (var a in rig.Harness.Trace)
        {
            output.WriteLine(a.ToString());
        }
        Assert.Equal(rig.Function.DeviceFeatures, rig.Harness.GetFeatures(DpdkBlkVf.Dev));
        Assert.Equal(0, rig.Function.ViolationTotal);
        Assert.Empty(rig.Harness.Warnings);
    }

    /// <summary>One round of I/O on vring q: write, flush, read back, GET_ID, an out-of-range read.</summary>
    private static void IoRound(DpdkBlkVf rig, int q, int seed)
    {
        ulong sector = (ulong)q * 64;
        var pattern = DpdkBlkVf.Pattern(4096, q, seed);
        var w = rig.Run(q, BlkReq.Write(sector, pattern), BlkReq.Flush());
        Assert.Equal((VirtioBlk.S_OK, 1u), (w[0].Status, w[0].UsedLen));
        Assert.Equal((VirtioBlk.S_OK, 1u), (w[1].Status, w[1].UsedLen));
        var r = rig.Run(q, BlkReq.Read(sector, 4096), BlkReq.GetId(), BlkReq.Read(DpdkBlkVf.CapacitySectors, 512));
        Assert.Equal((VirtioBlk.S_OK, 4097u), (r[0].Status, r[0].UsedLen));
        Assert.Equal(pattern, r[0].Data);
        Assert.Equal(VirtioBlk.S_OK, r[1].Status);
        Assert.Equal(DpdkBlkVf.ExpectedSerial(), r[1].Data);
        Assert.Equal(VirtioBlk.S_IOERR, r[2].Status); // sector == capacity: beyond the disk
        Assert.Contains(rig.EngineLogs, l => l.Contains($"vq {q}: request answered IOERR", StringComparison.Ordinal) && l.Contains("beyond the capacity", StringComparison.Ordinal));
        Assert.All(r[2].Data, b => Assert.Equal(0xA5, b)); // nothing written into the buffer
    }

    private const int RequestsPerRound = 5;

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void StartHwServesBlockRequestsAndStopHwReadsThePerQueueRingStateBack(int queues)
    {
        using var rig = new DpdkBlkVf(queues);
        Assert.Equal(DpdkIfcHarness.IfcvfBlk, rig.Probe().Type);
        rig.Start(_ => (Start, Start));
        var vf = rig.Function;
        Assert.Equal(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK, vf.Status);
        Assert.Equal(rig.RequestedFeatures & vf.DeviceFeatures, vf.DriverFeatures); // 26/30 masked by DPDK
        Assert.Equal((uint)queues, vf.MqRegister); // block: the number of queues, not pairs
        for (int q = 0; q < queues; q++)
        {
            Assert.True(vf.IsQueueRunning(q), $"vring {q} not running after ifcvf_start_hw");
            Assert.Equal((ushort)(q + 1), vf.QueueVector(q));
        }

        for (int q = 0; q < queues; q++)
        {
            IoRound(rig, q, seed: 1);
            Assert.True(Interlocked.Read(ref rig.Irqs[q + 1]) > 0, $"no MSI-X on vector {q + 1} (vring {q})");
        }
        // Every queue wrote its own sectors of one disk: queue 0 sees the others' data.
        for (int q = 1; q < queues; q++)
        {
            var r = rig.Run(0, BlkReq.Read((ulong)q * 64, 4096));
            Assert.Equal(DpdkBlkVf.Pattern(4096, q, 1), r[0].Data);
        }
        Assert.Equal(0, Interlocked.Read(ref rig.Irqs[0]));
        Assert.Equal(0, vf.ViolationTotal);

        // vdpa_ifcvf_stop's block drain (live LM ring state: nothing in flight), then ifcvf_stop_hw.
        rig.Harness.Trace.Clear();
        Assert.Equal(0, rig.Harness.Drain(DpdkBlkVf.Dev));
        ushort Expect(int q) => (ushort)(Start + RequestsPerRound + (q == 0 ? queues - 1 : 0));
        for (int q = 0; q < queues; q++)
        {
            ulong off = (ulong)IfcLiveMigration.RingStateOffset(LmLayout.PerQueueBlocks, q);
            uint live = (uint)(Expect(q) | (Expect(q) << 16));
            Assert.Contains(rig.Harness.Trace, a => a is { Path: AccessPath.Trapped, Write: false, Bar: IfcLiveMigration.Bar } && a.Offset == off && a.Value == live);
        }
        var state = rig.Harness.StopHw(DpdkBlkVf.Dev);
        Assert.Equal(queues, state.Length);
        for (int q = 0; q < queues; q++)
        {
            Assert.Equal((Expect(q), Expect(q)), state[q]);
        }
        Assert.Equal(0, vf.Status);
        Assert.Empty(rig.Harness.Warnings);
        Assert.Equal(0, vf.RegisterErrors);
        var zero = SpecRules.Get(SpecRule.QueueEnableZero);
        Assert.Equal(new[] { (zero, (long)queues) }, vf.Violations); // ifcvf_hw_disable: one per vring
        Assert.Equal(0, vf.NeedsResetEvents);

        // Restart from the state DPDK read back (the rings keep their contents) and keep going.
        rig.Start(q => state[q], resetRings: false);
        for (int q = 0; q < queues; q++)
        {
            IoRound(rig, q, seed: 2);
        }
        var again = rig.Harness.StopHw(DpdkBlkVf.Dev);
        for (int q = 0; q < queues; q++)
        {
            ushort n = (ushort)(Expect(q) + RequestsPerRound);
            Assert.Equal((n, n), again[q]);
        }
        Assert.Equal(new[] { (zero, (long)(2 * queues)) }, vf.Violations);
        Assert.Single(rig.SpecLogs); // logged once
        Assert.Contains("queue_enable_zero (VIRTIO 1.2 §4.1.4.3.2)", rig.SpecLogs.Single(), StringComparison.Ordinal);
        Assert.Empty(rig.Harness.Warnings);
        output.WriteLine($"{rig.Harness.Trace.Count} device accesses since the drain");
    }

    [Fact]
    public void RingStateGoesToOneLmBlockPerQueue()
    {
        using var rig = new DpdkBlkVf(queues: 4);
        rig.Probe();
        rig.Harness.Trace.Clear();
        rig.Start(q => ((ushort)(100 + q), (ushort)(90 + q))); // 10 requests in flight when the state was saved
        var lm = rig.Harness.Trace.Where(a => a.Bar == IfcLiveMigration.Bar).ToList();
        Assert.All(lm, a => Assert.Equal(AccessPath.Trapped, a.Path));
        Assert.Contains(lm, a => a.Write && a.Offset == (ulong)IfcLiveMigration.MqRegister && a.Value == 4);
        for (int q = 0; q < 4; q++)
        {
            ulong off = (ulong)(IfcLiveMigration.RingStateBase + (q * IfcLiveMigration.PairBlockSize));
            Assert.Contains(lm, a => a.Write && a.Offset == off && a.Value == (uint)((100 + q) | ((90 + q) << 16)));
        }
        // Nothing written into the pair layout's second word (+4) of any block (0x28 is the MQ register).
        Assert.DoesNotContain(lm, a => a.Write && a.Offset >= (ulong)IfcLiveMigration.RingStateBase && a.Offset != (ulong)IfcLiveMigration.MqRegister && (a.Offset - (ulong)IfcLiveMigration.RingStateBase) % (ulong)IfcLiveMigration.PairBlockSize != 0);
        // ifcvf_stop_hw reads both halves back (block: avail from bits 0-15, used from 16-31).
        var state = rig.Harness.StopHw(DpdkBlkVf.Dev);
        for (int q = 0; q < 4; q++)
        {
            Assert.Equal(((ushort)(100 + q), (ushort)(90 + q)), state[q]);
        }
        Assert.Equal(0, rig.Function.RegisterErrors);
        Assert.Equal(0, rig.Function.NeedsResetEvents);
        Assert.Empty(rig.Harness.Warnings);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void LoggingMarksTheBuffersTheDeviceWrote(int queues)
    {
        using var rig = new DpdkBlkVf(queues);
        rig.Probe();
        rig.Start(_ => (0, 0));
        const ulong logBase = 0x1000_0000_0000;
        ulong logBytes = ((GuestMemory.IovaBase + (16 << 20)) >> 12) / 8;
        using var log = MappedMemory.Allocate((logBytes + 4095) & ~4095UL);
        var vf = rig.Function;
        vf.DmaMap(logBase, log.All, writable: true);
        rig.Harness.Trace.Clear();
        rig.Harness.EnableLogging(DpdkBlkVf.Dev, logBase, logBytes);
        Assert.Equal((true, logBase, logBase + logBytes), vf.DirtyLog);
        Assert.All(rig.Harness.Trace.Where(a => a.Write), a => Assert.Equal((AccessPath.Trapped, IfcLiveMigration.Bar), (a.Path, a.Bar)));

        var expected = new SortedSet<ulong>();
        for (int q = 0; q < queues; q++)
        {
            // A write makes the device write its status byte only; a read its data buffer and status byte.
            var done = rig.Run(q, BlkReq.Write((ulong)q * 64, DpdkBlkVf.Pattern(8192, q, 3)));
            done = [.. done, .. rig.Run(q, BlkReq.Read((ulong)q * 64, 8192), BlkReq.Read(((ulong)q * 64) + 100, 1536))];
            Assert.All(done, d => Assert.Equal(VirtioBlk.S_OK, d.Status));
            foreach (var d in done)
            {
                expected.Add(d.StatusIova >> 12);
                for (ulong p = d.DataIova >> 12; d.Data.Length > 0 && p <= (d.DataIova + (ulong)d.Data.Length - 1) >> 12; p++)
                {
                    expected.Add(p);
                }
            }
        }
        Assert.Equal(expected, DpdkIfcvfBaseTests.SetBits(log.Span(0, (int)logBytes)));

        rig.Harness.DisableLogging(DpdkBlkVf.Dev);
        Assert.False(vf.DirtyLog.Enabled);
        log.Span(0, (int)logBytes).Clear();
        Assert.Equal(VirtioBlk.S_OK, rig.Run(0, BlkReq.Read(0, 4096))[0].Status);
        Assert.Empty(DpdkIfcvfBaseTests.SetBits(log.Span(0, (int)logBytes)));
        Assert.Equal(0, vf.ViolationTotal);
        Assert.Empty(rig.Harness.Warnings);
    }

    [Fact]
    public void VringsEnableAndDisableWhileTheBlockDeviceRuns()
    {
        // DPDK's set_vring_state path for a block device: the MQ register counts queues.
        using var rig = new DpdkBlkVf(queues: 2);
        rig.Probe();
        rig.Start(_ => (0, 0), enabled: q => q == 0);
        Assert.Equal(1u, rig.Function.MqRegister);
        Assert.False(rig.Function.IsQueueRunning(1));
        IoRound(rig, 0, seed: 4);
        var g = rig.Queues[1];
        rig.Harness.SetVring(DpdkBlkVf.Dev, 1, g.Size, g.Desc, g.Avail, g.Used, 0, 0, enable: true);
        Assert.Equal(0, rig.Harness.EnableVringHw(DpdkBlkVf.Dev, 1));
        Assert.Equal(2u, rig.Function.MqRegister);
        IoRound(rig, 1, seed: 4);
        var (avail, used) = rig.Harness.DisableVringHw(DpdkBlkVf.Dev, 1);
        Assert.Equal(((ushort)RequestsPerRound, (ushort)RequestsPerRound), (avail, used));
        Assert.False(rig.Function.IsQueueRunning(1));
        Assert.True(rig.Function.IsQueueRunning(0));
        IoRound(rig, 0, seed: 5);
        Assert.Equal(1, rig.Function.ViolationCount(SpecRule.QueueEnableZero));
        Assert.Equal(1, rig.Function.ViolationTotal);
        Assert.Empty(rig.Harness.Warnings);
    }

    [Fact]
    public void AfterARingErrorDpdksDrainAndStopReadTheLastCompletedRequestAndARestartResumesThere()
    {
        // A request whose avail entry names a descriptor beyond the table: the device stops the queue and sets
        // NEEDS_RESET (ring rules hold in both modes). DPDK's block drain must not spin (its own loop has no
        // bound): the saved state must say consumed == completed, at the request before the bad one, so that
        // a restart from what ifcvf_stop_hw read back executes the (repaired) request, once.
        using var rig = new DpdkBlkVf(queues: 2);
        rig.Probe();
        rig.Start(_ => (Start, Start));
        IoRound(rig, 0, seed: 6);
        IoRound(rig, 1, seed: 6);
        var g = rig.Queues[0];
        ulong hdr = rig.Memory.Alloc(VirtioBlk.HeaderSize, 16);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(rig.Memory.Span(hdr, 4), VirtioBlk.T_GET_ID);
        ulong id = rig.Memory.Alloc(VirtioBlk.IdBytes, 16);
        ulong status = rig.Memory.Alloc(1, 1);
        rig.Memory.Span(status, 1)[0] = 0xEE;
        ushort head = g.PostChain([(hdr, VirtioBlk.HeaderSize, false), (id, VirtioBlk.IdBytes, true), (status, 1, true)]);
        ulong entry = g.Avail + (ulong)SplitRing.AvailRing + (2UL * (ulong)((g.AvailIdx - 1) % g.Size));
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(rig.Memory.Span(entry, 2), 500); // beyond the 128-entry table
        rig.Harness.NotifyQueue(DpdkBlkVf.Dev, 0);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while ((rig.Function.Status & VirtioStatus.NEEDS_RESET) == 0)
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), "the bad request did not set NEEDS_RESET");
            Thread.Sleep(1); // the device signals its config interrupt; polling the status is the bounded wait here
        }
        Assert.Equal(0, rig.Harness.Drain(DpdkBlkVf.Dev, tries: 20));
        var state = rig.Harness.StopHw(DpdkBlkVf.Dev);
        ushort done = Start + RequestsPerRound;
        Assert.Equal(new[] { (done, done), (done, done) }, state);
        Assert.Equal(0xEE, rig.Memory.Span(status, 1)[0]);
        var rules = rig.Function.Violations.ToDictionary(v => v.Rule.Rule, v => v.Count);
        Assert.Equal(new Dictionary<SpecRule, long> { [SpecRule.DescriptorIndex] = 1, [SpecRule.QueueEnableZero] = 2 }, rules);

        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(rig.Memory.Span(entry, 2), head);
        rig.Start(q => state[q], resetRings: false);
        Assert.Equal(0, rig.Function.Status & VirtioStatus.NEEDS_RESET);
        rig.Harness.NotifyQueue(DpdkBlkVf.Dev, 0);
        Assert.True(g.WaitUsed((ushort)(done + 1), TimeSpan.FromSeconds(10)), "the repaired request was not executed after the restart");
        Assert.True(g.TryTakeUsed(out ushort usedId, out _));
        Assert.Equal(head, usedId);
        Assert.Equal(VirtioBlk.S_OK, rig.Memory.Span(status, 1)[0]);
        Assert.Equal(DpdkBlkVf.ExpectedSerial(), rig.Memory.Span(id, VirtioBlk.IdBytes).ToArray());
        Assert.Equal(((ushort)(done + 1), (ushort)(done + 1)), rig.Harness.StopHw(DpdkBlkVf.Dev)[0]);
        Assert.Empty(rig.Harness.Warnings);
    }
}
