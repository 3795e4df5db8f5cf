using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>How a <see cref="MigrationRig"/> is built.</summary>
public sealed record MigrationRigOptions
{
    /// <summary>"dpdk" (DPDK's vhost PMD + net_tap, the reference) or "serve" (`ifcvf serve --backend tap:NAME`).</summary>
    public string Backend { get; init; } = "dpdk";

    /// <summary>Queue pairs; with 2 the guest gets 2 CPUs (one TX queue each).</summary>
    public int Queues { get; init; } = 1;

    public int MemoryMb { get; init; } = 256;

    /// <summary>Bytes of each namespace -> guest transfer.</summary>
    public int TransferBytes { get; init; } = 8 << 20;

    /// <summary>How long the sender spreads one transfer over (paced in 64 KiB chunks), so that it spans a migration.</summary>
    public TimeSpan TransferSpread { get; init; } = TimeSpan.FromSeconds(4);

    /// <summary>
    /// False: the bridge does not learn on the back-ends' TAPs and floods frames for the guest to both, so a
    /// probe is delivered as soon as the destination runs (losses measure the downtime alone, not the
    /// relearning of the guest's MAC after the announcement).
    /// </summary>
    public bool BridgeLearning { get; init; } = true;

    /// <summary>Lifetime of every process of the rig (a deadline, not a pause).</summary>
    public TimeSpan Lifetime { get; init; } = TimeSpan.FromMinutes(8);
}

/// <summary>One migration as QEMU reported it, and how long the test waited for it.</summary>
public sealed record MigrationResult(string From, string To, MigrationInfo Info, TimeSpan Wall, string? Error)
{
    /// <summary>
    /// The guest's real outage: the source's STOP event to the destination's RESUME (QEMU's timestamps), which
    /// QEMU's downtime does not cover entirely (the destination's device start follows it); -1 when unknown.
    /// </summary>
    public long OutageMs { get; init; } = -1;

    public bool Completed => Info.Status == "completed" && Error is null;

    public override string ToString() => Error is not null
        ? $"{From} -> {To}: {Error}"
        : string.Create(CultureInfo.InvariantCulture,
            $"{From} -> {To}: {Info.Status}, total {Info.TotalTimeMs} ms, downtime {Info.DowntimeMs} ms (STOP to RESUME {OutageMs} ms), {Info.DirtySyncCount} RAM passes, setup {Info.SetupTimeMs} ms, {Info.RamTransferredBytes / 1024} KiB sent, wall {Wall.TotalMilliseconds:0} ms");
}

/// <summary>A namespace -> guest TCP transfer: the file, its SHA-256 computed on the host, the paced sender.</summary>
public sealed record Transfer(int Number, string File, string Sha256, long Bytes, PeerProcess Sender);

/// <summary>
/// The live-migration proof rig: a network namespace with a bridge (169.254.40.1/16) and two vhost-user
/// back-ends whose TAPs are born in the namespace and enslaved to the bridge; a source QEMU running the
/// test guest (169.254.40.2, guest_mode=migrate: it receives files on TCP port 5001 and prints their
/// SHA-256) and, per migration, a destination QEMU started with `-incoming unix:PATH` on the other
/// back-end. The namespace pings the guest every 200 ms (<see cref="PingMonitor"/>) and sends it files of
/// known content. Migrations ping-pong: after one, the old source QEMU quits (its back-end must then be
/// clean: no guest memory mapped, no threads beyond its idle ones) and the next destination starts on
/// that back-end. All traffic stays inside the namespace, its TAPs and the guest.
/// </summary>
public sealed class MigrationRig : IDisposable
{
    public const string HostIp = "169.254.40.1";
    public const string GuestIp = "169.254.40.2";
    public const int Port = 5001;
    private const string Bridge = "ifcvfbr0";

    private readonly MigrationRigOptions _o;
    private readonly Action<string> _log;
    private readonly List<MigrationQemu> _qemus = [];
    private readonly List<Transfer> _transfers = [];
    private readonly int[] _idleThreads = new int[2];
    private readonly string? _captureDir = Environment.GetEnvironmentVariable("IFCVF_MIGRATION_CAPTURE");
    private readonly PeerProcess? _capture;
    private int _vmCounter;

    public NetNamespace Namespace { get; }

    public string RunDir { get; }

    public IMigrationBackend[] Backends { get; } = new IMigrationBackend[2];

    /// <summary>The QEMU the guest runs in now.</summary>
    public MigrationQemu? Active { get; private set; }

