using System.Globalization;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>
/// One vhost-user back-end of a live-migration rig: it serves <see cref="SocketPath"/> (server mode) and
/// forwards the guest's frames to and from TAP <see cref="TapName"/>, which lives in the rig's namespace.
/// </summary>
public interface IMigrationBackend : IDisposable
{
    /// <summary>"dpdk", "serve", "serve-relay" or "daemon" (for reports).</summary>
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
            "serve-relay" => new ServeTapBackend(netns, socket, tap, queues, lifetime, dirtyLog: false),
            "daemon" => new DaemonVhostTapBackend(netns, socket, tap, queues, lifetime),
            _ => throw new InvalidOperationException($"migration back-end {kind}: expected dpdk, serve, serve-relay or daemon"),
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
/// `ifcvf serve --backend tap:NAME` run inside the namespace (its TAP is born there). With
/// <c>dirtyLog: false</c> (`--no-dirty-log`) the software VF has no LM dirty log and the back-end migrates
/// the guest through its software relay.
/// </summary>
public sealed class ServeTapBackend : IMigrationBackend
{
    private readonly PeerProcess _process;

    public string Kind { get; }

    public string SocketPath { get; }

    public string TapName { get; }

    /// <summary>serve's log (stderr and stdout) so far.</summary>
    public string Log => _process.Transcript;

    /// <summary>`ip netns exec` and the ./ifcvf launcher both exec: the PID ends up serve's own.</summary>
    public int Pid => _process.Pid;

    public bool HasExited => _process.HasExited;

    public ServeTapBackend(string netns, string socket, string tap, int queues, TimeSpan lifetime, bool dirtyLog = true)
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf);
        Kind = dirtyLog ? "serve" : "serve-relay";
        SocketPath = socket;
        TapName = tap;
        string[] args = ["netns", "exec", netns, PeerEnvironment.Ifcvf, "serve", "--socket", socket, "--backend", "tap:" + tap,
             "--queues", queues.ToString(CultureInfo.InvariantCulture)];
        _process = new PeerProcess("ifcvf-serve", "ip", dirtyLog ? args : [.. args, "--no-dirty-log"], lifetime);
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

/// <summary>
/// The daemon as back-end: `ifcvf daemon` run inside the namespace, then `sim add backend tap:NAME`,
/// `dev add` and `vhost add` through its control socket (the "vhost" consumer of a software VF).
/// </summary>
public sealed class DaemonVhostTapBackend : IMigrationBackend
{
    private readonly PeerProcess _process;
    private readonly string _control;

    public string Kind => "daemon";

    /// <summary>The daemon's log (stderr and stdout) so far.</summary>
    public string Log => _process.Transcript;

    public string SocketPath { get; }

    public string TapName { get; }

    public int Pid => _process.Pid;

    public bool HasExited => _process.HasExited;

    public DaemonVhostTapBackend(string netns, string socket, string tap, int queues, TimeSpan lifetime)
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf);
        SocketPath = socket;
        TapName = tap;
        _control = socket + ".ctl";
        _process = new PeerProcess("ifcvf-daemon", "ip", ["netns", "exec", netns, PeerEnvironment.Ifcvf, "--control", _control, "daemon"], lifetime);
        try
        {
            if (!PeerEnvironment.Eventually(() => File.Exists(_control) || _process.HasExited, TimeSpan.FromSeconds(240)) || _process.HasExited)
            {
                throw new InvalidOperationException($"the daemon did not create {_control}\n{_process.Describe()}");
            }
            Cli("sim", "add", "backend", "tap:" + tap, "queues", queues.ToString(CultureInfo.InvariantCulture));
            Cli("dev", "add", "name", "vdpa0", "mgmtdev", "sim/ifcvf0");
            Cli("vhost", "add", "vdpa0", "socket", socket);
        }
        catch
        {
            _process.Dispose();
            throw;
        }
    }

    private string Cli(params string[] args)
    {
        var (code, output) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["--control", _control, .. args], TimeSpan.FromSeconds(30));
        if (code != 0)
        {
            throw new InvalidOperationException($"ifcvf {string.Join(' ', args)}: exit {code}: {output}\n{_process.Describe()}");
        }
        return output;
    }

    public void Kill() => _process.KillTree();

    public string Describe() => _process.Describe();

    public void Dispose()
    {
        _process.Signal("TERM", TimeSpan.FromSeconds(10));
        _process.Dispose();
    }
}
