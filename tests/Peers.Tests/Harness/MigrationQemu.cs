using System.Globalization;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>
/// One QEMU (TCG) of a live-migration rig: the test guest (guest_mode=migrate) on a vhost-user back-end,
/// a QMP socket, and for a destination `-incoming unix:PATH`. Source and destination get identical
/// machine arguments (migration needs the same device model and RAM layout on both sides). Guest RAM
/// is a shared memfd (the back-end maps it and, during migration, marks what it writes in the dirty log);
/// `vectors=0` avoids QEMU 7.2's TCG crash with vhost-user and MSI-X; `romfile=` skips the iPXE ROM.
/// </summary>
public sealed class MigrationQemu : IDisposable
{
    /// <summary>
    /// KiB of guest RAM beyond the whole MiB asked for. QEMU 7.2 under TCG loses guest stores during a migration
    /// when the RAM block is a multiple of 256 KiB: its dirty-bitmap sync then takes a fast path that clears the
    /// bits without re-arming the TCG TLB's dirty tracking, so stores through cached TLB entries are never marked
    /// and the destination gets stale pages (seen here as the destination guest's "output.0:id N is not a head!",
    /// slab corruption and panics, on DPDK's vhost PMD and this project's back-ends alike; fixed upstream in QEMU
    /// 9.0 by "physmem: Fix migration dirty bitmap coherency with TCG memory access", not in Debian 12's 7.2).
    /// A RAM size that is not such a multiple takes QEMU's per-page path, which re-arms the TLB.
    /// </summary>
    public const int RamTailKb = 128;

    private readonly PeerProcess _process;

    public string Name { get; }

    public IMigrationBackend Backend { get; }

    /// <summary>Where a destination listens for the migration stream (null for a source).</summary>
    public string? IncomingPath { get; }

    public QmpClient Qmp { get; }

    public PeerProcess Process => _process;

    public MigrationQemu(string name, string runDir, IMigrationBackend backend, string kernelArgs, int queues, int memoryMb, bool incoming, TimeSpan lifetime)
    {
        PeerEnvironment.Require(PeerEnvironment.Qemu, PeerEnvironment.Kernel, PeerEnvironment.Initrd);
        Name = name;
        Backend = backend;
        string qmp = Path.Combine(runDir, name + ".qmp");
        IncomingPath = incoming ? Path.Combine(runDir, name + ".mig") : null;
        string q = queues.ToString(CultureInfo.InvariantCulture);
        string mem = ((memoryMb * 1024) + RamTailKb).ToString(CultureInfo.InvariantCulture) + "K";
        string[] args =
        [
            "-machine", "q35", "-m", mem, "-smp", Math.Max(1, queues).ToString(CultureInfo.InvariantCulture),
            "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
            "-kernel", PeerEnvironment.Kernel, "-initrd", PeerEnvironment.Initrd, "-append", kernelArgs,
            "-object", $"memory-backend-memfd,id=mem,size={mem},share=on", "-numa", "node,memdev=mem",
            "-chardev", $"socket,id=c0,path={backend.SocketPath}",
            "-netdev", queues > 1 ? $"vhost-user,id=n0,chardev=c0,queues={q}" : "vhost-user,id=n0,chardev=c0",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,vectors=0,romfile=" + (queues > 1 ? ",mq=on" : ""),
            "-qmp", $"unix:{qmp},server=on,wait=off",
            .. incoming ? (string[])["-incoming", "unix:" + IncomingPath] : [],
        ];
        _process = new PeerProcess("qemu-" + name, PeerEnvironment.Qemu, args, lifetime);
        try
        {
            Qmp = QmpClient.Connect(qmp, TimeSpan.FromSeconds(30), () => _process.HasExited);
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or InvalidOperationException)
        {
            string d = _process.Describe();
            _process.Dispose();
            throw new InvalidOperationException($"QEMU {name}: no QMP on {qmp}: {e.Message}\n{d}", e);
        }
    }

    public bool HasExited => _process.HasExited;

    /// <summary>The guest's serial console lines matching <paramref name="pattern"/> so far.</summary>
    public IEnumerable<Match> Console(Regex pattern) => pattern.Matches(_process.Transcript);

    /// <summary>`quit` over QMP and wait for the process; killed if it does not exit in time.</summary>
    public void Quit()
    {
        if (_process.HasExited)
        {
            return;
        }
        try
        {
            Qmp.Quit();
        }
        catch (Exception e) when (e is IOException or QmpException or System.Net.Sockets.SocketException)
        {
            // gone already: the wait below settles it
        }
        _process.WaitForExit(TimeSpan.FromSeconds(15));
    }

    public string Describe() => _process.Describe();

    public void Dispose()
    {
        Qmp.Dispose();
        _process.Dispose();
    }
}
