using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// Migrations that do not complete, on `ifcvf serve` (hardware log) and `serve --no-dirty-log` (software
/// relay): cancelled half-way (`migrate_cancel`), or the destination's back-end killed while RAM is being
/// copied (and the migration cancelled: QEMU 7.2 would otherwise complete it onto the back-end-less destination). Pass: the guest keeps running on the source with no ping lost, the source back-end stops
/// logging (LM block off, or the rings back from the relay), and the destination's back-end (when alive)
/// is clean once its QEMU is gone; a later migration to a fresh destination still completes.
/// </summary>
public class MigrationFailureTests(ITestOutputHelper output)
{
    private const long Bandwidth = 24L << 20; // bytes/s: a 256 MiB guest takes ~10 s to copy
    private const long After = 16L << 20;

    [Theory]
    [InlineData("serve")]
    [InlineData("serve-relay")]
    public void ACancelledMigrationLeavesTheSourceRunningAndLoggingOff(string backend)
    {
        using var rig = StartRig(backend, out var pings, out var src, out var dst, out var serve);
        var r = rig.MigrateInterrupted(Bandwidth, After, (s, _) => s.Qmp.MigrateCancel(), TimeSpan.FromSeconds(60));
        output.WriteLine($"cancelled migration: {r}");
        Assert.True(r.Error is null, r.ToString());
        Assert.Equal("cancelled", r.Info.Status);
        Assert.Equal("running", src.Qmp.Status());
        Assert.Contains(backend == "serve" ? "logs dirty pages into" : "switched to the software relay", serve.Log, StringComparison.Ordinal);
        AssertSourceStoppedLogging(backend, serve);

        string? dirty = rig.RetireAndCheckClean(dst);
        Assert.True(dirty is null, dirty + "\n" + dst.Backend.Describe());
        int at = pings.LastAnswered;
        Assert.True(pings.WaitForRepliesAfter(at, 5, TimeSpan.FromSeconds(10)), $"the guest stopped answering on the source\n{pings.Describe()}");
        Assert.True(pings.Tally().Lost == 0, $"pings lost while the migration was cancelled: {pings.Tally()}\n{pings.Describe()}");

        // the source is still migratable: a second attempt completes
        rig.PrepareDestination();
        var done = rig.Migrate(TimeSpan.FromSeconds(120));
        output.WriteLine($"second migration: {done}");
        Assert.True(done.Completed, done.ToString());
        Assert.True(rig.RetireAndCheckClean(src) is null, src.Backend.Describe());
    }

    [Theory]
    [InlineData("serve")]
    [InlineData("serve-relay")]
    public void TheDestinationBackEndKilledDuringMigrationLeavesTheSourceRunning(string backend)
    {
        using var rig = StartRig(backend, out var pings, out var src, out var dst, out var serve);
        // QEMU 7.2 itself carries on when the destination's vhost-user back-end disappears (seen: the migration
        // completes onto a destination without a network back-end), so the orchestrator cancels, as libvirt does
        // when a destination resource dies.
        var r = rig.MigrateInterrupted(Bandwidth, After, (s, d) =>
        {
            d.Backend.Kill();
            s.Qmp.MigrateCancel();
        }, TimeSpan.FromSeconds(60));
        output.WriteLine($"migration with the destination back-end killed: {r}\n{dst.Describe()}");
        Assert.True(r.Error is null, r.ToString());
        Assert.Equal("cancelled", r.Info.Status);
        Assert.True(dst.Backend.HasExited);
        Assert.Equal("running", src.Qmp.Status());
        AssertSourceStoppedLogging(backend, serve);
        dst.Quit();
        int at = pings.LastAnswered;
        Assert.True(pings.WaitForRepliesAfter(at, 5, TimeSpan.FromSeconds(10)), $"the guest stopped answering on the source\n{pings.Describe()}");
        Assert.True(pings.Tally().Lost == 0, $"pings lost while the migration failed: {pings.Tally()}\n{pings.Describe()}");
    }

    /// <summary>
    /// Both cases' set-up: the guest booted on a <paramref name="backend"/> back-end (the source), pinged, and a
    /// destination QEMU waiting on the other back-end.
    /// </summary>
    private MigrationRig StartRig(string backend, out PingMonitor pings, out MigrationQemu src, out MigrationQemu dst, out ServeTapBackend serve)
    {
        var rig = new MigrationRig(new MigrationRigOptions { Backend = backend }, output.WriteLine);
        try
        {
            rig.BootSource();
            pings = rig.StartPings();
            src = rig.Active!;
            dst = rig.PrepareDestination();
            serve = (ServeTapBackend)src.Backend;
            return rig;
        }
        catch
        {
            rig.Dispose();
            throw;
        }
    }

    /// <summary>The source back-end logs that it stopped logging (LM block off, or the rings back from the relay).</summary>
    private static void AssertSourceStoppedLogging(string backend, ServeTapBackend serve)
    {
        string off = backend == "serve" ? "stopped logging" : "software relay off";
        Assert.True(PeerEnvironment.Eventually(() => serve.Log.Contains(off, StringComparison.Ordinal), TimeSpan.FromSeconds(10)),
            $"the source back-end did not stop logging ('{off}')\n{serve.Describe()}");
    }
}
