using System.Globalization;
using System.Text.RegularExpressions;
using IfcVdpa.Peers.Tests.Harness;
using IfcVdpa.Tests.Shared;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// The kernel-bus proof (issue 15): a QEMU guest booting Debian's generic 6.12 kernel (bookworm-backports:
/// vduse, virtio_vdpa, vhost_vdpa) with iproute2's `vdpa` and the NativeAOT `ifcvf` in its initramfs. In the
/// guest the daemon makes two software VFs wired as a pair; vdpa0 joins the vDPA bus through VDUSE, `vdpa dev
/// add` binds it, the kernel's virtio-net drives it (virtio_vdpa) and reaches vdpa1, a TAP in a namespace of
/// its own (ping, a 4 MiB TCP transfer with sha256, link down/up to the carrier); then vhost_vdpa with DPDK testpmd on /dev/vhost-vdpa-0 answering pings, teardown and
/// a daemon killed with the device bound. The CI host kernel cannot load modules, hence the guest. Never
/// skipped: scripts/vduse-guest/prepare.sh installs what is missing, and a failure fails the test.
/// </summary>
public sealed class VduseGuestTests(ITestOutputHelper output)
{
    [Fact]
    public void Software_vf_on_the_kernel_vdpa_bus_through_vduse_carries_traffic_and_tears_down_cleanly()
    {
        string outDir = Path.Combine(PeerEnvironment.RepoRoot, ".peers", "vduse-guest");
        var (prc, pout) = GuestScript.Run("scripts/vduse-guest/prepare.sh", outDir, TimeSpan.FromMinutes(25));
        Assert.True(prc == 0, $"preparing the VDUSE guest failed: QEMU, busybox-static, iproute2, the bookworm-backports 6.12 kernel and the NativeAOT toolchain are required\n{pout}");
        var (rc, log) = GuestScript.Run("scripts/vduse-guest/run.sh", $"{outDir} 300", TimeSpan.FromMinutes(7));
        output.WriteLine(log);
        Assert.True(rc == 0, $"QEMU exited with {rc}");
        Assert.DoesNotContain("insmod-failed", log, StringComparison.Ordinal);

        string Line(string marker) => GuestScript.Line(log, marker);
        static long Num(string line, string key)
        {
            var m = Regex.Match(line, Regex.Escape(key) + " (-?[0-9]+)");
            Assert.True(m.Success, $"\"{key} N\" missing in: {line}");
            return long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        }

        // the guest kernel has VDUSE; the binary is the NativeAOT one (no SDK in the guest)
        var boot = Line("VDUSE-GUEST kernel");
        Assert.Matches(@"kernel 6\.12\.\S+-amd64 ", boot);
        Assert.Contains("(NativeAOT,", boot, StringComparison.Ordinal);
        Assert.Contains("control=control", boot, StringComparison.Ordinal);

        // the VF joins the bus through VDUSE; the real vdpa tool sees and binds it
        Assert.Contains("node=control vduse0", Line("VDUSE-GUEST attach rc=0"), StringComparison.Ordinal);
        Line("VDPA mgmtdev vduse:");
        Assert.Matches(@"supported_classes net", Line("VDPA mgmtdev   supported_classes"));
        Line("VDUSE-GUEST vdpa-dev-add rc=0");
        var json = Line("VDPA dev-show-json");
        Assert.Contains("\"vduse0\":{\"type\":\"network\",\"mgmtdev\":\"vduse\"", json, StringComparison.Ordinal);
        Assert.Contains("\"max_vqs\":2", json, StringComparison.Ordinal);
        var config = Line("VDPA config vduse0:");
        Assert.Contains("mac 02:00:00:00:15:01 link up", config, StringComparison.Ordinal);
        Assert.Contains("mtu 1400", config, StringComparison.Ordinal);
        var negotiated = Line("VDPA config   negotiated_features");
        Assert.Contains("VERSION_1 ACCESS_PLATFORM", negotiated, StringComparison.Ordinal);
        Assert.DoesNotContain("CTRL_VQ", negotiated, StringComparison.Ordinal);

        // virtio_vdpa: the kernel's virtio-net makes a netdev with the provisioned MAC and MTU
        Assert.Matches(@"^VDUSE-GUEST netdev eth\d+ driver=virtio_vdpa mac=02:00:00:00:15:01 mtu=1400$", Line("VDUSE-GUEST netdev"));
        Line("VDUSE-GUEST tap-attach rc=0");
        Assert.Contains("3 packets transmitted, 3 packets received", Line("VDUSE-GUEST ping rc=0"), StringComparison.Ordinal);

        // TCP: 4 MiB across the VFs, the same bytes on the other side
        Line("VDUSE-GUEST tcp-send rc=0");
        var tcp = Regex.Match(Line("VDUSE-GUEST tcp tx-sha256"), "tx-sha256=([0-9a-f]{64}) rx-sha256=([0-9a-f]{64}) rx-bytes=(\\d+)");
        Assert.True(tcp.Success, "tcp line malformed");
        Assert.Equal(tcp.Groups[1].Value, tcp.Groups[2].Value);
        Assert.Equal("4194304", tcp.Groups[3].Value);

        // link status reaches the netdev's carrier through the config interrupt
        Assert.Contains("carrier=0 operstate=down", Line("VDUSE-GUEST link-down"), StringComparison.Ordinal);
        Assert.Contains("carrier=1 operstate=up", Line("VDUSE-GUEST link-up"), StringComparison.Ordinal);
        Assert.Contains("2 packets transmitted, 2 packets received", Line("VDUSE-GUEST ping-after-link rc=0"), StringComparison.Ordinal);
        var rx = Line("VDUSE-GUEST vstats q0");
        var tx = Line("VDUSE-GUEST vstats q1");
        Assert.True(Num(tx, "bytes") >= 4194304, tx);   // every TCP byte went through the VF's TX queue
        Assert.True(Num(tx, "kicks") > 0, tx);          // kick eventfd -> doorbell
        Assert.True(Num(rx, "interrupts") > 0, rx);     // VDUSE_VQ_INJECT_IRQ
        Assert.Equal(0, Num(tx, "errors"));
        Assert.Equal(0, Num(rx, "errors"));

        // rebound to vhost_vdpa: the character device appears and the netdev goes
        Assert.Matches(@"^VDUSE-GUEST rebind driver=vhost_vdpa dev=vhost-vdpa-0 +netdev-left=0$", Line("VDUSE-GUEST rebind"));

        // DPDK testpmd (virtio-user on /dev/vhost-vdpa-0, icmpecho) answers the namespace's pings through the VF pair
        Assert.Contains("3 packets transmitted, 3 packets received", Line("VDUSE-GUEST testpmd-ping rc=0"), StringComparison.Ordinal);
        Assert.True(Num(Line("VDUSE-GUEST testpmd-stats RX-packets:"), "RX-packets:") >= 3, "testpmd received fewer than 3 frames");
        Assert.True(Num(Line("VDUSE-GUEST testpmd-stats TX-packets:"), "TX-packets:") >= 3, "testpmd sent fewer than 3 frames");
        Assert.DoesNotContain("is not inside one mapped IOTLB region", log, StringComparison.Ordinal);
        Assert.DoesNotContain("ring areas outside the DMA map", log, StringComparison.Ordinal);

        // teardown: refused while bound, then vdpa dev del and dev detach destroy the VDUSE device
        Assert.Contains("vdpa dev del vduse0", Line("VDUSE-GUEST detach-on-bus rc=1"), StringComparison.Ordinal);
        Line("VDUSE-GUEST vdpa-dev-del rc=0 on-bus=0");
        Line("VDUSE-GUEST detach rc=0 node-left=0");

        // a daemon killed with the device bound: the bus driver's reset waits msg_timeout (3 s here), then the
        // kernel marks the device broken and `vdpa dev del` completes; nothing oopses, and a new daemon takes
        // the stale name over
        Assert.Matches(@"^VDUSE-GUEST reattach netdev=eth\d+$", Line("VDUSE-GUEST reattach"));
        Line("VDUSE-GUEST daemon-killed");
        var del = Line("VDUSE-GUEST dev-del-after-kill rc=0");
        Assert.Contains("on-bus=0", del, StringComparison.Ordinal);
        Assert.True(long.Parse(Regex.Match(del, "seconds=(\\d+)").Groups[1].Value, CultureInfo.InvariantCulture) <= 10, del);
        Line("VDUSE-GUEST recreate rc=0");
        Assert.Matches(@"^VDUSE-GUEST kernel-healthy netdev=eth\d+ oops=0$", Line("VDUSE-GUEST kernel-healthy"));
        Assert.Contains("left behind by an earlier owner", log, StringComparison.Ordinal);
        Line("VDUSE-GUEST daemon2-exit rc=0");
        Line("VDUSE-GUEST-DONE ok");
    }

