using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// QEMU 7.2's vhost-user-blk-pci (the guest kernel's own virtio_blk driver) on `ifcvf serve --class blk`
/// over a raw image file: the guest sees the right size and queue count, writes random data with dd
/// (O_DIRECT 4 KiB and 64 KiB from different CPUs, buffered 1 MiB with fsync), flushes, drops its page
/// cache and reads the region back direct and buffered; the sha256 of the image region on the host equals
/// what the guest wrote and read. With 2 queues both must carry requests. Read-only refuses writes and
/// leaves the image untouched.
/// </summary>
public class BlkGuestTests(ITestOutputHelper output)
{
    private const long ImageBytes = 64L << 20;
    private const int WriteBytes = 4 << 20;

    private static GuestOptions Blk => new() { Ip = "none", Peer = "none", Mode = "blk", Bytes = WriteBytes, TimeoutSeconds = 150 };

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void GuestWritesAndReadsBackTheImage(int queues)
    {
        string dir = PeerEnvironment.NewRunDir();
        string socket = Path.Combine(dir, "blk.sock");
        string image = Path.Combine(dir, "disk.img");
        using (var f = File.Create(image))
        {
            f.SetLength(ImageBytes);
        }
        ServeBackend? serve = null;
        QemuGuest? guest = null;
        try
        {
            serve = ServeBackend.Start(socket, "file:" + image, queues, ["--class", "blk"]);
            guest = QemuGuest.OnVhostUserBlk(socket, Blk, queues);
            AssertGuestWroteAndReadBack(guest, image, queues);
            // QEMU negotiated inflight tracking: it asked for the buffer and handed it back before starting.
            foreach (var line in serve.Process.Transcript.Split('\n').Where(l => l.Contains("inflight", StringComparison.Ordinal)))
            {
                output.WriteLine(line.Trim());
            }
            Assert.Contains("inflight buffer set", serve.Process.Transcript, StringComparison.Ordinal);
            if (queues > 1)
            {
                for (int q = 0; q < queues; q++)
                {
                    Assert.True(LastPackets(serve.Process.Transcript, q) > 0, $"queue {q} carried no requests\n{serve.Describe()}");
                }
            }
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new InvalidOperationException($"{e.Message}\n{guest?.Describe()}\n{serve?.Describe()}", e);
        }
        finally
        {
            guest?.Dispose();
            serve?.Dispose();
        }
    }

    [Fact]
    public void ReadOnlyDiskRefusesWrites()
    {
        string dir = PeerEnvironment.NewRunDir();
        string socket = Path.Combine(dir, "blk.sock");
        string image = Path.Combine(dir, "disk.img");
        var content = new byte[8 << 20];
        RandomNumberGenerator.Fill(content);
        File.WriteAllBytes(image, content);
        string before = HostSha(image, content.Length);
        ServeBackend? serve = null;
        QemuGuest? guest = null;
        try
        {
            serve = ServeBackend.Start(socket, "file:" + image, 1, ["--class", "blk", "--readonly"]);
            guest = QemuGuest.OnVhostUserBlk(socket, Blk, 1);
            var info = guest.WaitFor(@"^GUEST-BLK size=(\d+) ro=(\d)", TimeSpan.FromSeconds(120));
            Assert.Equal(content.Length, long.Parse(info.Groups[1].Value, CultureInfo.InvariantCulture));
            Assert.Equal("1", info.Groups[2].Value);
            var r = guest.WaitFor(@"^GUEST-RESULT blk-ro write (\w+)", TimeSpan.FromSeconds(60));
            output.WriteLine(r.Value);
            Assert.Equal("refused", r.Groups[1].Value);
            guest.WaitFor("^GUEST-DONE", TimeSpan.FromSeconds(30));
            Assert.Equal(before, HostSha(image, content.Length));
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new InvalidOperationException($"{e.Message}\n{guest?.Describe()}\n{serve?.Describe()}", e);
        }
        finally
        {
            guest?.Dispose();
            serve?.Dispose();
        }
    }

