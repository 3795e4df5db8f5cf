using System.Globalization;
using System.Security.Cryptography;
using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// QEMU with a Linux guest (the kernel's own virtio-net driver) on `ifcvf serve --backend tap:NAME`:
/// the TAP is moved into a network namespace the test creates; pings both ways between the namespace
/// and the guest, then a TCP transfer each way with SHA-256 compared at both ends. With two queue
/// pairs the guest runs on two CPUs (the driver gives each CPU its own TX queue) and both pairs
/// must carry traffic.
/// </summary>
public class QemuGuestTests(ITestOutputHelper output)
{
    private const string HostIp = "169.254.20.1";
    private const string GuestIp = "169.254.20.2";

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void PingBothWaysAndTcpTransfer(int queues)
    {
        bool reference = PeerEnvironment.BackendKind == "dpdk";
        string dir = PeerEnvironment.NewRunDir();
        string socket = Path.Combine(dir, "vhost.sock");
        string tap = PeerEnvironment.Unique("ifct");
        var o = new GuestOptions { Ip = GuestIp + "/16", Peer = HostIp, Mode = "tcp", Queues = queues, Bytes = 4 << 20 };
        ServeBackend? serve = null;
        NetNamespace? ns = null;
        PeerProcess? listener = null;
        QemuGuest? guest = null;
        try
        {
            ns = new NetNamespace();
            if (reference)
            {
                // the harness's own check: QEMU's built-in virtio-net back-end on a plain TAP
                PeerEnvironment.RunChecked("ip", ["tuntap", "add", tap, "mode", "tap", .. queues > 1 ? (string[])["multi_queue"] : []]);
            }
            else
            {
                serve = ServeBackend.Start(socket, "tap:" + tap, queues);
                Assert.True(PeerEnvironment.Eventually(() => PeerEnvironment.Run("ip", ["link", "show", tap]).Code == 0, TimeSpan.FromSeconds(10)),
                    $"serve did not create TAP {tap}\n{serve.Describe()}");
            }
            if (reference)
            {
                guest = QemuGuest.OnTap(tap, o);
                int qemu = guest.Process.Pid;
                Assert.True(PeerEnvironment.Eventually(() => HoldsTap(qemu, tap), TimeSpan.FromSeconds(30)),
                    $"QEMU did not attach to TAP {tap}\n{guest.Describe()}");
            }
            ns.Adopt(tap, HostIp + "/16");
            string fromGuest = Path.Combine(dir, "from-guest.bin");
            // stdin stays open (a pipe): busybox nc would otherwise close its sending half at once
            listener = ns.Start("nc-listen", TimeSpan.FromSeconds(240), "sh", "-c", $"exec {PeerEnvironment.Busybox} nc -l -p {o.Port} > {fromGuest}");
            guest ??= QemuGuest.OnVhostUser(socket, o);

            var ready = guest.WaitFor(@"GUEST-READY [^\r\n]*(?=\r?\n)", TimeSpan.FromSeconds(120)); // the whole line
            output.WriteLine(ready.Value);
            Assert.Contains(queues > 1 ? "rx-1" : "rx-0", ready.Value, StringComparison.Ordinal);

            // guest -> namespace ping (from every guest CPU)
            var ping = guest.WaitFor(@"GUEST-RESULT ping (\w+) (\d+)/(\d+)", TimeSpan.FromSeconds(90));
            output.WriteLine(ping.Value);
            Assert.True(ping.Groups[1].Value == "ok", $"guest -> namespace ping: {ping.Value}\n{Context(guest, serve, ns)}");

            // guest -> namespace TCP transfer
            var txStart = guest.WaitFor(@"GUEST-RESULT tx-start sha256=([0-9a-f]{64}) bytes=(\d+)", TimeSpan.FromSeconds(60));
            var txEnd = guest.WaitFor(@"GUEST-RESULT tx (done|fail[^\r\n]*)", TimeSpan.FromSeconds(120), txStart.Index);
            Assert.True(txEnd.Groups[1].Value == "done", $"guest -> namespace TCP: {txEnd.Value}\n{Context(guest, serve, ns)}");
            Assert.True(listener.WaitForExit(TimeSpan.FromSeconds(30)), "the namespace's nc did not finish\n" + listener.Describe());
            Assert.Equal(long.Parse(txStart.Groups[2].Value, CultureInfo.InvariantCulture), new FileInfo(fromGuest).Length);
            Assert.Equal(txStart.Groups[1].Value, Sha256(fromGuest));
            output.WriteLine($"guest -> namespace: {txStart.Groups[2].Value} bytes, sha256 {txStart.Groups[1].Value} at both ends");

            // namespace -> guest ping, while the guest waits for the second transfer
            guest.WaitFor(@"GUEST-LISTEN port=\d+", TimeSpan.FromSeconds(30));
            var (pcode, pout) = ns.Exec(TimeSpan.FromSeconds(30), PeerEnvironment.Busybox, "ping", "-c", "3", "-W", "3", GuestIp);
            output.WriteLine(pout.Trim());
            Assert.True(pcode == 0 && pout.Contains("3 packets received", StringComparison.Ordinal),
                $"namespace -> guest ping failed ({pcode}): {pout}\n{Context(guest, serve, ns)}");

            // namespace -> guest TCP transfer
            string toGuest = Path.Combine(dir, "to-guest.bin");
            File.WriteAllBytes(toGuest, RandomNumberGenerator.GetBytes(3 << 20));
            string sent = Sha256(toGuest);
            int code = -1;
            string nout = "";
            for (int attempt = 0; attempt < 5 && code != 0; attempt++)
            {
                (code, nout) = ns.Exec(TimeSpan.FromSeconds(120), "sh", "-c", $"{PeerEnvironment.Busybox} nc {GuestIp} {o.Port + 1} < {toGuest}");
                if (code != 0)
                {
                    Thread.Sleep(1000); // back-off between bounded retries (the guest's listener may be restarting), not a barrier
                }
            }
            Assert.True(code == 0, $"namespace -> guest nc failed ({code}): {nout}\n{Context(guest, serve, ns)}");
            var rx = guest.WaitFor(@"GUEST-RESULT rx sha256=([0-9a-f]{64}) bytes=(\d+)", TimeSpan.FromSeconds(120));
            Assert.Equal((3L << 20).ToString(CultureInfo.InvariantCulture), rx.Groups[2].Value);
            Assert.Equal(sent, rx.Groups[1].Value);
            output.WriteLine($"namespace -> guest: {rx.Groups[2].Value} bytes, sha256 {sent} at both ends");

            guest.WaitFor(@"GUEST-DONE ok", TimeSpan.FromSeconds(30));
            Assert.True(guest.Process.WaitForExit(TimeSpan.FromSeconds(30)), "QEMU did not power off");

            if (serve is not null)
            {
                var c = serve.Snapshots()[^1];
                output.WriteLine($"device counters: {c}");
                for (int q = 0; q < queues; q++)
                {
                    Assert.True(c.FromFrontEnd[q] > 0, $"queue pair {q}: the guest sent nothing on TX queue {q} ({c})");
                    Assert.True(c.ToFrontEnd[q] > 0, $"queue pair {q}: nothing was delivered on RX queue {q} ({c})");
                }
                // (packet counts depend on the offloads negotiated: the SHA-256 checks above prove the data)
            }
        }
        finally
        {
            guest?.Dispose();
            listener?.Dispose();
            serve?.Dispose();
            ns?.Dispose();
            if (reference)
            {
                PeerEnvironment.Run("ip", ["link", "del", tap]);
            }
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string Sha256(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    private static string Context(QemuGuest guest, ServeBackend? serve, NetNamespace ns) =>
        $"{guest.Describe()}\n{serve?.Describe()}\n--- namespace links:\n{ns.Links()}";

    /// <summary>True once process <paramref name="pid"/> has TAP <paramref name="tap"/> open (a tun fd's fdinfo names its interface).</summary>
    private static bool HoldsTap(int pid, string tap)
    {
        string dir = $"/proc/{pid}/fdinfo";
        if (!Directory.Exists(dir))
        {
            return false; // exited: the wait fails and its message shows QEMU's output
        }
        foreach (string f in Directory.EnumerateFiles(dir))
        {
            try
            {
                if (File.ReadAllText(f).Contains($"iff:\t{tap}\n", StringComparison.Ordinal))
                {
                    return true;
                }
            }
            catch (IOException)
            {
                // that descriptor was closed meanwhile
            }
        }
        return false;
    }
}
