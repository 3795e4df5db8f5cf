using System.Globalization;
using System.Net.Sockets;
using System.Security;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>
/// A running libvirt daemon (Debian's libvirt-daemon-system) reached through `virsh -c qemu:///system`.
/// When none answers on /run/libvirt/libvirt-sock, virtlogd and libvirtd are started in the foreground as
/// children of the test (this machine has no systemd to start them) and stopped on dispose; a libvirtd
/// that was already running is used and left alone.
/// </summary>
public sealed class LibvirtDaemon : IDisposable
{
    public const string Libvirtd = "/usr/sbin/libvirtd";
    public const string Virtlogd = "/usr/sbin/virtlogd";
    public const string Virsh = "/usr/bin/virsh";
    private const string Socket = "/run/libvirt/libvirt-sock";

    private readonly PeerProcess? _virtlogd;
    private readonly PeerProcess? _libvirtd;

    public LibvirtDaemon()
    {
        PeerEnvironment.Require(Libvirtd, Virtlogd, Virsh, PeerEnvironment.Qemu);
        if (Answers())
        {
            return;
        }
        if (!Live("/run/libvirt/virtlogd-sock"))
        {
            _virtlogd = new PeerProcess("virtlogd", Virtlogd, [], TimeSpan.FromMinutes(30));
        }
        _libvirtd = new PeerProcess("libvirtd", Libvirtd, [], TimeSpan.FromMinutes(30));
        if (!PeerEnvironment.Eventually(() => Answers() || _libvirtd.HasExited, TimeSpan.FromSeconds(60)) || _libvirtd.HasExited)
        {
            string d = Describe();
            Dispose();
            throw new InvalidOperationException("libvirtd did not come up\n" + d);
        }
    }

    private static bool Live(string path)
    {
        if (!File.Exists(path))
        {
            return false;
        }
        using var s = new System.Net.Sockets.Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private static bool Answers() => Live(Socket) && PeerEnvironment.Run(Virsh, ["-c", "qemu:///system", "version"], TimeSpan.FromSeconds(20)).Code == 0;

    /// <summary>Runs virsh; throws with its output when it fails.</summary>
    public static string VirshChecked(params string[] args)
    {
        var (code, text) = PeerEnvironment.Run(Virsh, ["-c", "qemu:///system", .. args], TimeSpan.FromSeconds(120));
        if (code != 0)
        {
            throw new InvalidOperationException($"virsh {string.Join(' ', args)} failed ({code}): {text}");
        }
        return text;
    }

    public string Describe() => $"{_virtlogd?.Describe() ?? "virtlogd: not started by the test"}\n{_libvirtd?.Describe() ?? "libvirtd: not started by the test"}";

    public void Dispose()
    {
        foreach (var p in new[] { _libvirtd, _virtlogd })
        {
            if (p is { HasExited: false })
            {
                p.Signal("TERM", TimeSpan.FromSeconds(15));
            }
            p?.Dispose();
        }
    }
}

/// <summary>
/// A transient libvirt domain (`virsh create`): the test guest (kernel + initramfs, TCG) whose NIC is
/// `&lt;interface type='vhostuser'&gt;` on a Unix socket, with shared memfd memory (vhost-user needs the
/// back-end to map guest RAM) and QEMU 7.2's TCG MSI-X crash avoided by `vectors=0` through a
/// `&lt;qemu:override&gt;`. The serial console goes to a file the test reads for the guest's result lines.
/// </summary>
public sealed class LibvirtDomain : IDisposable
{
    private bool _destroyed;

    private LibvirtDomain(string name, string xmlPath, string consoleLog)
    {
        Name = name;
        XmlPath = xmlPath;
        ConsoleLog = consoleLog;
    }

    public string Name { get; }

    public string XmlPath { get; }

    public string ConsoleLog { get; }

