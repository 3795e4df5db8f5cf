using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// Both consumers of the seed at once, through the real daemon: two software VFs wired back to back
/// (`sim add count 2 backend pair`); one is the host's own NIC (`dev attach vb virtio tap T`, the TAP in a
/// namespace the test creates), the other is served over vhost-user (`vhost add va socket S`) to a QEMU
/// guest running the kernel's virtio-net driver. The namespace pings the guest and the guest pings back.
/// </summary>
public class VirtioConsumerGuestTests(ITestOutputHelper output)
{
    private const string HostIp = "169.254.30.1";
    private const string GuestIp = "169.254.30.2";

    [Fact]
    public void NamespaceOnVirtioConsumerAndGuestOnVhostUserPingEachOther()
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf);
        string dir = PeerEnvironment.NewRunDir();
        string control = Path.Combine(dir, "ctl.sock");
        string socket = Path.Combine(dir, "vhost.sock");
        string tap = PeerEnvironment.Unique("ifcv");
        using var daemon = new PeerProcess("daemon", PeerEnvironment.Ifcvf, ["--control", control, "daemon"], TimeSpan.FromMinutes(5));
        NetNamespace? ns = null;
        QemuGuest? guest = null;
        try
        {
            Assert.True(PeerEnvironment.Eventually(() => File.Exists(control) || daemon.HasExited, TimeSpan.FromSeconds(240)) && !daemon.HasExited,
                "daemon did not start\n" + daemon.Describe());
            Cli(control, "sim", "add", "count", "2", "backend", "pair");
            Cli(control, "dev", "add", "name", "va", "mgmtdev", "sim/ifcvf0");
            Cli(control, "dev", "add", "name", "vb", "mgmtdev", "sim/ifcvf1");
            Cli(control, "dev", "attach", "vb", "virtio", "tap", tap);
            Cli(control, "vhost", "add", "va", "socket", socket);
            // A second consumer on the same device is refused.
            var (code, again) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["--control", control, "vhost", "add", "vb", "socket", socket + "2"]);
            Assert.True(code != 0 && again.Contains("already attached to a virtio consumer", StringComparison.Ordinal), again);
            string show = Cli(control, "dev", "show");
            output.WriteLine(show);
            Assert.Contains("consumer virtio tap " + tap, show, StringComparison.Ordinal);
            Assert.Contains("consumer vhost socket " + socket, show, StringComparison.Ordinal);

            ns = new NetNamespace();
            ns.Adopt(tap, HostIp + "/16");
            guest = QemuGuest.OnVhostUser(socket, new GuestOptions { Ip = GuestIp + "/16", Peer = HostIp, Mode = "ping", Count = 8 });
            var ready = guest.WaitFor(@"GUEST-READY [^\r\n]*(?=\r?\n)", TimeSpan.FromSeconds(120));
            output.WriteLine(ready.Value);

            // namespace -> guest, while the guest is up pinging us
            var (pcode, pout) = ns.Exec(TimeSpan.FromSeconds(40), PeerEnvironment.Busybox, "ping", "-c", "3", "-W", "3", GuestIp);
            output.WriteLine(pout.Trim());
            Assert.True(pcode == 0 && pout.Contains("3 packets received", StringComparison.Ordinal),
                $"namespace -> guest ping failed ({pcode}): {pout}\n{guest.Describe()}\n{daemon.Describe()}");

            // guest -> namespace
            var ping = guest.WaitFor(@"GUEST-RESULT ping (\w+) (\d+)/(\d+)", TimeSpan.FromSeconds(90));
            output.WriteLine(ping.Value);
            Assert.True(ping.Groups[1].Value == "ok", $"guest -> namespace ping: {ping.Value}\n{daemon.Describe()}");

            string stats = Cli(control, "-j", "dev", "vstats", "show", "vb", "qidx", "0");
            output.WriteLine(stats);
        }
        finally
        {
            guest?.Dispose();
            ns?.Dispose();
            if (!daemon.HasExited)
            {
                daemon.Signal("TERM", TimeSpan.FromSeconds(10));
            }
        }
        Assert.False(File.Exists(control), "daemon left its control socket behind");
        Assert.False(File.Exists(socket), "daemon left the vhost-user socket behind");
    }

    private static string Cli(string control, params string[] args)
    {
        var (code, text) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["--control", control, .. args], TimeSpan.FromSeconds(240));
        Assert.True(code == 0, $"ifcvf {string.Join(' ', args)} failed ({code}): {text}");
        return text;
    }
}
