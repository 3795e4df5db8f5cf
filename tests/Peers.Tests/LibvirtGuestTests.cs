using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// A real libvirt daemon starts the guest: `virsh create` of a domain whose NIC is
/// `&lt;interface type='vhostuser'&gt;` on a socket of the project's daemon. The daemon holds two software
/// VFs wired back to back (`sim add count 2 backend pair`): one is served over vhost-user to the libvirt
/// guest, the other is the host's NIC in a namespace the test creates (`dev attach ... virtio tap`). The
/// namespace pings the guest, the guest pings the namespace (link-local addresses), then `virsh destroy`
/// and a fresh `virsh create` reconnect cleanly and ping again.
/// </summary>
public class LibvirtGuestTests(ITestOutputHelper output)
{
    private const string HostIp = "169.254.31.1";
    private const string GuestIp = "169.254.31.2";

    /// <summary>
    /// libvirt's `mode='server'`: QEMU (as libvirt's QEMU user) creates the socket and the daemon connects to
    /// it (`vhost add ... client`, reconnecting). libvirt's `mode='client'`: the daemon's server socket, opened
    /// to QEMU's group (`vhost add ... group kvm mode 0660`; a root-only 0600 socket is refused to QEMU).
    /// "serve": libvirt's `mode='client'` on `ifcvf serve --group kvm --mode 0660` (one software VF whose wire
    /// is a TAP in the namespace) instead of the daemon.
    /// </summary>
    [Theory]
    [InlineData("server")]
    [InlineData("client")]
    [InlineData("serve")]
    public void LibvirtGuestPingsAndReconnectsAfterDestroyAndCreate(string libvirtMode)
    {
        bool serve = libvirtMode == "serve";
        PeerEnvironment.Require(PeerEnvironment.Ifcvf, PeerEnvironment.Busybox);
        using var libvirt = new LibvirtDaemon();
        string dir = PeerEnvironment.NewRunDir();
        // QEMU runs as libvirt-qemu: it creates the socket and writes the console log in this directory.
        PeerEnvironment.RunChecked("chmod", "1777", dir);
        string control = Path.Combine(dir, "ctl.sock");
        string socket = Path.Combine(dir, "vm.sock");
        string tap = PeerEnvironment.Unique("ifcl");
        string name = PeerEnvironment.Unique("ifcvf-lv");
        using var daemon = serve
            ? new PeerProcess("serve", PeerEnvironment.Ifcvf, ["serve", "--socket", socket, "--backend", "tap:" + tap, "--group", "kvm", "--mode", "0660"], TimeSpan.FromMinutes(10))
            : new PeerProcess("daemon", PeerEnvironment.Ifcvf, ["--control", control, "daemon"], TimeSpan.FromMinutes(10));
        NetNamespace? ns = null;
        LibvirtDomain? vm = null;
        try
        {
            string listening = serve ? socket : control;
            Assert.True(PeerEnvironment.Eventually(() => File.Exists(listening) || daemon.HasExited, TimeSpan.FromSeconds(240)) && !daemon.HasExited,
                $"{(serve ? "serve" : "daemon")} did not start\n" + daemon.Describe());
            if (serve)
            {
                var (_, stat) = PeerEnvironment.Run("stat", ["-c", "%a %G", socket]);
                Assert.Equal("660 kvm", stat.Trim()); // QEMU runs as libvirt-qemu, in group kvm
            }
            else
            {
                Setup(control, libvirtMode, socket, tap);
            }
            ns = new NetNamespace();
            ns.Adopt(tap, HostIp + "/16");

            for (int round = 1; round <= 2; round++)
            {
                // Round 1 pings long enough to be destroyed mid-way; round 2 finishes and powers off.
                var o = new GuestOptions { Ip = GuestIp + "/16", Peer = HostIp, Mode = "ping", Count = round == 1 ? 200 : 5, TimeoutSeconds = 240 };
                vm = LibvirtDomain.Create(dir, name, o, socket, serve ? "client" : libvirtMode, Path.Combine(dir, $"console-{round}.log"));
                var ready = vm.WaitFor(@"GUEST-READY [^\r\n]*", TimeSpan.FromSeconds(180));
                output.WriteLine($"round {round}: {ready.Value}");
                var (pcode, pout) = ns.Exec(TimeSpan.FromSeconds(60), PeerEnvironment.Busybox, "ping", "-c", "3", "-W", "5", GuestIp);
                output.WriteLine(pout.Trim());
                Assert.True(pcode == 0 && pout.Contains("3 packets received", StringComparison.Ordinal),
                    $"round {round}: namespace -> libvirt guest ping failed ({pcode}): {pout}\n{vm.Tail()}\n{daemon.Describe()}");
                if (round == 1)
                {
                    vm.Destroy();
                    Assert.True(PeerEnvironment.Eventually(() => !vm.Running(), TimeSpan.FromSeconds(60)), "virsh destroy did not stop the domain");
                }
                else
                {
                    var ping = vm.WaitFor(@"GUEST-RESULT ping (\w+) (\d+)/(\d+)", TimeSpan.FromSeconds(120));
                    output.WriteLine(ping.Value);
                    Assert.True(ping.Groups[1].Value == "ok", $"libvirt guest -> namespace ping: {ping.Value}\n{daemon.Describe()}");
                }
            }
            if (!serve)
            {
                output.WriteLine(Cli(control, "dev", "show", "vm0"));
            }
            // Two front-ends were served (one per virsh create), each reconnected by the daemon.
            Assert.True(daemon.Transcript.Contains("front-end #2 connected", StringComparison.Ordinal), daemon.Describe());
        }
        finally
        {
            vm?.Dispose();
            ns?.Dispose();
            if (!daemon.HasExited)
            {
                daemon.Signal("TERM", TimeSpan.FromSeconds(10));
            }
            output.WriteLine(libvirt.Describe());
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The daemon's side: two VFs back to back, one served to the guest, the other the namespace's TAP.</summary>
    private static void Setup(string control, string libvirtMode, string socket, string tap)
    {
        Cli(control, "sim", "add", "count", "2", "backend", "pair");
        Cli(control, "dev", "add", "name", "vm0", "mgmtdev", "sim/ifcvf0");
        Cli(control, "dev", "add", "name", "host0", "mgmtdev", "sim/ifcvf1");
        Cli(control, "dev", "attach", "host0", "virtio", "tap", tap);
        if (libvirtMode == "server")
        {
            Cli(control, "vhost", "add", "vm0", "socket", socket, "client");
        }
        else
        {
            Cli(control, "vhost", "add", "vm0", "socket", socket, "group", "kvm", "mode", "0660"); // Debian: libvirt-qemu's group
        }
    }

    private static string Cli(string control, params string[] args)
    {
        var (code, text) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["--control", control, .. args], TimeSpan.FromSeconds(240));
        Assert.True(code == 0, $"ifcvf {string.Join(' ', args)} failed ({code}): {text}");
        return text;
    }
}