    /// <summary>
    /// The guest's blk script on a fresh zeroed image: the disk has the image's size, not read-only, the queue
    /// count asked for; what the guest wrote (dd direct and buffered) it read back, and the image region on the
    /// host has the same sha256; nothing beyond the region was written.
    /// </summary>
    private void AssertGuestWroteAndReadBack(QemuGuest guest, string image, int queues)
    {
        var info = guest.WaitFor(@"^GUEST-BLK size=(\d+) ro=(\d) queues=(\d+)", TimeSpan.FromSeconds(120));
        Assert.Equal(ImageBytes, long.Parse(info.Groups[1].Value, CultureInfo.InvariantCulture));
        Assert.Equal("0", info.Groups[2].Value);
        Assert.Equal(queues, int.Parse(info.Groups[3].Value, CultureInfo.InvariantCulture));
        guest.WaitFor("^GUEST-DONE", TimeSpan.FromSeconds(180)); // printed after the result line, so that line is complete
        var r = guest.WaitFor(@"^GUEST-RESULT blk dd=(\d) src=(\w+) direct=(\w+) buffered=(\w+)", TimeSpan.FromSeconds(1));
        output.WriteLine(r.Value);
        Assert.Equal("1", r.Groups[1].Value);
        string src = r.Groups[2].Value;
        Assert.Equal(src, r.Groups[3].Value);
        Assert.Equal(src, r.Groups[4].Value);
        Assert.Equal(src, HostSha(image, WriteBytes));
        // Nothing beyond the region was written.
        Assert.Equal(ImageBytes, new FileInfo(image).Length);
        using (var fs = File.OpenRead(image))
        {
            fs.Position = WriteBytes;
            var rest = new byte[ImageBytes - WriteBytes];
            fs.ReadExactly(rest);
            Assert.True(rest.AsSpan().IndexOfAnyExcept((byte)0) < 0, "bytes written beyond the guest's region");
        }
    }

    /// <summary>
    /// Daemon mode: `sim add class blk backend file:IMG queues 2`, `dev add`, `vhost add` — the same guest
    /// proof as on serve, on the daemon's block device; both queues carry requests (`dev vstats show`).
    /// </summary>
    [Fact]
    public void GuestOnADaemonBlockDevice()
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf);
        const int queues = 2;
        string dir = PeerEnvironment.NewRunDir();
        string control = Path.Combine(dir, "ctl.sock");
        string socket = Path.Combine(dir, "blk.sock");
        string image = Path.Combine(dir, "disk.img");
        using (var f = File.Create(image))
        {
            f.SetLength(ImageBytes);
        }
        using var daemon = new PeerProcess("daemon", PeerEnvironment.Ifcvf, ["--control", control, "daemon"], TimeSpan.FromMinutes(5));
        QemuGuest? guest = null;
        try
        {
            Assert.True(PeerEnvironment.Eventually(() => File.Exists(control) || daemon.HasExited, TimeSpan.FromSeconds(240)) && !daemon.HasExited,
                "daemon did not start\n" + daemon.Describe());
            Cli(control, "sim", "add", "class", "blk", "backend", "file:" + image, "queues", "2");
            Cli(control, "dev", "add", "name", "blk0", "mgmtdev", "sim/ifcvf0");
            Cli(control, "vhost", "add", "blk0", "socket", socket);
            output.WriteLine(Cli(control, "dev", "config", "show", "blk0"));
            guest = QemuGuest.OnVhostUserBlk(socket, Blk, queues);
            AssertGuestWroteAndReadBack(guest, image, queues);
            string stats = Cli(control, "-j", "dev", "vstats", "show", "blk0");
            output.WriteLine(stats);
            using var doc = JsonDocument.Parse(stats);
            var qs = doc.RootElement.GetProperty("vstats").GetProperty("blk0").GetProperty("queues").EnumerateArray().ToArray();
            Assert.Equal(queues, qs.Length);
            Assert.All(qs, q => Assert.True(q.GetProperty("packets").GetInt64() > 0, $"queue {q.GetProperty("queue_index")} carried no requests: {stats}"));
            Assert.All(qs, q => Assert.Equal(0, q.GetProperty("drops").GetInt64()));
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new InvalidOperationException($"{e.Message}\n{guest?.Describe()}\n{daemon.Describe()}", e);
        }
        finally
        {
            guest?.Dispose();
            if (!daemon.HasExited)
            {
                daemon.Signal("TERM", TimeSpan.FromSeconds(10));
            }
        }
        Assert.False(File.Exists(socket), "daemon left the vhost-user socket behind");
    }

    private static string Cli(string control, params string[] args)
    {
        var (code, text) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["--control", control, .. args], TimeSpan.FromSeconds(240));
        Assert.True(code == 0, $"ifcvf {string.Join(' ', args)} failed ({code}): {text}");
        return text;
    }

    private static string HostSha(string image, int bytes, int offset = 0)
    {
        using var fs = File.OpenRead(image);
        fs.Position = offset;
        var b = new byte[bytes];
        fs.ReadExactly(b);
        return Convert.ToHexStringLower(SHA256.HashData(b));
    }

    /// <summary>The request count of a queue in serve's last -j snapshot.</summary>
    internal static long LastPackets(string transcript, int q)
    {
        var ms = Regex.Matches(transcript, string.Create(CultureInfo.InvariantCulture, $"\"qidx\":\\s*{q},\\s*\"type\":\\s*\"req\",\\s*\"packets\":\\s*(\\d+)"));
        return ms.Count == 0 ? -1 : long.Parse(ms[^1].Groups[1].Value, CultureInfo.InvariantCulture);
    }
}
