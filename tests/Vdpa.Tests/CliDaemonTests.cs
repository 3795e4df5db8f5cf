using System.Text.Json;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>The `ifcvf` CLI against a real daemon process: human and JSON output, errors, permissions.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class CliDaemonTests
{
    private static string[] Lines(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    [Fact]
    public void WithoutADaemonTheCliSaysSoInOneLine()
    {
        string path = Path.Combine(Path.GetTempPath(), $"no-daemon-{Guid.NewGuid():N}.sock");
        var (exit, stdout, stderr) = DaemonProcess.RunCli(["--control", path, "dev", "show"]);
        Assert.NotEqual(0, exit);
        Assert.Equal("", stdout);
        var line = Assert.Single(Lines(stderr));
        Assert.Contains("no daemon is running", line, StringComparison.Ordinal);
    }

    [Fact]
    public void SimAddPinsWorkersToCpusAndRefusesForbiddenOnes()
    {
        using var d = new DaemonProcess();
        var r = d.Cli("sim", "add", "count", "2", "cpu", "0");
        Assert.True(r.Exit == 0, r.Err);
        Assert.Equal(2, Lines(r.Out).Count(l => l.EndsWith(" cpu 0", StringComparison.Ordinal)));
        r = d.Cli("sim", "add", "cpu", "0-x");
        Assert.Equal(1, r.Exit);
        Assert.Contains("cpu: CPU list \"0-x\"", Assert.Single(Lines(r.Err)), StringComparison.Ordinal);
        r = d.Cli("sim", "add", "cpu", "1023");
        Assert.Equal(1, r.Exit);
        Assert.Contains("CPU 1023 is not among the CPUs this process may run on", Assert.Single(Lines(r.Err)), StringComparison.Ordinal);
    }

    [Fact]
    public void SimAddStrictAndSimShowReportTheSpecCounters()
    {
        using var d = new DaemonProcess();
        var r = d.Cli("sim", "add", "strict");
        Assert.True(r.Exit == 0, r.Err);
        r = d.Cli("sim", "add");
        Assert.True(r.Exit == 0, r.Err);
        // Provisioning a MAC writes the device config's MAC bytes: the IFC VF takes them (as Linux ifcvf
        // provisions it), virtio 1.x calls the field read-only: counted as an IFC VF extension, no NEEDS_RESET.
        r = d.Cli("dev", "add", "name", "vdpa0", "mgmtdev", "sim/ifcvf0", "mac", "02:00:00:00:00:aa");
        Assert.True(r.Exit == 0, r.Err);

        r = d.Cli("sim", "show");
        Assert.True(r.Exit == 0, r.Err);
        var lines = Lines(r.Out);
        Assert.StartsWith("sim/ifcvf0: address sim:00:01.0 dev vdpa0 status ", lines[0], StringComparison.Ordinal);
        Assert.EndsWith(" strict on", lines[0], StringComparison.Ordinal);
        Assert.DoesNotContain("NEEDS_RESET", lines[0], StringComparison.Ordinal);
        Assert.Equal("  spec violations 6", lines[1]);
        Assert.Equal("    mac_config_write 6 (VIRTIO 1.2 §5.1.4) IFC VF extension", lines[2]);
        Assert.Equal("sim/ifcvf1: address sim:00:02.0 status RESET strict off", lines[3]);
        Assert.Equal("  spec violations 0", lines[4]);

        r = d.Cli("-j", "sim", "show", "sim/ifcvf0");
        using (var doc = JsonDocument.Parse(r.Out))
        {
            var vf = doc.RootElement.GetProperty("sim").GetProperty("sim/ifcvf0");
            Assert.True(vf.GetProperty("strict").GetBoolean());
            Assert.False(vf.GetProperty("needs_reset").GetBoolean());
            var spec = vf.GetProperty("spec_violations");
            Assert.Equal(6, spec.GetProperty("total").GetInt64());
            Assert.Equal(6, spec.GetProperty("mac_config_write").GetProperty("count").GetInt64());
            Assert.True(spec.GetProperty("mac_config_write").GetProperty("ifc_extension").GetBoolean());
        }
        r = d.Cli("-j", "dev", "vstats", "show", "vdpa0");
        using (var doc = JsonDocument.Parse(r.Out))
        {
            var v = doc.RootElement.GetProperty("vstats").GetProperty("vdpa0");
            Assert.True(v.GetProperty("strict").GetBoolean());
            Assert.Equal(6, v.GetProperty("spec_violations").GetProperty("total").GetInt64());
        }
        r = d.Cli("dev", "vstats", "show", "vdpa0", "qidx", "0");
        Assert.Equal("vdpa0: strict on", Lines(r.Out)[0]);
        Assert.Equal("vdpa0: spec violations 6", Lines(r.Out)[1]);
        r = d.Cli("sim", "show", "sim/ifcvf7");
        Assert.Equal(1, r.Exit);
        Assert.Contains("software VF \"sim/ifcvf7\" not found", r.Err, StringComparison.Ordinal);
    }

    [Fact]
    public void FullSessionHumanAndJson()
    {
        using var d = new DaemonProcess();
        var r = d.Cli("sim", "add", "count", "2", "queues", "2", "mac", "02:00:00:00:00:10");
        Assert.True(r.Exit == 0, r.Err);
        Assert.StartsWith("sim/ifcvf0: address sim:00:01.0 msix_vectors 6", r.Out, StringComparison.Ordinal);

        r = d.Cli("mgmtdev", "show");
        var lines = Lines(r.Out);
        Assert.Equal(8, lines.Length);
        Assert.Equal("sim/ifcvf1: address sim:00:02.0 msix_vectors 6", lines[4]);
        Assert.Equal("  supported_classes net", lines[5]);
        Assert.Equal("  max_supported_vqs 5", lines[6]);
        Assert.StartsWith("  dev_features MTU MAC MRG_RXBUF STATUS CTRL_VQ", lines[7], StringComparison.Ordinal);

        r = d.Cli("-j", "mgmtdev", "show");
        using (var doc = JsonDocument.Parse(r.Out))
        {
            var m = doc.RootElement.GetProperty("mgmtdev");
            Assert.Equal(["sim/ifcvf0", "sim/ifcvf1"], m.EnumerateObject().Select(p => p.Name));
            Assert.Equal(5, m.GetProperty("sim/ifcvf0").GetProperty("max_supported_vqs").GetInt32());
            Assert.Contains("VERSION_1", m.GetProperty("sim/ifcvf0").GetProperty("dev_features").EnumerateArray().Select(x => x.GetString()));
        }

        r = d.Cli("dev", "add", "name", "vdpa0", "mgmtdev", "sim/ifcvf0", "mac", "02:00:00:00:00:aa", "mtu", "1400", "max_vqp", "2");
        Assert.True(r.Exit == 0, r.Err);
        Assert.Equal("", r.Out);

        r = d.Cli("dev", "add", "name", "vdpa1", "mgmtdev", "sim/ifcvf1", "device_features", "0x700000000");
        Assert.Equal(1, r.Exit);
        Assert.Contains("not a subset", Assert.Single(Lines(r.Err)), StringComparison.Ordinal);

        r = d.Cli("dev", "add", "name", "vdpa1", "mgmtdev", "sim/ifcvf1", "device_features", "0x300010020");
        Assert.True(r.Exit == 0, r.Err);

        r = d.Cli("dev", "show");
        Assert.Equal(
            ["vdpa0: type network mgmtdev sim/ifcvf0 vendor_id 32902 max_vqs 5 max_vq_size 1024",
             "vdpa1: type network mgmtdev sim/ifcvf1 vendor_id 32902 max_vqs 5 max_vq_size 1024"],
            Lines(r.Out));

        r = d.Cli("-j", "dev", "show", "vdpa0");
        using (var doc = JsonDocument.Parse(r.Out))
        {
            var v = doc.RootElement.GetProperty("dev").GetProperty("vdpa0");
            Assert.Equal("network", v.GetProperty("type").GetString());
            Assert.Equal(32902, v.GetProperty("vendor_id").GetInt32());
            Assert.Equal(5, v.GetProperty("max_vqs").GetInt32());
        }

        r = d.Cli("dev", "config", "show", "vdpa0");
        lines = Lines(r.Out);
        Assert.Equal("vdpa0: mac 02:00:00:00:00:aa link up link_announce false max_vq_pairs 2 mtu 1400", lines[0]);

        r = d.Cli("dev", "config", "show", "vdpa1");
        lines = Lines(r.Out);
        Assert.Equal("vdpa1: mac 02:00:00:00:00:11 link up link_announce false max_vq_pairs 2", lines[0]);
        Assert.Equal("  dev_features MAC STATUS VERSION_1 ACCESS_PLATFORM", lines[1]);

        r = d.Cli("-j", "dev", "config", "show");
        using (var doc = JsonDocument.Parse(r.Out))
        {
            var c = doc.RootElement.GetProperty("config");
            Assert.Equal("02:00:00:00:00:aa", c.GetProperty("vdpa0").GetProperty("mac").GetString());
            Assert.Equal(1400, c.GetProperty("vdpa0").GetProperty("mtu").GetInt32());
            Assert.Equal("up", c.GetProperty("vdpa1").GetProperty("link").GetString());
        }

        r = d.Cli("dev", "vstats", "show", "vdpa0", "qidx", "1");
        Assert.Equal("vdpa0: queue_type tx queue_index 1 packets 0 bytes 0 kicks 0 interrupts 0 errors 0 drops 0", r.Out.TrimEnd());
        r = d.Cli("-j", "dev", "vstats", "show", "vdpa0", "qidx", "4");
        using (var doc = JsonDocument.Parse(r.Out))
        {
            var s = doc.RootElement.GetProperty("vstats").GetProperty("vdpa0");
            Assert.Equal("control_vq", s.GetProperty("queue_type").GetString());
            Assert.Equal(4, s.GetProperty("queue_index").GetInt32());
        }
        r = d.Cli("dev", "vstats", "show", "vdpa0", "qidx", "5");
        Assert.Equal(1, r.Exit);
        Assert.Contains("out of range", r.Err, StringComparison.Ordinal);

        r = d.Cli("dev", "del", "vdpa0");
        Assert.True(r.Exit == 0, r.Err);
        r = d.Cli("dev", "show");
        Assert.Equal(["vdpa1: type network mgmtdev sim/ifcvf1 vendor_id 32902 max_vqs 5 max_vq_size 1024"], Lines(r.Out));
        r = d.Cli("dev", "del", "vdpa0");
        Assert.Equal(1, r.Exit);
        Assert.Equal("ifcvf: vDPA device \"vdpa0\" not found", r.Err.TrimEnd());

        r = d.Cli("sim", "del", "sim/ifcvf1"); // takes vdpa1 with it
        Assert.True(r.Exit == 0, r.Err);
        r = d.Cli("-j", "dev", "show");
        Assert.Equal("{\"dev\":{}}", r.Out.TrimEnd());
        r = d.Cli("mgmtdev", "show");
        Assert.Equal(4, Lines(r.Out).Length);

        r = d.Cli("dev", "add", "name", "x");
        Assert.Equal(1, r.Exit);
        Assert.Single(Lines(r.Err));
        r = d.Cli("dev", "add", "name", "x", "mgmtdev", "sim/ifcvf0", "mac", "zz");
        Assert.Equal(1, r.Exit);
        Assert.Contains("mac must look like", r.Err, StringComparison.Ordinal);

        Assert.Equal(0, d.Stop());
        Assert.False(File.Exists(d.Socket)); // removed on a clean stop
        Assert.Contains("msg=\"vDPA device added\" dev=vdpa0", d.Log, StringComparison.Ordinal);
        Assert.Contains("level=info msg=\"daemon stopped\"", d.Log, StringComparison.Ordinal);
    }

    [Fact]
    public void ControlSocketIsOwnerOnlyAndOtherUidsAreRefused()
    {
        using var d = new DaemonProcess();
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(d.Socket));

        // With the file mode as it is, uid 65534 cannot even connect.
        var r = d.CliAs(65534, "dev", "show");
        Assert.Equal(1, r.Exit);
        Assert.Contains("permission denied", r.Err, StringComparison.Ordinal);

        // Open the path up: the daemon itself still refuses the peer by its uid (SO_PEERCRED).
        File.SetUnixFileMode(d.Dir, (UnixFileMode)0x1ED); // 0755
        File.SetUnixFileMode(d.Socket, (UnixFileMode)0x1B6); // 0666
        r = d.CliAs(65534, "sim", "add");
        Assert.Equal(1, r.Exit);
        Assert.Contains("permission denied: uid 65534 may not use this daemon", Assert.Single(Lines(r.Err)), StringComparison.Ordinal);
        Assert.Contains("peer_uid=65534", d.Log, StringComparison.Ordinal);
        Assert.Equal(0, d.Cli("mgmtdev", "show").Out.Length); // nothing was created

        r = d.Cli("sim", "add");
        Assert.True(r.Exit == 0, r.Err);
    }

    [Fact]
    public void AllowUidLetsThatUidIn()
    {
        using var d = new DaemonProcess("--allow-uid", "65534");
        File.SetUnixFileMode(d.Dir, (UnixFileMode)0x1ED);
        File.SetUnixFileMode(d.Socket, (UnixFileMode)0x1B6);
        var r = d.CliAs(65534, "sim", "add");
        Assert.True(r.Exit == 0, r.Err);
        Assert.StartsWith("sim/ifcvf0:", r.Out, StringComparison.Ordinal);
    }

    [Fact]
    public void ASecondDaemonDoesNotStealALiveSocket()
    {
        using var d = new DaemonProcess();
        var r = DaemonProcess.RunCli(["daemon", "--control", d.Socket]);
        Assert.Equal(1, r.Exit);
        Assert.Contains("already listening", r.Err, StringComparison.Ordinal);
        Assert.Equal(0, d.Cli("dev", "show").Exit); // the first one still serves
    }
}
