using System.Text.Encodings.Web;
using System.Text.Json;
using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// Live migration of the Linux test guest between two QEMU 7.2 instances on this host, each on its own
/// vhost-user back-end whose TAP sits on a bridge in a namespace the test creates (<see cref="MigrationRig"/>).
/// During every migration the namespace pings the guest every 200 ms and sends it a file of several MiB
/// over TCP. Pass: the migration completes, the guest runs on the destination, no ping is lost outside
/// the switch-over and within it no more than QEMU's downtime explains (see Leg), the
/// SHA-256 the guest computes after the file landed on the destination matches the host's, and the
/// source back-end is clean (no guest memory mapped, no extra threads) once the source QEMU quits.
///
/// The back-ends are DPDK's vhost PMD + net_tap (the reference) unless IFCVF_MIGRATION_BACKEND=serve
/// (`ifcvf serve --backend tap:NAME`, which QEMU cannot migrate until it offers the dirty log).
/// IFCVF_MIGRATION_REPORT=FILE appends one JSON line per migration (bench/migration.sh reads them).
/// IFCVF_MIGRATION_FLOOD=1 turns learning off on the bridge's back-end ports (losses then leave the
/// announcement out: for investigating where probes are lost).
/// </summary>
public class MigrationTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_migrationTimeout = TimeSpan.FromSeconds(120);

    private static readonly JsonSerializerOptions s_json = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>IFCVF_MIGRATION_BACKEND (bench/migration.sh) runs every case on that back-end only.</summary>
    private static string BackendKind(string backend) => Environment.GetEnvironmentVariable("IFCVF_MIGRATION_BACKEND") ?? backend;

    /// <summary>
    /// One migration on DPDK's vhost PMD (the reference), on `ifcvf serve` (the IFC VF's LM-block dirty log;
    /// 1 and 2 queue pairs), on `ifcvf serve --no-dirty-log` (a VF without the log: the back-end's software
    /// relay) and on the daemon's `vhost add` consumer.
    /// </summary>
    [Theory]
    [InlineData("serve", 1)]
    [InlineData("serve", 2)]
    [InlineData("serve-relay", 1)]
    [InlineData("daemon", 1)]
    [InlineData("daemon", 2)]
    public void MigratesUnderPingAndTransfer(string backend, int queues) => Run(BackendKind(backend), queues, migrations: 1);

    /// <summary>
    /// The same migration on DPDK's vhost PMD, the reference that bench/migration.sh compares against. Not in
    /// the CI run (Category=Manual): DPDK 22.11's own handover fails now and then here (1 of 3 in two bench runs,
    /// once in a clean-clone CI run: the destination guest logs "output.0:id 1 is not a head!" and locks up),
    /// which is DPDK's ring state, not this project's code, and must not fail the project's CI.
    /// </summary>
    [Fact]
    [Trait("Category", "Manual")]
    public void MigratesUnderPingAndTransferOnDpdkReference() => Run(BackendKind("dpdk"), 1, migrations: 1);

    /// <summary>
    /// Three round trips (six migrations), the guest alternating between the two back-ends, 2 queue pairs, on
    /// `ifcvf serve` (~80 s). Its one failure when it was a Manual case (on the DPDK reference, a transfer whose
    /// checksum never came) predates the guest RAM of 256 MiB + 128 KiB: QEMU 7.2's TCG dirty tracking lost guest
    /// stores during migrations (<see cref="MigrationQemu.RamTailKb"/>), the failure the one-migration rows
    /// showed on both back-ends; with that RAM size it passed on serve every time since.
    /// </summary>
    [Theory]
    [InlineData("serve")]
    public void PingPongThreeRoundTripsTwoQueuePairs(string backend) => Run(BackendKind(backend), queues: 2, migrations: 6);

    /// <summary>The ping-pong on DPDK's vhost PMD (the reference; Manual for the reason above).</summary>
    [Fact]
    [Trait("Category", "Manual")]
    public void PingPongOnDpdkReference() => Run(BackendKind("dpdk"), queues: 2, migrations: 6);

    private string _backend = "dpdk";

    private void Run(string backend, int queues, int migrations)
    {
        _backend = backend;
        var o = new MigrationRigOptions { Backend = backend, Queues = queues, BridgeLearning = Environment.GetEnvironmentVariable("IFCVF_MIGRATION_FLOOD") != "1" };
        using var rig = new MigrationRig(o, output.WriteLine);
        rig.BootSource();
        var pings = rig.StartPings();
        var results = new List<MigrationResult>();
        int bound = 0;
        for (int leg = 1; leg <= migrations; leg++)
        {
            var (r, b) = Leg(rig, leg, queues);
            results.Add(r);
            bound += b;
        }

        // the guest keeps answering on its final host; then count the losses over the whole run
        int at = pings.LastAnswered;
        Assert.True(pings.WaitForRepliesAfter(at, 5, TimeSpan.FromSeconds(10)), $"the guest stopped answering pings\n{pings.Describe()}");
        var tally = pings.Tally();
        output.WriteLine($"pings over the whole run: {tally}");
        if (backend != "dpdk")
        {
            // The project's back-ends lose none: the source's TAP leaves the bridge at the switch-over and the
            // destination's TAP holds what the bridge floods to it until the device runs (see Leg).
            Assert.True(tally.Lost == 0, $"pings lost: {tally}\n{string.Join('\n', results)}\n{pings.Describe()}");
        }
        // each migration's losses lie in its switch-over, within its bound (checked per migration in Leg)
        Assert.True(tally.Lost <= bound, $"pings lost: {tally}\n{string.Join('\n', results)}\n{pings.Describe()}");
    }

    private (MigrationResult Result, int Bound) Leg(MigrationRig rig, int leg, int queues)
    {
        var pings = rig.Pings!;
        var src = rig.Active!;
        var dst = rig.PrepareDestination();
        int mapped = MigrationRig.MappedGuestMemory(src.Backend);
        Assert.True(mapped > 0, $"the source back-end maps no guest memory: the clean check would prove nothing\n{src.Backend.Describe()}");
        var lostBefore = pings.Tally().LostSequences.ToHashSet();

        var transfer = rig.StartTransfer(leg);
        // put the migration into the middle of the paced transfer (a scenario timing, not a synchronisation)
        Thread.Sleep(1000);
        Assert.False(transfer.Sender.HasExited, $"transfer {leg} ended before the migration started\n{transfer.Sender.Describe()}");

        int windowStart = pings.LastAnswered;
        var r = rig.Migrate(s_migrationTimeout);
        // requests sent up to now (and one still in flight) may have met the switch-over
        int windowEnd = (int)Math.Ceiling(pings.LastAnswered + 1 + (0.5 / PingMonitor.IntervalSeconds));
        bool overlapped = !transfer.Sender.HasExited;
        output.WriteLine($"migration {leg}: {r}; transfer still running at the end: {overlapped}");
        Report(r, leg, queues, lostDuring: null);
        Assert.True(r.Completed, $"migration {leg} did not complete: {r}\n{rig.Describe()}");
        Assert.Equal("running", rig.Active!.Qmp.Status());
        Assert.Equal("postmigrate", src.Qmp.Status());

        var (sha, bytes) = rig.WaitTransferLanded(transfer, TimeSpan.FromSeconds(120));
        Assert.Equal(transfer.Bytes, bytes);
        Assert.True(sha == transfer.Sha256, $"transfer {leg}: the guest computed {sha}, the host sent {transfer.Sha256}");
        output.WriteLine($"transfer {leg}: {bytes} bytes landed on {rig.Active.Name}, sha256 {sha} at both ends");
        Assert.True(rig.GuestBroken() is null, $"the guest broke: '{rig.GuestBroken()?.Value.Trim()}'\n{rig.Describe()}");

        int at = pings.LastAnswered;
        Assert.True(pings.WaitForRepliesAfter(at, 3, TimeSpan.FromSeconds(10)),
            $"the guest does not answer pings on {rig.Active.Name}\n{pings.Describe()}\n{rig.Describe()}");
        var tally = pings.Tally();
        var lostHere = tally.LostSequences.Except(lostBefore).ToList();
        int lost = lostHere.Count;
        output.WriteLine($"migration {leg}: {lost} pings lost (switch-over window: icmp_seq {windowStart + 1}..{windowEnd})");
        Report(r, leg, queues, lost);
        // The project's back-ends: none lost. Measured with IFCVF_MIGRATION_CAPTURE (tcpdump on the bridge and both
        // TAPs): before, the learning bridge sent the guest's frames to the source's TAP from the source's stop until
        // the guest's announcement from the destination, ~200 ms (STOP to RESUME 120 ms + device start 70 ms + the
        // guest's gratuitous ARP 5 ms after it), so the one 200 ms ping in that window was lost every time (the
        // request: it reached the stopped source's TAP). Now the source's TAP drops its carrier at the stop, the
        // bridge floods, and the request waits in the destination's TAP until its device runs (answered ~70 ms late).
        if (_backend != "dpdk")
        {
            Assert.True(lost == 0, $"migration {leg}: {lost} pings lost (icmp_seq {string.Join(',', lostHere)}); downtime {r.Info.DowntimeMs} ms, STOP to RESUME {r.OutageMs} ms\n{pings.Describe()}\n{rig.Describe()}");
        }
        if (queues > 1 && src.Backend is ServeTapBackend or DaemonVhostTapBackend)
        {
            // the guest really used the second queue pair: its TX ring (3) had moved when the source handed it over
            string log = src.Backend is ServeTapBackend s ? s.Log : ((DaemonVhostTapBackend)src.Backend).Log;
            var handed = System.Text.RegularExpressions.Regex.Matches(log, @"ring 3(?:: base| stopped at) (\d+)");
            Assert.True(handed.Count > 0 && int.Parse(handed[^1].Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) > 0,
                $"migration {leg}: the second queue pair's TX ring carried nothing on the source\n{src.Backend.Describe()}");
        }
        // Outside the switch-over nothing may be lost. Within it the guest runs nowhere for QEMU's downtime D
        // (source side: from stopping the source to the end of the stream), ceil(D / 200 ms) probes; plus one for
        // the destination's resume, which D does not include (vhost-user device start over the socket: ~200-300 ms
        // on this loaded 2-CPU machine, seen with a flooding bridge); plus one for the learning bridge, which sends
        // to the source's TAP until it sees the guest's MAC on the destination's (the RARP the destination back-end
        // sends for the guest, or the guest's own announcement). Seen with the reference: 1-4 lost per migration
        // with D = 7-693 ms (D reached ~1.2 s once with two queue pairs), always inside this bound.
        var outside = lostHere.Where(q => q <= windowStart || q > windowEnd).ToList();
        Assert.True(outside.Count == 0, $"pings lost outside migration {leg}'s switch-over: {string.Join(',', outside)}\n{pings.Describe()}");
        int bound = (int)Math.Ceiling(Math.Max(0, r.Info.DowntimeMs) / (PingMonitor.IntervalSeconds * 1000)) + 2;
        Assert.True(lost <= bound, $"migration {leg}: {lost} pings lost in the switch-over, bound {bound} (downtime {r.Info.DowntimeMs} ms)\n{pings.Describe()}");

        if (src.Backend is ServeTapBackend serve)
        {
            // the path the issue asks for was the one taken
            string path = serve.Kind == "serve" ? "logs dirty pages into" : "switched to the software relay";
            Assert.True(serve.Log.Contains(path, StringComparison.Ordinal), $"the source back-end never logged '{path}'\n{serve.Describe()}");
        }
        string? dirty = rig.RetireAndCheckClean(src);
        Assert.True(dirty is null, dirty + "\n" + src.Backend.Describe());
        return (r, bound);
    }

    /// <summary>One JSON line per migration into IFCVF_MIGRATION_REPORT (when set); lostDuring null = before the ping count.</summary>
    private void Report(MigrationResult r, int leg, int queues, int? lostDuring)
    {
        string? path = Environment.GetEnvironmentVariable("IFCVF_MIGRATION_REPORT");
        if (string.IsNullOrEmpty(path) || (lostDuring is null && r.Completed))
        {
            return; // a completed migration is reported once its pings are counted
        }
        var line = new Dictionary<string, object?>
        {
            ["backend"] = _backend,
            ["queues"] = queues,
            ["leg"] = leg,
            ["status"] = r.Info.Status,
            ["total_ms"] = r.Info.TotalTimeMs,
            ["downtime_ms"] = r.Info.DowntimeMs,
            ["wall_ms"] = (long)r.Wall.TotalMilliseconds,
            ["pings_lost"] = lostDuring,
            ["stop_to_resume_ms"] = r.OutageMs,
            ["ram_passes"] = r.Info.DirtySyncCount,
            ["last_remaining_kib"] = r.Info.RemainingBytes < 0 ? -1 : r.Info.RemainingBytes / 1024,
            ["last_expected_downtime_ms"] = r.Info.ExpectedDowntimeMs,
            ["last_dirty_pages_rate"] = r.Info.DirtyPagesRate,
            ["ram_kib"] = r.Info.RamTransferredBytes / 1024,
            ["error"] = r.Error,
        };
        File.AppendAllText(path, JsonSerializer.Serialize(line, s_json) + "\n");
    }
}