    /// <summary>
    /// Issue 16's VDUSE proof: in the same guest (kernel command line vduse_scenario=blk, scripts/vduse-guest/blk.sh)
    /// the IFC block VF on a raw image joins the vDPA bus through VDUSE and the kernel's virtio_blk drives it
    /// (virtio_vdpa): the disk has the image's size and the VF's two queues; mkfs.ext4, mount, 6 MiB written
    /// (buffered and O_DIRECT), umount, e2fsck clean, the data read back after a remount; the whole device read
    /// through VDUSE equals the image file, which on its own (device gone) is a clean file system holding the
    /// same data. A second VF provisioned read-only with one of its two queues: the kernel sees a read-only
    /// disk with one queue, a raw write is refused, ext4 mounts read-only, and the image is unchanged. Then
    /// `serve --vduse --class blk` on a memory backend carries a raw O_DIRECT write and read.
    /// </summary>
    [Fact]
    public void Block_vf_on_the_kernel_vdpa_bus_through_vduse_carries_an_ext4_file_system()
    {
        string outDir = Path.Combine(PeerEnvironment.RepoRoot, ".peers", "vduse-guest");
        var (prc, pout) = GuestScript.Run("scripts/vduse-guest/prepare.sh", outDir, TimeSpan.FromMinutes(25));
        Assert.True(prc == 0, $"preparing the VDUSE guest failed: QEMU, busybox-static, iproute2, e2fsprogs, the bookworm-backports 6.12 kernel and the NativeAOT toolchain are required\n{pout}");
        var (rc, log) = GuestScript.Run("scripts/vduse-guest/run.sh", $"{outDir} 240 blk", TimeSpan.FromMinutes(6));
        output.WriteLine(log);
        Assert.True(rc == 0, $"QEMU exited with {rc}");
        Assert.DoesNotContain("insmod-failed", log, StringComparison.Ordinal);

        string Line(string marker) => GuestScript.Line(log, marker);
        static string Sha(string line, string key)
        {
            var m = Regex.Match(line, Regex.Escape(key) + "=([0-9a-f]{64})");
            Assert.True(m.Success, $"{key}=SHA256 missing in: {line}");
            return m.Groups[1].Value;
        }

        Assert.Contains("scenario=blk", Line("VDUSE-GUEST kernel"), StringComparison.Ordinal);
        Line("VDUSE-BLK sim-add rc=0");
        Line("VDUSE-BLK dev-add rc=0");
        Assert.Contains("node=control vdblk0", Line("VDUSE-BLK attach rc=0"), StringComparison.Ordinal);
        Assert.Matches(@"supported_classes net block", Line("VDPA mgmtdev   supported_classes"));
        Line("VDUSE-BLK vdpa-dev-add rc=0");
        var json = Line("VDPA dev-show-json");
        Assert.Contains("\"vdblk0\":{\"type\":\"block\",\"mgmtdev\":\"vduse\"", json, StringComparison.Ordinal);
        Assert.Contains("\"max_vqs\":2", json, StringComparison.Ordinal);

        // virtio_blk on virtio_vdpa: a disk of the image's size (64 MiB = 131072 sectors), both request queues
        Assert.Matches(@"^VDUSE-BLK blockdev vd[a-z]+ driver=virtio_vdpa sectors=131072 ro=0 lbs=512 hwqueues=2 image-sectors=131072$", Line("VDUSE-BLK blockdev"));

        // ext4 through the VF: made, mounted, written, unmounted, checked clean (e2fsck -n exits 0)
        Line("VDUSE-BLK mkfs rc=0");
        Assert.Contains(" ext4 rw", Line("VDUSE-BLK mount rc=0"), StringComparison.Ordinal);
        Line("VDUSE-BLK write rc=0");
        Line("VDUSE-BLK umount rc=0");
        Assert.Contains("files", Line("VDUSE-BLK fsck rc=0"), StringComparison.Ordinal);
        Line("VDUSE-BLK remount rc=0");
        var sha = Line("VDUSE-BLK sha");
        string data = Sha(sha, "data");
        Assert.Equal(data, Sha(sha, "fs"));
        Assert.Equal(data, Sha(sha, "direct"));
        Assert.Contains("bytes=6291456", sha, StringComparison.Ordinal);
        foreach (var q in new[] { "q0", "q1" })
        {
            var v = Line($"VDUSE-BLK vstats {q}");
            Assert.Contains("queue_type req", v, StringComparison.Ordinal);
            Assert.Matches(@"errors 0 drops 0$", v);
        }
        long reqBytes = Regex.Matches(log, @"VDUSE-BLK vstats q\d blk0: .* bytes (\d+) ").Sum(m => long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
        Assert.True(reqBytes >= 2 * 6291456, $"the VF moved {reqBytes} bytes: less than the data written twice");

        // the device read through VDUSE is the image file, byte for byte
        var whole = Line("VDUSE-BLK device-vs-image");
        Assert.Equal(Sha(whole, "dev"), Sha(whole, "image"));

        // teardown, then the image file on its own: a clean ext4 holding the data written through the VF
        Line("VDUSE-BLK vdpa-dev-del rc=0 on-bus=0");
        Line("VDUSE-BLK detach rc=0 node-left=0");
        Line("VDUSE-BLK image-fsck rc=0");
        var img = Line("VDUSE-BLK image-sha rc=0");
        Assert.Equal(data, Sha(img, "data"));
        Assert.Equal(data, Sha(img, "image"));

        // read-only, one of two queues provisioned: the kernel sees a read-only disk with one queue
        Assert.Matches(@"^VDUSE-BLK ro-blockdev vd[a-z]+ ro=1 hwqueues=1 ""max_vqs"":1$", Line("VDUSE-BLK ro-blockdev"));
        Assert.Matches(@"^VDUSE-BLK ro-write rc=1 ", Line("VDUSE-BLK ro-write"));
        Assert.Equal("VDUSE-BLK ro-mount rc=0 ro", Line("VDUSE-BLK ro-mount"));
        Assert.Equal(data, Sha(Line("VDUSE-BLK ro-read"), "sha"));
        Assert.Matches(@"^VDUSE-BLK ro-touch rc=[1-9]", Line("VDUSE-BLK ro-touch"));
        Line("VDUSE-BLK ro-image unchanged=yes");
        // serve --vduse --class blk --backend mem:16M: the single-device form carries a raw write and read
        var serve = Line("VDUSE-BLK serve-blockdev");
        Assert.Matches(@"^VDUSE-BLK serve-blockdev vd[a-z]+ sectors=32768 hwqueues=2 ", serve);
        Assert.Equal(Sha(serve, "written"), Sha(serve, "read"));
        Line("VDUSE-BLK serve-exit rc=0");
        Line("VDUSE-BLK oops=0");
        Line("VDUSE-BLK daemon-exit rc=0");
        Assert.Contains("device id 2, 2 queues", log, StringComparison.Ordinal);
        Assert.Contains("device id 2, 1 queues", log, StringComparison.Ordinal);
        Line("VDUSE-GUEST-DONE ok");
    }
}
