using System.Globalization;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>
/// One vhost-user back-end of a live-migration rig: it serves <see cref="SocketPath"/> (server mode) and
/// forwards the guest's frames to and from TAP <see cref="TapName"/>, which lives in the rig's namespace.
/// </summary>
public interface IMigrationBackend : IDisposable
{
    /// <summary>"dpdk" or "serve" (for reports).</summary>
    string Kind { get; }

    string SocketPath { get; }

    string TapName { get; }

    /// <summary>The process that maps guest memory and runs the datapath (for the "clean afterwards" checks).</summary>
    int Pid { get; }

    bool HasExited { get; }

    /// <summary>SIGKILL (the "destination back-end killed during migration" case).</summary>
    void Kill();

    string Describe();
}

/// <summary>The back-ends a migration rig can run on.</summary>
public static class MigrationBackends
{
    /// <summary>
    /// Starts the back-end of <paramref name="kind"/>: "dpdk" (DPDK's vhost PMD + net_tap in testpmd, the
    /// reference) or "serve" (`ifcvf serve --backend tap:NAME`), inside <paramref name="netns"/>.
    /// <paramref name="cpu"/> is the CPU a busy-polling back-end's forwarding lcore is pinned to.
    /// </summary>
    public static IMigrationBackend Start(string kind, string netns, string socket, string tap, int queues, int cpu, TimeSpan lifetime) =>
        kind switch
        {
            "dpdk" => new DpdkVhostTapBackend(netns, socket, tap, queues, cpu, lifetime),
            "serve" => new ServeTapBackend(netns, socket, tap, queues, lifetime),
            _ => throw new InvalidOperationException($"migration back-end {kind}: expected dpdk or serve"),
        };

    /// <summary>Threads of process <paramref name="pid"/> (/proc/PID/task).</summary>
    public static int Threads(int pid) => Directory.GetDirectories($"/proc/{pid}/task").Length;

    /// <summary>
    /// Mappings of QEMU's guest RAM in process <paramref name="pid"/>: QEMU names the memfd of a
    /// memory-backend-memfd object "memory-backend-memfd" and a back-end maps it from the fd it was sent.
    /// </summary>
    public static int GuestMemoryMaps(int pid) =>
        File.ReadLines($"/proc/{pid}/maps").Count(l => l.Contains("memfd:memory-backend-memfd", StringComparison.Ordinal));

    /// <summary>The only child of <paramref name="pid"/> (e.g. testpmd under `timeout`), or null when there is none yet.</summary>
    public static int? OnlyChild(int pid)
    {
        try
        {
            var kids = File.ReadAllText($"/proc/{pid}/task/{pid}/children").Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return kids.Length == 1 ? int.Parse(kids[0], CultureInfo.InvariantCulture) : null;
        }
        catch (IOException)
        {
            return null;
        }
    }
}

/// <summary>
/// DPDK's vhost PMD in testpmd, io-forwarding between net_vhost0 (the guest) and net_tap0 (a TAP born in
/// the namespace): the reference back-end. It supports live migration (VHOST_F_LOG_ALL, LOG_SHMFD) and
/// announces the guest after it (VHOST_USER_SEND_RARP).
/// </summary>
public sealed class DpdkVhostTapBackend : IMigrationBackend
{
    private readonly TestPmd _pmd;

    public string Kind => "dpdk";

    public string SocketPath { get; }

    public string TapName { get; }

    public int Pid { get; }

    public bool HasExited => _pmd.Process.HasExited;

    public DpdkVhostTapBackend(string netns, string socket, string tap, int queues, int cpu, TimeSpan lifetime)
    {
        SocketPath = socket;
        TapName = tap;
        // main lcore and forwarding lcore on one CPU: the two back-ends of a rig poll on different CPUs
        string c = cpu.ToString(CultureInfo.InvariantCulture);
        _pmd = TestPmd.StartVhostTapBackend(socket, tap, queues, netns, lifetime, $"0@{c},1@{c}");
        try
        {
            _pmd.WaitReady();
            _pmd.StartForwarding(txFirst: false);
            int? child = null;
            if (!PeerEnvironment.Eventually(() => (child = MigrationBackends.OnlyChild(_pmd.Process.Pid)) is not null, TimeSpan.FromSeconds(5)) ||
                !PeerEnvironment.Eventually(() => File.Exists(socket), TimeSpan.FromSeconds(10)))
            {
                throw new InvalidOperationException($"the vhost PMD did not come up on {socket}\n{_pmd.Describe()}");
            }
            Pid = child!.Value;
        }
        catch
        {
            _pmd.Dispose();
            throw;
        }
    }

    public void Kill() => _pmd.Process.KillTree();

    public string Describe() => _pmd.Describe();

    public void Dispose()
    {
        _pmd.Quit();
        _pmd.Dispose();
    }
}

/// <summary>
/// `ifcvf serve --backend tap:NAME` run inside the namespace (its TAP is born there). Until the back-end
/// offers the dirty log (VHOST_F_LOG_ALL, LOG_SHMFD), QEMU refuses to migrate a guest on it: the rig
/// reports QEMU's error.
/// </summary>
public sealed class ServeTapBackend : IMigrationBackend
{
    private readonly PeerProcess _process;

    public string Kind => "serve";

    public string SocketPath { get; }

    public string TapName { get; }

    /// <summary>`ip netns exec` and the ./ifcvf launcher both exec: the PID ends up serve's own.</summary>
    public int Pid => _process.Pid;

    public bool HasExited => _process.HasExited;

    public ServeTapBackend(string netns, string socket, string tap, int queues, TimeSpan lifetime)
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf);
        SocketPath = socket;
        TapName = tap;
        _process = new PeerProcess("ifcvf-serve", "ip",
            ["netns", "exec", netns, PeerEnvironment.Ifcvf, "serve", "--socket", socket, "--backend", "tap:" + tap,
             "--queues", queues.ToString(CultureInfo.InvariantCulture)], lifetime);
        // the launcher may build the CLI first
        if (!PeerEnvironment.Eventually(() => File.Exists(socket) || _process.HasExited, TimeSpan.FromSeconds(240)) || _process.HasExited)
        {
            string d = _process.Describe();
            _process.Dispose();
            throw new InvalidOperationException($"ifcvf serve did not create {socket}\n{d}");
        }
    }

    public void Kill() => _process.KillTree();

    public string Describe() => _process.Describe();

    public void Dispose()
    {
        _process.Signal("INT", TimeSpan.FromSeconds(5));
        _process.Dispose();
        try
        {
            File.Delete(SocketPath);
        }
        catch (IOException)
        {
        }
    }
}