    /// <summary>The domain XML (also in docs/libvirt.md).</summary>
    public static string Xml(string name, string kernel, string initrd, GuestOptions o, string socket, string socketMode, string consoleLog) =>
        string.Create(CultureInfo.InvariantCulture, $"""
            <domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
              <name>{name}</name>
              <memory unit='MiB'>256</memory>
              <vcpu>1</vcpu>
              <os>
                <type arch='x86_64' machine='q35'>hvm</type>
                <kernel>{kernel}</kernel>
                <initrd>{initrd}</initrd>
                <cmdline>{SecurityElement.Escape(o.KernelArgs())}</cmdline>
              </os>
              <memoryBacking>
                <source type='memfd'/>
                <access mode='shared'/>
              </memoryBacking>
              <on_poweroff>destroy</on_poweroff>
              <on_reboot>destroy</on_reboot>
              <on_crash>destroy</on_crash>
              <devices>
                <emulator>{PeerEnvironment.Qemu}</emulator>
                <interface type='vhostuser'>
                  <mac address='{o.Mac}'/>
                  <source type='unix' path='{socket}' mode='{socketMode}'/>
                  <model type='virtio'/>
                </interface>
                <serial type='file'>
                  <source path='{consoleLog}'/>
                  <target port='0'/>
                </serial>
                <memballoon model='none'/>
              </devices>
              <qemu:override>
                <qemu:device alias='net0'>
                  <qemu:frontend>
                    <qemu:property name='vectors' type='unsigned' value='0'/>
                  </qemu:frontend>
                </qemu:device>
              </qemu:override>
            </domain>
            """);

    /// <summary>`virsh create` of the test guest.</summary>
    public static LibvirtDomain Create(string dir, string name, GuestOptions o, string socket, string socketMode, string consoleLog)
    {
        PeerEnvironment.Require(PeerEnvironment.Kernel, PeerEnvironment.Initrd);
        // Copies readable by libvirt's QEMU user, outside the repository tree (whose parents it may not search).
        string kernel = Path.Combine(dir, "vmlinuz");
        string initrd = Path.Combine(dir, "initrd.gz");
        if (!File.Exists(kernel))
        {
            File.Copy(PeerEnvironment.Kernel, kernel);
            File.Copy(PeerEnvironment.Initrd, initrd);
        }
        string xml = Path.Combine(dir, name + ".xml");
        File.WriteAllText(xml, Xml(name, kernel, initrd, o, socket, socketMode, consoleLog));
        LibvirtDaemon.VirshChecked("create", xml);
        return new LibvirtDomain(name, xml, consoleLog);
    }

    /// <summary>Waits for a line of the guest's console matching <paramref name="pattern"/>.</summary>
    public Match WaitFor(string pattern, TimeSpan timeout)
    {
        var re = new Regex(pattern, RegexOptions.Multiline | RegexOptions.CultureInvariant);
        Match? m = null;
        if (PeerEnvironment.Eventually(() => File.Exists(ConsoleLog) && (m = re.Match(Read())).Success, timeout))
        {
            return m!;
        }
        throw new TimeoutException($"guest {Name}: no /{pattern}/ within {timeout.TotalSeconds} s; console:\n{Tail()}");
    }

    private string Read()
    {
        using var f = new FileStream(ConsoleLog, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var r = new StreamReader(f);
        return r.ReadToEnd();
    }

    public string Tail() => File.Exists(ConsoleLog) ? Read()[^Math.Min(4000, Read().Length)..] : "(no console log)";

    /// <summary>`virsh destroy` (a transient domain is gone afterwards).</summary>
    public void Destroy()
    {
        if (!_destroyed)
        {
            _destroyed = true;
            PeerEnvironment.Run(LibvirtDaemon.Virsh, ["-c", "qemu:///system", "destroy", Name], TimeSpan.FromSeconds(60));
        }
    }

    /// <summary>Whether libvirt still lists the domain as running.</summary>
    public bool Running() =>
        PeerEnvironment.Run(LibvirtDaemon.Virsh, ["-c", "qemu:///system", "domstate", Name], TimeSpan.FromSeconds(30)) is (0, var s) &&
        s.Contains("running", StringComparison.Ordinal);

    public void Dispose() => Destroy();
}
