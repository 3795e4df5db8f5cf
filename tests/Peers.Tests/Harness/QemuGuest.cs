using System.Globalization;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>What the test guest does (scripts/guest/init reads these from the kernel command line).</summary>
public sealed record GuestOptions
{
    public required string Ip { get; init; }

    public required string Peer { get; init; }

    /// <summary>ping or tcp (see scripts/guest/init).</summary>
    public string Mode { get; init; } = "ping";

    public int Count { get; init; } = 3;

    public int Port { get; init; } = 5001;

    public int Bytes { get; init; } = 4 << 20;

    /// <summary>Queue pairs of the virtio-net device; with 2 the guest gets 2 CPUs, one TX queue each.</summary>
    public int Queues { get; init; } = 1;

    public int TimeoutSeconds { get; init; } = 150;

    public string Mac { get; init; } = "52:54:00:12:34:56";

    public string KernelArgs() => string.Create(CultureInfo.InvariantCulture,
        $"console=ttyS0 panic=-1 quiet guest_ip={Ip} guest_peer={Peer} guest_mode={Mode} guest_count={Count} guest_port={Port} guest_bytes={Bytes} guest_timeout={TimeoutSeconds}");
}

/// <summary>
/// QEMU (TCG) booting the test kernel and initramfs, its virtio-net-pci device on a vhost-user socket
/// (or, for the harness's own check, on a plain TAP). `vectors=0` avoids QEMU 7.2's crash in
/// msix_set_vector_notifiers with vhost-user without KVM (legacy INTx interrupts instead).
/// </summary>
public sealed class QemuGuest : IDisposable
{
    private readonly PeerProcess _process;

    public PeerProcess Process => _process;

    private QemuGuest(GuestOptions o, string[] netdev, string deviceExtra)
        : this(o, [.. netdev, "-device", $"virtio-net-pci,netdev=n0,mac={o.Mac},vectors=0,romfile={deviceExtra}"])
    {
    }

    private QemuGuest(GuestOptions o, string[] devices)
    {
        PeerEnvironment.Require(PeerEnvironment.Qemu, PeerEnvironment.Kernel, PeerEnvironment.Initrd);
        int cpus = Math.Max(1, o.Queues);
        string[] args =
        [
            "-machine", "q35", "-m", "256", "-smp", cpus.ToString(CultureInfo.InvariantCulture),
            "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
            "-kernel", PeerEnvironment.Kernel, "-initrd", PeerEnvironment.Initrd, "-append", o.KernelArgs(),
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
            .. devices,
        ];
        _process = new PeerProcess("qemu", PeerEnvironment.Qemu, args, TimeSpan.FromSeconds(o.TimeoutSeconds + 30));
    }

    /// <summary>A guest whose NIC is a vhost-user device on <paramref name="socket"/> (QEMU is the client).</summary>
    public static QemuGuest OnVhostUser(string socket, GuestOptions o)
    {
        string q = o.Queues.ToString(CultureInfo.InvariantCulture);
        string[] netdev =
        [
            "-chardev", $"socket,id=c0,path={socket}",
            "-netdev", o.Queues > 1 ? $"vhost-user,id=n0,chardev=c0,queues={q}" : "vhost-user,id=n0,chardev=c0",
        ];
        return new QemuGuest(o, netdev, o.Queues > 1 ? ",mq=on" : "");
    }

    /// <summary>
    /// A guest whose only disk is a vhost-user-blk device on <paramref name="socket"/> with <paramref name="queues"/>
    /// request queues (and as many CPUs), no NIC; run with <c>Mode = "blk"</c> (scripts/guest/init).
    /// </summary>
    /// <remarks>With <paramref name="reconnect"/>, QEMU reconnects to the socket every second when the back-end goes away
    /// (<c>reconnect=1</c>), keeping the guest's disk.</remarks>
    public static QemuGuest OnVhostUserBlk(string socket, GuestOptions o, int queues, bool reconnect = false) =>
        new(o with { Queues = queues },
        [
            "-nic", "none", "-chardev", $"socket,id=c0,path={socket}{(reconnect ? ",reconnect=1" : "")}",
            "-device", string.Create(CultureInfo.InvariantCulture, $"vhost-user-blk-pci,chardev=c0,num-queues={queues},vectors=0"),
        ]);

    /// <summary>A guest on a plain TAP (QEMU's own virtio-net back-end): proves the guest image and the test script.</summary>
    public static QemuGuest OnTap(string tap, GuestOptions o) =>
        new(o, ["-netdev", string.Create(CultureInfo.InvariantCulture, $"tap,id=n0,ifname={tap},script=no,downscript=no,queues={o.Queues}")],
            o.Queues > 1 ? ",mq=on" : "");

    /// <summary>Waits for a `GUEST-...` line matching <paramref name="pattern"/> (a regex on the whole line).</summary>
    public Match WaitFor(string pattern, TimeSpan timeout, int from = 0) =>
        _process.WaitFor(new Regex(pattern, RegexOptions.Multiline | RegexOptions.CultureInvariant), timeout, from);

    public string Describe() => _process.Describe();

    public void Dispose() => _process.Dispose();
}
