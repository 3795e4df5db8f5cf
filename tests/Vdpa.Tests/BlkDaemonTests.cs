using System.Text.Json;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>
/// The block VF in daemon mode, through a real daemon process and its control socket (the CLI): sim add class
/// blk, mgmtdev show (class block, backend), dev add with block provisioning, dev show / dev config show (text
/// and -j) and vhost add; refusals are one clear line and the daemon keeps serving.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class BlkDaemonTests : IDisposable
{
    private const long ImageBytes = 8L << 20; // 16384 sectors
    private readonly string _dir = Directory.CreateTempSubdirectory("blkd").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string[] Lines(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    private string Image()
    {
        string path = Path.Combine(_dir, "disk.img");
        using var f = File.Create(path);
        f.SetLength(ImageBytes);
        return path;
    }

    private static void Ok((int Exit, string Out, string Err) r) => Assert.True(r.Exit == 0, r.Err);

    private static string Refused((int Exit, string Out, string Err) r)
    {
        Assert.Equal(1, r.Exit);
        Assert.Equal("", r.Out);
        return Assert.Single(Lines(r.Err));
    }

    [Fact]
    public void BlockVfInDaemonModeHumanAndJson()
    {
        using var d = new DaemonProcess();
        string image = Image();
        var r = d.Cli("sim", "add", "class", "blk", "backend", "file:" + image, "queues", "2");
        Ok(r);
        Assert.StartsWith("sim/ifcvf0: address sim:00:01.0", r.Out, StringComparison.Ordinal);
        Ok(d.Cli("sim", "add", "count", "1")); // a net VF beside it
        Ok(d.Cli("sim", "add", "class", "blk", "backend", "mem:4M", "readonly"));

        var lines = Lines(d.Cli("mgmtdev", "show").Out);
        Assert.Equal("  supported_classes block", lines[1]);
        Assert.Equal("  backend file:" + image, lines[2]);
        Assert.Equal("  max_supported_vqs 2", lines[3]);
        Assert.StartsWith("  dev_features SIZE_MAX SEG_MAX GEOMETRY BLK_SIZE FLUSH TOPOLOGY MQ DISCARD WRITE_ZEROES", lines[4], StringComparison.Ordinal);
        Assert.Contains("  supported_classes net", lines);
        using (var doc = JsonDocument.Parse(d.Cli("-j", "mgmtdev", "show").Out))
        {
            var m = doc.RootElement.GetProperty("mgmtdev");
            Assert.Equal(["block"], m.GetProperty("sim/ifcvf0").GetProperty("supported_classes").EnumerateArray().Select(x => x.GetString()));
            Assert.Equal(["net"], m.GetProperty("sim/ifcvf1").GetProperty("supported_classes").EnumerateArray().Select(x => x.GetString()));
            Assert.Contains("RO", m.GetProperty("sim/ifcvf2").GetProperty("dev_features").EnumerateArray().Select(x => x.GetString()));
            Assert.Equal("mem:4194304", m.GetProperty("sim/ifcvf2").GetProperty("backend").GetString());
        }

        // Without provisioning: the backend's capacity, the VF's queues.
        Ok(d.Cli("dev", "add", "name", "blk0", "mgmtdev", "sim/ifcvf0"));
        Assert.Equal("blk0: type block mgmtdev sim/ifcvf0 vendor_id 32902 max_vqs 2 max_vq_size 1024", Lines(d.Cli("dev", "show", "blk0").Out)[0]);
        lines = Lines(d.Cli("dev", "config", "show", "blk0").Out);
        Assert.Equal("blk0: capacity 16384 size_max 1048576 seg_max 254 blk_size 512 physical_blk_exp 0 alignment_offset 0 min_io_size 1 opt_io_size 0 " +
                     "num_queues 2 max_discard_sectors 4194304 max_discard_seg 1 discard_sector_alignment 1 max_write_zeroes_sectors 4194304 " +
                     "max_write_zeroes_seg 1 read_only false flush true", lines[0]);
        Assert.StartsWith("  dev_features SIZE_MAX SEG_MAX GEOMETRY BLK_SIZE FLUSH", lines[1], StringComparison.Ordinal);
        Ok(d.Cli("dev", "del", "blk0"));

        // Provisioned: a smaller capacity, 4 KiB blocks, read-only, one queue.
        Ok(d.Cli("dev", "add", "name", "blk0", "mgmtdev", "sim/ifcvf0", "capacity", "8192", "blk_size", "4096", "readonly", "queues", "1"));
        using (var doc = JsonDocument.Parse(d.Cli("-j", "dev", "config", "show", "blk0").Out))
        {
            var c = doc.RootElement.GetProperty("config").GetProperty("blk0");
            Assert.Equal(8192, c.GetProperty("capacity").GetInt64());
            Assert.Equal(4096, c.GetProperty("blk_size").GetInt32());
            Assert.Equal(1, c.GetProperty("num_queues").GetInt32());
            Assert.True(c.GetProperty("read_only").GetBoolean());
            Assert.True(c.GetProperty("flush").GetBoolean());
            var f = c.GetProperty("dev_features").EnumerateArray().Select(x => x.GetString()).ToArray();
            Assert.Contains("RO", f);
            Assert.DoesNotContain("MQ", f);
        }
        // dev del gives the VF its built config back.
        Ok(d.Cli("dev", "del", "blk0"));
        Ok(d.Cli("dev", "add", "name", "blk0", "mgmtdev", "sim/ifcvf0"));
        Assert.StartsWith("blk0: capacity 16384 ", Lines(d.Cli("dev", "config", "show", "blk0").Out)[0], StringComparison.Ordinal);

        // A read-only VF is read-only whatever dev add says; vstats name the queues "req".
        Ok(d.Cli("dev", "add", "name", "blk2", "mgmtdev", "sim/ifcvf2"));
        Assert.Contains(" read_only true ", Lines(d.Cli("dev", "config", "show", "blk2").Out)[0], StringComparison.Ordinal);
        Assert.StartsWith("blk2: queue_type req queue_index 0 packets 0", d.Cli("dev", "vstats", "show", "blk2", "qidx", "0").Out, StringComparison.Ordinal);

        // vhost add serves the block device (vhost-user-blk).
        string socket = Path.Combine(_dir, "blk.sock");
        Ok(d.Cli("vhost", "add", "blk0", "socket", socket));
        Assert.True(File.Exists(socket));
        Assert.Contains("  consumer vhost socket " + socket, Lines(d.Cli("dev", "show", "blk0").Out));
        Ok(d.Cli("vhost", "del", "blk0"));
    }

    [Fact]
    public void BlockProvisioningRefusalsAreOneLineAndTheDaemonKeepsServing()
    {
        using var d = new DaemonProcess();
        string image = Image();
        Assert.Contains("needs backend file:PATH|mem:SIZE", Refused(d.Cli("sim", "add", "class", "blk")), StringComparison.Ordinal);
        Assert.Contains("backend file:PATH[,direct] or mem:SIZE", Refused(d.Cli("sim", "add", "class", "blk", "backend", "loopback")), StringComparison.Ordinal);
        Assert.Contains("one VF per backend", Refused(d.Cli("sim", "add", "class", "blk", "backend", "mem:1M", "count", "2")), StringComparison.Ordinal);
        Assert.Contains("one VF per backend", Refused(d.Cli("sim", "add", "class", "blk", "backend", "mem:1M", "mac", "02:00:00:00:00:01")), StringComparison.Ordinal);
        Assert.Contains("queues must be 1..16", Refused(d.Cli("sim", "add", "class", "blk", "backend", "mem:1M", "queues", "17")), StringComparison.Ordinal);
        Assert.Contains("class must be net or blk", Refused(d.Cli("sim", "add", "class", "scsi")), StringComparison.Ordinal);
        Assert.Contains("block attributes", Refused(d.Cli("sim", "add", "readonly")), StringComparison.Ordinal);
        Assert.Contains("disk.missing", Refused(d.Cli("sim", "add", "class", "blk", "backend", "file:" + Path.Combine(_dir, "disk.missing"))), StringComparison.Ordinal);
        Assert.Contains("smaller than one 4096-byte block", Refused(d.Cli("sim", "add", "class", "blk", "backend", "mem:2K", "blk_size", "4096")), StringComparison.Ordinal);
        Ok(d.Cli("sim", "add", "class", "blk", "backend", "file:" + image, "queues", "2"));
        Ok(d.Cli("sim", "add"));
        Assert.Contains("exceeds the 16384 sectors", Refused(d.Cli("dev", "add", "name", "b", "mgmtdev", "sim/ifcvf0", "capacity", "16385")), StringComparison.Ordinal);
        Assert.Contains("3 queues exceed", Refused(d.Cli("dev", "add", "name", "b", "mgmtdev", "sim/ifcvf0", "queues", "3")), StringComparison.Ordinal);
        Assert.Contains("blk_size must be 512, 1024, 2048 or 4096", Refused(d.Cli("dev", "add", "name", "b", "mgmtdev", "sim/ifcvf0", "blk_size", "1000")), StringComparison.Ordinal);
        Assert.Contains("whole number of 4096-byte blocks", Refused(d.Cli("dev", "add", "name", "b", "mgmtdev", "sim/ifcvf0", "blk_size", "4096", "capacity", "9")), StringComparison.Ordinal);
        Assert.Contains("virtio-net attributes", Refused(d.Cli("dev", "add", "name", "b", "mgmtdev", "sim/ifcvf0", "mac", "02:00:00:00:00:01")), StringComparison.Ordinal);
        Assert.Contains("is a net VF", Refused(d.Cli("dev", "add", "name", "n", "mgmtdev", "sim/ifcvf1", "readonly")), StringComparison.Ordinal);
        // None of the refusals left a device behind, and the VF still takes a good dev add.
        Assert.Equal("", d.Cli("dev", "show").Out);
        Ok(d.Cli("dev", "add", "name", "b", "mgmtdev", "sim/ifcvf0", "capacity", "4096"));
        Assert.StartsWith("b: capacity 4096 ", Lines(d.Cli("dev", "config", "show", "b").Out)[0], StringComparison.Ordinal);
        Ok(d.Cli("sim", "del", "sim/ifcvf0"));
        Assert.Equal("", d.Cli("dev", "show").Out);
    }
}