    /// <summary>A destination waiting for the migration stream (prepared by <see cref="PrepareDestination"/>).</summary>
    public MigrationQemu? Standby { get; private set; }

    public PingMonitor? Pings { get; private set; }

    public MigrationRig(MigrationRigOptions o, Action<string> log)
    {
        _o = o;
        _log = log;
        RunDir = PeerEnvironment.NewRunDir();
        Namespace = new NetNamespace();
        try
        {
            string ns = Namespace.Name;
            PeerEnvironment.RunChecked("ip", "-n", ns, "link", "add", Bridge, "type", "bridge");
            PeerEnvironment.RunChecked("ip", "-n", ns, "addr", "add", HostIp + "/16", "dev", Bridge);
            PeerEnvironment.RunChecked("ip", "-n", ns, "link", "set", Bridge, "up");
            for (int i = 0; i < 2; i++)
            {
                string tap = PeerEnvironment.Unique("ifmt");
                // each busy-polling back-end on its own CPU
                Backends[i] = MigrationBackends.Start(o.Backend, ns, Path.Combine(RunDir, $"be{i}.sock"), tap, o.Queues, cpu: i, o.Lifetime);
                if (!PeerEnvironment.Eventually(() => PeerEnvironment.Run("ip", ["-n", ns, "link", "show", tap]).Code == 0, TimeSpan.FromSeconds(10)))
                {
                    throw new InvalidOperationException($"back-end {i} did not create TAP {tap} in {ns}\n{Backends[i].Describe()}");
                }
                PeerEnvironment.RunChecked("ip", "-n", ns, "link", "set", tap, "master", Bridge);
                PeerEnvironment.RunChecked("ip", "-n", ns, "link", "set", tap, "up");
                if (!o.BridgeLearning)
                {
                    PeerEnvironment.RunChecked("ip", "netns", "exec", ns, "bridge", "link", "set", "dev", tap, "learning", "off", "flood", "on");
                }
                _idleThreads[i] = MigrationBackends.Threads(Backends[i].Pid);
            }
            if (!string.IsNullOrEmpty(_captureDir))
            {
                // IFCVF_MIGRATION_CAPTURE=DIR (investigation): every ICMP/ARP/RARP frame on the bridge and its
                // ports with its time, written with the rig's transcripts into DIR when the rig is disposed
                Directory.CreateDirectory(_captureDir);
                _capture = Namespace.Start("tcpdump", o.Lifetime, "tcpdump", "-i", "any", "-n", "-l", "-tt", "-e", "icmp or arp or rarp");
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private string KernelArgs() => string.Create(CultureInfo.InvariantCulture,
        $"console=ttyS0 panic=-1 quiet guest_ip={GuestIp}/16 guest_peer={HostIp} guest_mode=migrate guest_count=3 guest_port={Port} guest_timeout={(int)_o.Lifetime.TotalSeconds}");

    private MigrationQemu NewQemu(IMigrationBackend backend, bool incoming)
    {
        var q = new MigrationQemu($"vm{++_vmCounter}", RunDir, backend, KernelArgs(), _o.Queues, _o.MemoryMb, incoming, _o.Lifetime);
        _qemus.Add(q);
        return q;
    }

    private IMigrationBackend FreeBackend() =>
        Backends.First(b => _qemus.All(q => q.HasExited || q.Backend != b));

    /// <summary>Boots the guest on back-end 0 and waits until it listens for the first transfer.</summary>
    public void BootSource()
    {
        Active = NewQemu(Backends[0], incoming: false);
        WaitForGuest(@"GUEST-LISTEN port=\d+ n=1\b", TimeSpan.FromSeconds(150));
        _log($"guest up in {Active.Name} on {Backends[0].Kind} back-end 0");
    }

    /// <summary>Waits for a guest console line in whichever QEMU prints it (the guest moves between them).</summary>
    public Match WaitForGuest(string pattern, TimeSpan timeout)
    {
        var re = new Regex(pattern, RegexOptions.Multiline | RegexOptions.CultureInvariant);
        Match? found = null;
        if (!PeerEnvironment.Eventually(() => (found = _qemus.SelectMany(q => q.Console(re)).FirstOrDefault()) is not null, timeout))
        {
            throw new TimeoutException($"the guest did not print /{pattern}/ within {timeout.TotalSeconds:0} s\n{Describe()}");
        }
        return found!;
    }

    /// <summary>Starts pinging the guest every 200 ms and waits for the first reply.</summary>
    public PingMonitor StartPings()
    {
        Pings = new PingMonitor(Namespace, GuestIp, _o.Lifetime);
        if (!Pings.WaitForRepliesAfter(0, 1, TimeSpan.FromSeconds(20)))
        {
            throw new TimeoutException($"the guest does not answer pings\n{Pings.Describe()}\n{Describe()}");
        }
        return Pings;
    }

    /// <summary>Starts a destination QEMU (`-incoming`) on the back-end no live QEMU uses.</summary>
    public MigrationQemu PrepareDestination()
    {
        Standby = NewQemu(FreeBackend(), incoming: true);
        var dst = Standby;
        if (!PeerEnvironment.Eventually(() => dst.Qmp.Status() == "inmigrate" && File.Exists(dst.IncomingPath), TimeSpan.FromSeconds(30)))
        {
            throw new TimeoutException($"destination {dst.Name} is not waiting for a migration\n{dst.Describe()}");
        }
        return dst;
    }

    /// <summary>
    /// Starts transfer number <paramref name="number"/> (the guest must be listening for it: GUEST-LISTEN n=N):
    /// a file of random content, its SHA-256 computed here, sent by busybox nc in 64 KiB chunks spread over
    /// the configured time.
    /// </summary>
    public Transfer StartTransfer(int number)
    {
        WaitForGuest($@"GUEST-LISTEN port=\d+ n={number}\b", TimeSpan.FromSeconds(60));
        string file = Path.Combine(RunDir, $"transfer{number}.bin");
        byte[] data = RandomNumberGenerator.GetBytes(_o.TransferBytes);
        File.WriteAllBytes(file, data);
        string sha = Convert.ToHexStringLower(SHA256.HashData(data));
        int chunks = (_o.TransferBytes + 65535) / 65536;
        long pauseUs = (long)(_o.TransferSpread.TotalMilliseconds * 1000 / chunks);
        string bb = PeerEnvironment.Busybox;
        string script = string.Create(CultureInfo.InvariantCulture,
            $"i=0; while [ $i -lt {chunks} ]; do dd if={file} bs=65536 skip=$i count=1 2>/dev/null; i=$((i + 1)); {bb} usleep {pauseUs}; done | {bb} nc {GuestIp} {Port}; rc=$?; echo sender: nc exit $rc at $(date +%T.%N) >&2; exit $rc");
        var sender = Namespace.Start($"sender{number}", _o.Lifetime, "sh", "-c", script);
        var t = new Transfer(number, file, sha, data.Length, sender);
        _transfers.Add(t);
        return t;
    }

    /// <summary>Waits for the sender to finish and the guest to print the received file's SHA-256 and size.</summary>
    public (string Sha256, long Bytes) WaitTransferLanded(Transfer t, TimeSpan timeout)
    {
        // a guest that broke (a kernel oops, a ring the driver finds corrupt) never takes the rest: say so at once
        Match? broken = null;
        PeerEnvironment.Eventually(() => t.Sender.HasExited || (broken = GuestBroken()) is not null, timeout);
        if (broken is not null && !t.Sender.HasExited)
        {
            throw new InvalidOperationException($"transfer {t.Number}: the guest broke while it was running: '{broken.Value.Trim()}'\n{t.Sender.Describe()}\n{Describe()}");
        }
        if (!t.Sender.WaitForExit(TimeSpan.FromSeconds(1)) || t.Sender.ExitCode != 0)
        {
            string how = t.Sender.HasExited ? $"exited with {t.Sender.ExitCode}" : $"still running after {timeout.TotalSeconds:0} s";
            string sockets = Namespace.Exec(TimeSpan.FromSeconds(10), "ss", "-tnoie").Output;
            throw new InvalidOperationException($"transfer {t.Number}: the sender {how} at {DateTime.UtcNow:HH:mm:ss.fff}\n{t.Sender.Describe()}\n--- namespace sockets:\n{sockets}\n--- pings:\n{Pings?.Describe()}\n{Describe()}");
        }
        var m = WaitForGuest($@"GUEST-RESULT rx n={t.Number} sha256=([0-9a-f]{{64}}) bytes=(\d+)", timeout);
        return (m.Groups[1].Value, long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture));
    }

    private static readonly Regex s_guestBroken = new(
        @"^.*(Kernel panic|general protection fault|BUG: |is not a head|soft lockup|Oops: ).*$",
        RegexOptions.Multiline | RegexOptions.CultureInvariant);

    /// <summary>The first console line of any of the rig's guests that shows its kernel broke, or null.</summary>
    public Match? GuestBroken() => _qemus.SelectMany(q => q.Console(s_guestBroken)).FirstOrDefault();

    /// <summary>
    /// Migrates the guest from <see cref="Active"/> to <see cref="Standby"/> over a Unix socket and polls
    /// `query-migrate` until it ends. On completion the destination must resume (`query-status` running)
    /// and becomes <see cref="Active"/>; the source is left in postmigrate for <see cref="RetireAndCheckClean"/>.
    /// A migration QEMU refuses (e.g. a back-end without the dirty log) comes back with its error.
    /// </summary>
    public MigrationResult Migrate(TimeSpan timeout, Action<MigrationInfo>? onProgress = null)
    {
        var src = Active ?? throw new InvalidOperationException("no source");
        var dst = Standby ?? throw new InvalidOperationException("no destination: PrepareDestination first");
        // the default 32 MiB/s cap only slows a local Unix-socket migration down
        src.Qmp.Execute("migrate-set-parameters", new Dictionary<string, object> { ["max-bandwidth"] = 4L << 30 });
        // IFCVF_MIGRATION_DOWNTIME_LIMIT=MS (bench/migration.sh DOWNTIME_LIMIT): the same explicit
        // downtime-limit for every back-end (QEMU's default is 300 ms)
        if (long.TryParse(Environment.GetEnvironmentVariable("IFCVF_MIGRATION_DOWNTIME_LIMIT"), out long limitMs) && limitMs > 0)
        {
            src.Qmp.Execute("migrate-set-parameters", new Dictionary<string, object> { ["downtime-limit"] = limitMs });
        }
        var sw = Stopwatch.StartNew();
        try
        {
            src.Qmp.Migrate("unix:" + dst.IncomingPath);
        }
        catch (QmpException e)
        {
            return new MigrationResult(src.Name, dst.Name, new MigrationInfo("refused", -1, -1, -1, -1, e.Description), sw.Elapsed, e.Description);
        }
        MigrationInfo info;
        MigrationInfo? lastActive = null;
        while (true)
        {
            info = src.Qmp.QueryMigrate();
            onProgress?.Invoke(info);
            if (info.Finished)
            {
                break;
            }
            if (info.Status == "active")
            {
                lastActive = info;
            }
            if (sw.Elapsed > timeout)
            {
                return new MigrationResult(src.Name, dst.Name, info, sw.Elapsed, $"not finished after {timeout.TotalSeconds:0} s ({info.Status})");
            }
            Thread.Sleep(50);
        }
        var wall = sw.Elapsed;
        if (info.Status != "completed")
        {
            return new MigrationResult(src.Name, dst.Name, info, wall, $"migration {info.Status}: {info.ErrorDesc}");
        }
        // the completed record has no remaining/expected-downtime: keep the last active poll's
        info = info with { RemainingBytes = lastActive?.RemainingBytes ?? -1, ExpectedDowntimeMs = lastActive?.ExpectedDowntimeMs ?? -1, DirtyPagesRate = lastActive?.DirtyPagesRate ?? -1 };
        string dstStatus = "";
        if (!PeerEnvironment.Eventually(() => (dstStatus = dst.Qmp.Status()) == "running", TimeSpan.FromSeconds(20)))
        {
            return new MigrationResult(src.Name, dst.Name, info, wall, $"destination did not resume: {dstStatus}");
        }
        Active = dst;
        Standby = null;
        var stopped = src.Qmp.LastEventAt("STOP");
        var resumed = dst.Qmp.LastEventAt("RESUME");
        long outage = stopped is { } s0 && resumed is { } r0 && r0 >= s0 ? (long)(r0 - s0).TotalMilliseconds : -1;
        _log(string.Create(CultureInfo.InvariantCulture, $"{src.Name} STOP at {stopped?.ToUnixTimeMilliseconds() / 1000.0:0.000}, {dst.Name} RESUME at {resumed?.ToUnixTimeMilliseconds() / 1000.0:0.000} (unix s)"));
        return new MigrationResult(src.Name, dst.Name, info, wall, null) { OutageMs = outage };
    }

    /// <summary>
    /// A migration to <see cref="Standby"/> that does not complete: QEMU's bandwidth is capped at
    /// <paramref name="bandwidth"/> bytes/s so it is still copying RAM when <paramref name="interrupt"/> runs
    /// (once <paramref name="afterBytes"/> have gone: `migrate_cancel`, or a back-end killed), then waits for
    /// QEMU to end it. The guest stays in <see cref="Active"/>; the destination is left for the caller to retire.
    /// </summary>
    public MigrationResult MigrateInterrupted(long bandwidth, long afterBytes, Action<MigrationQemu, MigrationQemu> interrupt, TimeSpan timeout)
    {
        var src = Active ?? throw new InvalidOperationException("no source");
        var dst = Standby ?? throw new InvalidOperationException("no destination: PrepareDestination first");
        src.Qmp.Execute("migrate-set-parameters", new Dictionary<string, object> { ["max-bandwidth"] = bandwidth });
        var sw = Stopwatch.StartNew();
        src.Qmp.Migrate("unix:" + dst.IncomingPath);
        MigrationInfo info;
        bool interrupted = false;
        while (true)
        {
            info = src.Qmp.QueryMigrate();
            if (info.Finished)
            {
                break;
            }
            if (!interrupted && info.Status == "active" && info.RamTransferredBytes >= afterBytes)
            {
                _log($"interrupting the migration at {info.RamTransferredBytes / 1024} KiB sent");
                interrupt(src, dst);
                interrupted = true;
            }
            if (sw.Elapsed > timeout)
            {
                return new MigrationResult(src.Name, dst.Name, info, sw.Elapsed, $"not finished after {timeout.TotalSeconds:0} s ({info.Status})");
            }
            Thread.Sleep(50);
        }
        src.Qmp.Execute("migrate-set-parameters", new Dictionary<string, object> { ["max-bandwidth"] = 4L << 30 });
        Standby = null;
        return new MigrationResult(src.Name, dst.Name, info, sw.Elapsed, interrupted ? null : "the migration ended before it could be interrupted");
    }

    /// <summary>
    /// Quits a QEMU the guest has left (postmigrate) or that was never used (a cancelled destination) and
    /// checks that its back-end is clean: no mapping of guest memory, no more threads than when idle.
    /// Returns an error message, or null when clean.
    /// </summary>
    public string? RetireAndCheckClean(MigrationQemu q)
    {
        q.Quit();
        var b = q.Backend;
        int idle = _idleThreads[Array.IndexOf(Backends, b)];
        int maps = -1, threads = -1;
        bool clean = PeerEnvironment.Eventually(() =>
            !b.HasExited && (maps = MigrationBackends.GuestMemoryMaps(b.Pid)) == 0 && (threads = MigrationBackends.Threads(b.Pid)) <= idle,
            TimeSpan.FromSeconds(15));
        return clean ? null : $"back-end {b.Kind} (pid {b.Pid}) after {q.Name} quit: {maps} guest memory mappings, {threads} threads (idle: {idle}), exited: {b.HasExited}";
    }

    /// <summary>Guest memory mappings in a back-end now (to show the clean check can see them).</summary>
    public static int MappedGuestMemory(IMigrationBackend b) => MigrationBackends.GuestMemoryMaps(b.Pid);

    public string Describe()
    {
        var parts = _qemus.Select(q => q.Describe())
            .Concat(Backends.Where(b => b is not null).Select(b => b.Describe()));
        return string.Join('\n', parts) + "\n--- namespace links:\n" + Namespace.Links();
    }

    /// <summary>IFCVF_MIGRATION_CAPTURE: the capture and every process's transcript into the directory.</summary>
    private void SaveCapture()
    {
        if (_capture is null || _captureDir is null)
        {
            return;
        }
        _capture.Signal("INT", TimeSpan.FromSeconds(3));
        string stamp = DateTime.UtcNow.ToString("HHmmss", CultureInfo.InvariantCulture);
        File.WriteAllText(Path.Combine(_captureDir, $"{stamp}-tcpdump.txt"), _capture.Transcript);
        File.WriteAllText(Path.Combine(_captureDir, $"{stamp}-ping.txt"), Pings?.Describe(int.MaxValue) ?? "");
        foreach (var q in _qemus)
        {
            File.WriteAllText(Path.Combine(_captureDir, $"{stamp}-qemu-{q.Name}.txt"), q.Process.Describe(int.MaxValue));
        }
        for (int i = 0; i < Backends.Length; i++)
        {
            File.WriteAllText(Path.Combine(_captureDir, $"{stamp}-backend{i}.txt"), Backends[i] switch { ServeTapBackend s => s.Log, DaemonVhostTapBackend d => d.Log, var b => b?.Describe() ?? "" });
        }
        _capture.Dispose();
    }

    public void Dispose()
    {
        SaveCapture();
        Pings?.Dispose();
        foreach (var t in _transfers)
        {
            t.Sender.Dispose();
        }
        foreach (var q in _qemus)
        {
            q.Dispose();
        }
        foreach (var b in Backends)
        {
            b?.Dispose();
        }
        Namespace.Dispose();
        try
        {
            Directory.Delete(RunDir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
