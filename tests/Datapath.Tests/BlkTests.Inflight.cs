using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.Datapath.Tests;

/// <summary>
/// Inflight I/O tracking on the block VF (vhost-user INFLIGHT_SHMFD, split rings): the device marks each request
/// it takes and clears it once the used ring holds it; after a back-end restart it resubmits what the region says
/// was in flight (even when the front-end's ring base says otherwise); a region a hostile front-end corrupted is
/// reset, never followed outside the queue.
/// </summary>
public sealed partial class BlkTests
{
    private const ushort QSize = 256;

    private static TestNic ManualDisk(string image) => Disk(image); // Manual engine, its log in TestNic.Logs

    /// <summary>A one-queue disk on <paramref name="image"/> with <paramref name="region"/> as its inflight buffer, started.</summary>
    private static TestNic StartWithInflight(string image, MappedMemory region)
    {
        var d = ManualDisk(image);
        d.Blk.SetInflight(0, region.All);
        d.Start(Features, size: QSize, queues: 1);
        return d;
    }

    [Fact]
    public void DeviceMarksRequestsInFlightAndClearsThemWhenUsed()
    {
        string img = NewImage();
        using var region = MappedMemory.Allocate(VhostInflight.QueueRegionSize(QSize));
        using var d = StartWithInflight(img, region);
        var a = Add(d, 0, VirtioBlk.T_OUT, 0, outData: Pattern(4096, 1));
        var b = Add(d, 0, VirtioBlk.T_OUT, 8, outData: Pattern(4096, 2));
        var span = region.Span(0, (int)region.Length);
        Assert.False(VhostInflight.IsInitialised(span)); // nothing taken yet: the device initialises it at its first burst
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, a).Status);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, b).Status);
        Assert.True(VhostInflight.IsInitialised(span));
        Assert.False(VhostInflight.InFlight(span, a.Head));
        Assert.False(VhostInflight.InFlight(span, b.Head));
        Assert.Equal(2, VhostInflight.UsedIdx(span));
        // While a queue runs its region cannot change.
        Assert.Throws<InvalidOperationException>(() => d.Blk.SetInflight(0, null));
    }

    /// <summary>
    /// The back-end died with two requests taken but not completed (their marks left in the region) and the
    /// front-end restarts the ring past them (base 4, used 2): the device resubmits both from the used index.
    /// </summary>
    [Fact]
    public void RequestsInFlightAtARestartAreResubmitted()
    {
        string img = NewImage();
        using var region = MappedMemory.Allocate(VhostInflight.QueueRegionSize(QSize));
        var span = region.Span(0, (int)region.Length);
        using var d = StartWithInflight(img, region);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 0, outData: Pattern(4096, 1))).Status);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 8, outData: Pattern(4096, 2))).Status);
        d.Adapter.Reset(); // the back-end is gone
        var c = Add(d, 0, VirtioBlk.T_OUT, 16, outData: Pattern(4096, 3));
        var e = Add(d, 0, VirtioBlk.T_OUT, 24, outData: Pattern(8192, 4));
        VhostInflight.Begin(span, c.Head, 100); // what it had marked before it died
        VhostInflight.Begin(span, e.Head, 101);
        d.Blk.SetInflight(0, region.All); // the new back-end's SET_INFLIGHT_FD
        d.Restart([(4, 2)]);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, c).Status);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, e).Status);
        var onDisk = File.ReadAllBytes(img);
        Assert.Equal(Pattern(4096, 3), onDisk.AsSpan(16 * 512, 4096).ToArray());
        Assert.Equal(Pattern(8192, 4), onDisk.AsSpan(24 * 512, 8192).ToArray());
        Assert.False(VhostInflight.InFlight(span, c.Head));
        Assert.Equal(4, VhostInflight.UsedIdx(span));
        Assert.Contains(d.Logs, l => l.Contains("2 request(s) were in flight", StringComparison.Ordinal) && l.Contains("front-end said 4", StringComparison.Ordinal));
        Assert.False(d.NeedsReset);
    }

    /// <summary>
    /// A start on a region a back-end used before (a restart) raises the queue's interrupt once, even with nothing
    /// to do: the old back-end may have died between publishing used entries and their interrupt. A first start on
    /// a fresh region raises none.
    /// </summary>
    [Fact]
    public void RestartOnAUsedRegionRaisesTheQueueInterruptOnce()
    {
        string img = NewImage();
        using var region = MappedMemory.Allocate(VhostInflight.QueueRegionSize(QSize));
        using var d = StartWithInflight(img, region);
        d.Blk.PollOnce();
        Assert.Equal(0, d.Blk.GetQueueCounters(0).Interrupts);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 0, outData: Pattern(4096, 1))).Status);
        d.Adapter.Reset(); // the back-end is gone, its last used entry published
        d.Blk.SetInflight(0, region.All);
        d.Restart([(1, 1)]);
        long before = d.Blk.GetQueueCounters(0).Interrupts;
        d.Blk.PollOnce();
        Assert.Equal(before + 1, d.Blk.GetQueueCounters(0).Interrupts);
        d.Blk.PollOnce();
        Assert.Equal(before + 1, d.Blk.GetQueueCounters(0).Interrupts);
        Assert.False(d.NeedsReset);
    }

    /// <summary>A crash between publishing a batch and clearing its marks: the used ring holds it, so it is not executed again.</summary>
    [Fact]
    public void RecoveryClearsTheLastBatchTheUsedRingAlreadyHolds()
    {
        var r = new byte[VhostInflight.QueueRegionSize(8)];
        VhostInflight.Init(r, 8, 10);
        VhostInflight.Begin(r, 3, 1);
        VhostInflight.Begin(r, 5, 2);
        VhostInflight.Begin(r, 1, 3);
        VhostInflight.LinkBatch(r, [3, 5]); // used index then went 10 -> 12; marks not yet cleared
        var heads = new ushort[8];
        int n = VhostInflight.Recover(r, 8, 12, heads, out ulong next, out string? problem);
        Assert.Null(problem);
        Assert.Equal(1, n);
        Assert.Equal(1, heads[0]);
        Assert.Equal(4UL, next);
        Assert.Equal(12, VhostInflight.UsedIdx(r));
        Assert.False(VhostInflight.InFlight(r, 3));
        Assert.False(VhostInflight.InFlight(r, 5));
        // Resubmission order is submission (counter) order, not descriptor order.
        VhostInflight.Begin(r, 6, 9);
        VhostInflight.Begin(r, 0, 8);
        n = VhostInflight.Recover(r, 8, 12, heads, out _, out problem);
        Assert.Equal([1, 0, 6], heads.AsSpan(0, n).ToArray());
    }

    [Theory]
    [InlineData("desc_num", "desc_num 16")]
    [InlineData("version", "version 7")]
    [InlineData("batch", "leaves the queue")]
    [InlineData("flag", "inflight flag 9")]
    [InlineData("used", "behind the ring's used index")]
    public void HostileRegionIsResetNotFollowed(string what, string expected)
    {
        var r = new byte[VhostInflight.QueueRegionSize(8)];
        VhostInflight.Init(r, 8, 10);
        VhostInflight.Begin(r, 2, 1);
        switch (what)
        {
            case "desc_num": r[VhostInflight.DescNumOff] = 16; break;
            case "version": r[VhostInflight.VersionOff] = 7; break;
            case "batch": r[VhostInflight.LastBatchHeadOff] = 200; r[VhostInflight.UsedIdxOff] = 9; break; // 1 behind, list head outside
            case "flag": r[VhostInflight.HeaderSize + (4 * VhostInflight.DescSize)] = 9; break;
            case "used": r[VhostInflight.UsedIdxOff] = 0; r[VhostInflight.UsedIdxOff + 1] = 0x80; break;
        }
        var heads = new ushort[8];
        Assert.Equal(-1, VhostInflight.Recover(r, 8, 10, heads, out _, out string? problem));
        Assert.Contains(expected, problem, StringComparison.Ordinal);
        // Reset: a clean region for this queue, nothing in flight.
        Assert.Equal(0, VhostInflight.Recover(r, 8, 10, heads, out _, out problem));
        Assert.Null(problem);
    }

    [Fact]
    public void RegionTooSmallForTheQueueIsNotTracked()
    {
        string img = NewImage();
        using var region = MappedMemory.Allocate(4096);
        using var d = ManualDisk(img);
        d.Blk.SetInflight(0, region.All.Slice(0, 64));
        d.Start(Features, size: QSize, queues: 1);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_IN, 0, inLen: 512)).Status);
        Assert.Contains(d.Logs, l => l.Contains("not tracked", StringComparison.Ordinal));
        Assert.All(region.Span(0, 4096).ToArray(), x => Assert.Equal(0, x));
    }

    [Fact]
    public void InflightRegionForAQueueOutsideTheDeviceIsRefused()
    {
        using var d = ManualDisk(NewImage());
        Assert.Throws<ArgumentOutOfRangeException>(() => d.Blk.SetInflight(64, null)); // no block VF has more queues
        d.Start(Features, size: QSize, queues: 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => d.Blk.SetInflight(1, null)); // once attached: this VF's one queue
    }
}
