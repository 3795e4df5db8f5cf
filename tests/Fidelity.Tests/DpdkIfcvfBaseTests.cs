using IfcVdpa.IfcvfModel;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using Xunit.Abstractions;

namespace IfcVdpa.Fidelity.Tests;

/// <summary>
/// Issue 17 part 1: DPDK's own IFC VF base code (drivers/vdpa/ifc/base/ifcvf.c of Debian's dpdk 22.11,
/// unmodified, built at test time) drives the software IFC VF with DPDK's sequence. A driver the project did
/// not write must find the model's layout, start it, move frames, stop it and read the ring state back, and
/// log dirty pages, exactly as on hardware.
/// </summary>
public sealed class DpdkIfcvfBaseTests(ITestOutputHelper output)
{
    [Fact]
    public void InitHwWalksTheCapabilitiesToTheModelsLayout()
    {
        using var rig = new DpdkVfPair(pairs: 1);
        var init = rig.Harness.InitHw(DpdkVfPair.A);
        Assert.Equal(0, init.Rc);
        Assert.Equal(new DpdkIfcHarness.Location(IfcvfLayout.CommonBar, IfcvfLayout.CommonOffset), init.Common);
        Assert.Equal(new DpdkIfcHarness.Location(IfcvfLayout.NotifyBar, 0), init.Notify);
        Assert.Equal(new DpdkIfcHarness.Location(IfcvfLayout.CommonBar, IfcvfLayout.IsrOffset), init.Isr);
        Assert.Equal(new DpdkIfcHarness.Location(IfcvfLayout.CommonBar, IfcvfLayout.DeviceCfgOffset), init.Device);
        Assert.Equal(IfcvfLayout.NotifyOffMultiplier, init.NotifyOffMultiplier);
        Assert.Equal(IfcvfLayout.NotifyBar, init.NotifyRegion);
        Assert.Equal(new DpdkIfcHarness.Location(IfcLiveMigration.Bar, 0), init.Lm);
        Assert.Equal(new DpdkIfcHarness.Location(IfcLiveMigration.Bar, (ulong)IfcLiveMigration.MqRegister), init.Mq);
        // The walk starts at the capabilities pointer and reads only config space.
        var first = rig.Harness.Trace[0];
        Assert.Equal((AccessPath.Config, 0x34UL, 1), (first.Path, first.Offset, first.Size));
        Assert.All(rig.Harness.Trace, a => Assert.Equal(AccessPath.Config, a.Path));
        Assert.Equal(rig.Vfs[0].Function.DeviceFeatures, rig.Harness.GetFeatures(DpdkVfPair.A));
        Assert.Empty(rig.Harness.Warnings);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void StartHwMovesFramesAndStopHwReadsTheRingStateBack(int pairs)
    {
        using var rig = new DpdkVfPair(pairs);
        rig.Probe();
        // Restore a ring position through the LM ring state (as after a migration): the device must start there.
        const ushort start = 1000;
        for (int d = 0; d < 2; d++)
        {
            rig.Start(d, _ => (start, start));
            var vf = rig.Vfs[d].Function;
            Assert.Equal(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK, vf.Status);
            Assert.Equal(rig.RequestedFeatures & vf.DeviceFeatures, vf.DriverFeatures); // 26/30 masked by DPDK
            Assert.Equal((uint)pairs, vf.MqRegister);
            for (int q = 0; q < 2 * pairs; q++)
            {
                Assert.True(vf.IsQueueRunning(q), $"vring {q} not running after ifcvf_start_hw");
                Assert.Equal((ushort)(q + 1), vf.QueueVector(q)); // DPDK: vring i on vector i + 1
            }
            Assert.False(vf.IsQueueRunning(2 * pairs)); // the control vq is not given to the hardware
        }
        const int frames = 5;
        for (int p = 0; p < pairs; p++)
        {
            var got = rig.Transfer(p, frames);
            Assert.Equal(frames, got.Count);
            for (int i = 0; i < frames; i++)
            {
                Assert.Equal(DpdkVfPair.TxBuffer(p, i)[VirtioNetHeader.Size..], got[i]);
            }
            Assert.True(Interlocked.Read(ref rig.Irqs[DpdkVfPair.B][(2 * p) + 1]) > 0, $"no MSI-X on B's vector {(2 * p) + 1} (RX vring {2 * p})");
            Assert.True(Interlocked.Read(ref rig.Irqs[DpdkVfPair.A][(2 * p) + 2]) > 0, $"no MSI-X on A's vector {(2 * p) + 2} (TX vring {(2 * p) + 1})");
        }
        Assert.Equal(0, Interlocked.Read(ref rig.Irqs[DpdkVfPair.B][0])); // no config change

        // ifcvf_stop_hw: queues disabled, state read from the LM block (net: both halves from the used index), reset.
        var done = (ushort)(start + frames);
        var stateA = rig.Harness.StopHw(DpdkVfPair.A);
        var stateB = rig.Harness.StopHw(DpdkVfPair.B);
        Assert.Equal(2 * pairs, stateA.Length);
        for (int q = 0; q < 2 * pairs; q++)
        {
            // A transmitted on odd vrings, B received on even ones; the others saw nothing.
            Assert.Equal(q % 2 == 1 ? (done, done) : (start, start), stateA[q]);
            Assert.Equal(q % 2 == 0 ? (done, done) : (start, start), stateB[q]);
        }
        Assert.Equal(0, rig.Vfs[0].Function.Status);
        Assert.Empty(rig.Harness.Warnings); // e.g. "Failed to disable Q" if queue_enable had not read 0
        Assert.Equal(0, rig.Vfs[0].Function.RegisterErrors + rig.Vfs[1].Function.RegisterErrors);

        // Restart from the state DPDK read back (the rings keep their contents) and keep going.
        rig.Start(DpdkVfPair.A, q => stateA[q], resetRings: false);
        rig.Start(DpdkVfPair.B, q => stateB[q], resetRings: false);
        for (int p = 0; p < pairs; p++)
        {
            var again = rig.Transfer(p, 3);
            Assert.Equal(3, again.Count);
            Assert.Equal(DpdkVfPair.TxBuffer(p, 0)[VirtioNetHeader.Size..], again[0]);
        }
        var after = rig.Harness.StopHw(DpdkVfPair.B);
        Assert.Equal(((ushort)(done + 3), (ushort)(done + 3)), after[0]);
        Assert.Empty(rig.Harness.Warnings);
        output.WriteLine($"{rig.Harness.Trace.Count} device accesses by DPDK's base code");
    }

    [Fact]
    public void PlainDereferencesReachTheLmBlock()
    {
        using var rig = new DpdkVfPair(pairs: 2);
        rig.Probe();
        rig.Harness.Trace.Clear();
        rig.Start(DpdkVfPair.A, q => ((ushort)(100 + q), (ushort)(200 + q)));
        var lm = rig.Harness.Trace.Where(a => a.Bar == IfcLiveMigration.Bar).ToList();
        Assert.NotEmpty(lm);
        Assert.All(lm, a => Assert.Equal(AccessPath.Trapped, a.Path));
        // MQ register: the number of enabled pairs, then each vring's ring-state word (pair blocks).
        Assert.Contains(lm, a => a.Write && a.Offset == (ulong)IfcLiveMigration.MqRegister && a.Value == 2);
        for (int q = 0; q < 4; q++)
        {
            ulong off = (ulong)(IfcLiveMigration.RingStateBase + (q / 2 * IfcLiveMigration.PairBlockSize) + (q % 2 * 4));
            Assert.Contains(lm, a => a.Write && a.Offset == off && a.Value == (uint)((100 + q) | ((200 + q) << 16)));
        }
        foreach (var a in rig.Harness.Trace)
        {
            output.WriteLine(a.ToString());
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void LoggingMarksTheRxBufferPagesDpdkProgrammed(int pairs)
    {
        using var rig = new DpdkVfPair(pairs);
        rig.Probe();
        rig.Start(DpdkVfPair.A, _ => (0, 0));
        rig.Start(DpdkVfPair.B, _ => (0, 0));
        // ifcvf_vdpa.c maps the vhost log at IFCVF_LOG_BASE and gives the device [base, base + size).
        const ulong logBase = 0x1000_0000_0000;
        ulong logBytes = ((GuestMemory.IovaBase + (16 << 20)) >> 12) / 8;
        using var log = MappedMemory.Allocate((logBytes + 4095) & ~4095UL);
        var vfB = rig.Vfs[DpdkVfPair.B].Function;
        vfB.DmaMap(logBase, log.All, writable: true);
        rig.Harness.Trace.Clear();
        rig.Harness.EnableLogging(DpdkVfPair.B, logBase, logBytes);
        Assert.Equal((true, logBase, logBase + logBytes), vfB.DirtyLog);
        var writes = rig.Harness.Trace.Where(a => a.Write).ToList();
        Assert.All(writes, a => Assert.Equal((AccessPath.Trapped, IfcLiveMigration.Bar), (a.Path, a.Bar)));
        foreach (var a in writes)
        {
            output.WriteLine(a.ToString());
        }
        Assert.Equal(
            new SortedDictionary<ulong, uint>
            {
                [(ulong)IfcLiveMigration.LoggingCtrl] = IfcLiveMigration.LoggingEnableVf,
                [(ulong)IfcLiveMigration.BaseAddrLow] = unchecked((uint)logBase),
                [(ulong)IfcLiveMigration.BaseAddrHigh] = (uint)(logBase >> 32),
                [(ulong)IfcLiveMigration.EndAddrLow] = (uint)(logBase + logBytes),
                [(ulong)IfcLiveMigration.EndAddrHigh] = (uint)((logBase + logBytes) >> 32),
            },
            new SortedDictionary<ulong, uint>(writes.ToDictionary(a => a.Offset, a => a.Value)));

        var expected = new SortedSet<ulong>();
        for (int p = 0; p < pairs; p++)
        {
            var rx = rig.Queues[DpdkVfPair.B][2 * p];
            ushort first = rx.AvailIdx;
            Assert.Equal(4, rig.Transfer(p, 4).Count);
            for (ushort i = first; i != rx.AvailIdx; i++)
            {
                expected.Add(rx.BufferOf((ushort)(i % rx.Size)) >> 12);
            }
        }
        Assert.Equal(expected, SetBits(log.Span(0, (int)logBytes)));

        // ifcvf_disable_logging: later frames mark nothing.
        rig.Harness.DisableLogging(DpdkVfPair.B);
        Assert.False(vfB.DirtyLog.Enabled);
        log.Span(0, (int)logBytes).Clear();
        Assert.Equal(2, rig.Transfer(0, 2).Count);
        Assert.Empty(SetBits(log.Span(0, (int)logBytes)));
        Assert.Empty(rig.Harness.Warnings);
    }

    [Fact]
    public void LoggingControlAheadOfTheLogAddressesWritesNothingOutsideTheMappedLog()
    {
        // DPDK's compiled ifcvf_enable_logging (GCC -O2 here, and Debian's librte_vdpa_ifc.so.23) stores
        // LOGGING_CTRL = 1 FIRST and then the four address registers as one 16-byte store: for one instruction
        // the device logs with the addresses of the previous session. Here the new log is smaller than the old
        // one and the old mapping is gone: the device must write neither the old log nor past the new mapping.
        using var rig = new DpdkVfPair(pairs: 1);
        rig.Probe();
        rig.Start(DpdkVfPair.A, _ => (0, 0));
        rig.Start(DpdkVfPair.B, _ => (0, 0));
        var vfB = rig.Vfs[DpdkVfPair.B].Function;
        const ulong logBase = 0x1000_0000_0000;
        ulong bigBytes = ((GuestMemory.IovaBase + (16 << 20)) >> 12) / 8;
        using var oldLog = MappedMemory.Allocate((bigBytes + 4095) & ~4095UL);
        vfB.DmaMap(logBase, oldLog.All, writable: true);
        rig.Harness.EnableLogging(DpdkVfPair.B, logBase, bigBytes);
        Assert.Equal(2, rig.Transfer(0, 2).Count);
        Assert.NotEmpty(SetBits(oldLog.Span(0, (int)bigBytes)));
        rig.Harness.DisableLogging(DpdkVfPair.B);
        vfB.DmaUnmap(logBase, oldLog.Length);
        oldLog.Span(0, (int)bigBytes).Clear();

        using var newLog = MappedMemory.Allocate(4096); // covers pages below 128 MiB only: the buffers are above
        vfB.DmaMap(logBase, newLog.All, writable: true);
        vfB.WriteBar32(IfcLiveMigration.Bar, IfcLiveMigration.LoggingCtrl, IfcLiveMigration.LoggingEnableVf);
        Assert.Equal((true, logBase, logBase + bigBytes), vfB.DirtyLog); // stale addresses, as between DPDK's two stores
        Assert.Equal(3, rig.Transfer(0, 3).Count);
        rig.Harness.EnableLogging(DpdkVfPair.B, logBase, 4096);
        Assert.Equal(3, rig.Transfer(0, 3).Count);
        Assert.Empty(SetBits(oldLog.Span(0, (int)bigBytes)));
        Assert.Empty(SetBits(newLog.Span(0, 4096)));
        Assert.Equal(0, vfB.RegisterErrors);
        Assert.Equal(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK, vfB.Status);
    }

    /// <summary>The page numbers whose bits are set in a dirty-log bitmap (shared with the block VF tests).</summary>
    internal static SortedSet<ulong> SetBits(ReadOnlySpan<byte> log)
    {
        var pages = new SortedSet<ulong>();
        for (int i = 0; i < log.Length; i++)
        {
            for (int bit = 0; bit < 8; bit++)
            {
                if ((log[i] & (1 << bit)) != 0)
                {
                    pages.Add(((ulong)i * 8) + (ulong)bit);
                }
            }
        }
        return pages;
    }

    [Fact]
    public void VringsEnableAndDisableWhileTheDeviceRuns()
    {
        // DPDK's set_vring_state path (ifcvf_enable_vring_hw / ifcvf_disable_vring_hw) with the device DRIVER_OK.
        using var rig = new DpdkVfPair(pairs: 2);
        rig.Probe();
        rig.Start(DpdkVfPair.A, _ => (0, 0), enabled: q => q < 2);
        rig.Start(DpdkVfPair.B, _ => (0, 0), enabled: q => q < 2);
        Assert.Equal(1u, rig.Vfs[0].Function.MqRegister);
        Assert.False(rig.Vfs[0].Function.IsQueueRunning(2));
        Assert.Equal(3, rig.Transfer(0, 3).Count);

        for (int d = 0; d < 2; d++)
        {
            for (int q = 2; q < 4; q++)
            {
                var g = rig.Queues[d][q];
                rig.Harness.SetVring(d, q, g.Size, g.Desc, g.Avail, g.Used, 0, 0, enable: true);
                Assert.Equal(0, rig.Harness.EnableVringHw(d, q));
                Assert.True(rig.Vfs[d].Function.IsQueueRunning(q));
            }
            Assert.Equal(2u, rig.Vfs[d].Function.MqRegister);
        }
        var got = rig.Transfer(1, 4);
        Assert.Equal(DpdkVfPair.TxBuffer(1, 3)[VirtioNetHeader.Size..], got[3]);

        var (avail, used) = rig.Harness.DisableVringHw(DpdkVfPair.B, 2);
        Assert.Equal(((ushort)4, (ushort)4), (avail, used));
        Assert.False(rig.Vfs[DpdkVfPair.B].Function.IsQueueRunning(2));
        Assert.True(rig.Vfs[DpdkVfPair.B].Function.IsQueueRunning(0)); // the other vrings keep running
        Assert.Equal(2, rig.Transfer(0, 2).Count);
        Assert.Empty(rig.Harness.Warnings);
    }
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void DpdkBaseCodeOnAStrictVfBreaksOnlyTheQueueEnableZeroRule(int pairs)
    {
        // Issue 17 part 3: the whole sequence on strict VFs. DPDK's ifcvf_hw_disable (ifcvf_stop_hw) and
        // ifcvf_disable_vring_hw stop a vring by writing 0 to queue_enable, which VIRTIO 1.2 §4.1.4.3.2
        // forbids and the IFC VF defines (stop, then save the ring state in the LM block). That is the one
        // finding: counted once per write, logged once per VF, never NEEDS_RESET. Nothing else is reported.
        using var rig = new DpdkVfPair(pairs);
        rig.Probe();
        for (int d = 0; d < 2; d++)
        {
            rig.Start(d, _ => (0, 0));
        }
        for (int p = 0; p < pairs; p++)
        {
            Assert.Equal(4, rig.Transfer(p, 4).Count);
        }
        var vfA = rig.Vfs[DpdkVfPair.A].Function;
        var vfB = rig.Vfs[DpdkVfPair.B].Function;
        Assert.True(vfA.Strict && vfB.Strict);
        Assert.Equal(0, vfA.ViolationTotal + vfB.ViolationTotal); // init, features, start, doorbells: clean

        const ulong logBase = 0x1000_0000_0000;
        using var log = MappedMemory.Allocate(1 << 20);
        vfB.DmaMap(logBase, log.All, writable: true);
        rig.Harness.EnableLogging(DpdkVfPair.B, logBase, 1 << 20);
        Assert.Equal(2, rig.Transfer(0, 2).Count);
        rig.Harness.DisableLogging(DpdkVfPair.B);
        Assert.Equal(0, vfB.ViolationTotal);

        var (avail, _) = rig.Harness.DisableVringHw(DpdkVfPair.B, 0);
        Assert.Equal((ushort)6, avail);
        Assert.Equal(1, vfB.ViolationCount(SpecRule.QueueEnableZero));
        rig.Harness.StopHw(DpdkVfPair.A);
        rig.Harness.StopHw(DpdkVfPair.B);
        // ifcvf_hw_disable writes queue_enable = 0 for every vring it was given (2 per pair), enabled or not.
        var zero = SpecRules.Get(SpecRule.QueueEnableZero);
        Assert.Equal(new[] { (zero, (long)(2 * pairs)) }, vfA.Violations);
        Assert.Equal(new[] { (zero, (long)((2 * pairs) + 1)) }, vfB.Violations);
        Assert.Equal(0, vfA.NeedsResetEvents + vfB.NeedsResetEvents);
        Assert.Equal(2, rig.SpecLogs.Count); // once per VF
        Assert.All(rig.SpecLogs, l => Assert.Contains("queue_enable_zero (VIRTIO 1.2 §4.1.4.3.2)", l, StringComparison.Ordinal));
        Assert.Empty(rig.Harness.Warnings);

        // A restart after the stop is clean again (ifcvf_reset waits for device_status to read 0).
        rig.Start(DpdkVfPair.A, _ => (0, 0));
        rig.Start(DpdkVfPair.B, _ => (0, 0));
        Assert.Equal(3, rig.Transfer(0, 3).Count);
        Assert.Equal(2 * pairs, vfA.ViolationTotal);
        Assert.Equal(0, vfA.Status & VirtioStatus.NEEDS_RESET);
    }
}
