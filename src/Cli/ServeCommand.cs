using System.Globalization;
using IfcVdpa.Daemon;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Vfio;
using IfcVdpa.VhostUser;
using IfcVdpa.Virtio;

namespace IfcVdpa.Cli;

/// <summary>
/// `ifcvf serve`: one software IFC VF (datapath engine + network backend), probed by the ifcvf driver
/// into a vDPA device, served to one vhost-user front-end at a time (QEMU, DPDK virtio-user) until
/// SIGINT/SIGTERM. With -j or --stats-period it prints per-queue counters periodically.
/// `--vfio BDF [--generic]` serves a real function bound to vfio-pci instead (DPDK's vdpa sample app with
/// its ifc driver): the frames then never pass through this process.
/// </summary>
public static partial class ServeCommand
{
    private sealed record Args
    {
        public string? Socket { get; set; }
        public string Backend { get; set; } = "loopback";
        public int Queues { get; set; } = 1;
        public byte[]? Mac { get; set; }
        public ushort? Mtu { get; set; }
        public bool Client { get; set; }
        public EngineMode Mode { get; set; } = EngineMode.Event;
        public double? StatsPeriod { get; set; }
        public string? Owner { get; set; }
        public string? Group { get; set; }
        public string? SocketMode { get; set; }
        public SocketAccess Access { get; set; } = SocketAccess.Default;
        public LogFormat LogFormat { get; set; } = LogFormat.Logfmt;
        public LogLevel LogLevel { get; set; } = LogLevel.Info;
        public bool PackedRings { get; set; } = true;
        public bool DirtyLog { get; set; } = true;
        public string? Vfio { get; set; }
        public bool Generic { get; set; }
        public int[]? Cpus { get; set; }
        public string? Vduse { get; set; }
        public string? Metrics { get; set; }
        public string Class { get; set; } = "net";
        public bool BackendGiven { get; set; }
        public bool ReadOnly { get; set; }
        public uint BlkSize { get; set; } = 512;
        public bool Strict { get; set; }
    }

    public static int Run(CliContext ctx, IReadOnlyList<string> argv) => Run(ctx, argv, CancellationToken.None);

    /// <summary>Serves until SIGINT/SIGTERM or <paramref name="stop"/> (for in-process callers and tests).</summary>
    public static int Run(CliContext ctx, IReadOnlyList<string> argv, CancellationToken stop)
    {
        var a = Parse(argv);
        var log = new DaemonLog(ctx.Err, a.LogFormat, a.LogLevel); // the daemon's writer: one line per event
        var info = log.Lines(LogLevel.Info);
        using var device = a.Vfio is null ? SoftwareDevice(a, log.Lines(LogLevel.Warn)) : VfioDevice(a);
        if (a.Vduse is not null)
        {
            return ServeVduse(ctx, device, a.Vduse, a.StatsPeriod ?? (ctx.Json ? 1.0 : null), log, stop);
        }
        var adapter = device.Adapter;
        var options = new VhostUserBackendOptions
        {
            SocketPath = a.Socket!,
            Client = a.Client,
            SocketMode = a.Access.Mode,
            SocketOwner = a.Access.Owner,
            SocketGroup = a.Access.Group,
            Session = new VhostUserSessionOptions { Log = info, Name = a.Socket! },
        };
        using var server = new VhostUserBackend(adapter, options);
        using var meter = new IfcVdpa.Daemon.Metrics.IfcvfMeter(new IfcVdpa.Daemon.Metrics.MetricsSources
        {
            Devices = () => [adapter],
            VhostConnections = () => (server.Connections, server.Session is null ? 0 : 1),
        });
        using var metrics = StartMetrics(a.Metrics, log);
        // SIGTERM/SIGINT handled from before the socket exists: a service manager (or a test) that stops serve
        // as soon as it is ready gets the clean stop, not the default action (killed, socket left behind).
        using var done = new ManualResetEventSlim();
        using var signals = new ShutdownSignal(done.Set);
        using var onStop = stop.Register(done.Set);
        try
        {
            server.Start();
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot serve on {a.Socket}: {e.Message}");
        }
        info($"serving {adapter.Name} ({device.Describe}) on {a.Socket}{(a.Client ? " as a client" : "")}");
        // Type=notify: the units ordered after ours start once the socket listens (a client: once it is connecting)
        SystemdNotify.Notify($"READY=1\nMAINPID={Environment.ProcessId}\nSTATUS=serving {adapter.Name} on {a.Socket}", log);

        double? period = a.StatsPeriod ?? (ctx.Json ? 1.0 : null);
        int waitMs = period is { } p ? (int)Math.Max(100, p * 1000) : -1;
        while (!done.Wait(waitMs, CancellationToken.None))
        {
            PrintStats(ctx, adapter, server, device.Pairs, device.Block);
        }
        info(stop.IsCancellationRequested ? "stop requested: stopping" : "signal received: stopping");
        SystemdNotify.Notify("STOPPING=1", log);
        server.Stop();
        device.StopDatapath();
        if (period is not null)
        {
            PrintStats(ctx, adapter, server, device.Pairs, device.Block);
        }
        info($"stopped; {server.Connections} front-end connection(s) served, socket {(File.Exists(a.Socket) && !a.Client ? "still present" : "removed")}");
        return 0;
    }

    private static IfcVdpa.Daemon.Metrics.MetricsEndpoint? StartMetrics(string? spec, DaemonLog log)
    {
        if (spec is null)
        {
            return null;
        }
        try
        {
            var m = IfcVdpa.Daemon.Metrics.MetricsEndpoint.Start(spec);
            log.Info("metrics endpoint listening", ("url", m.Url));
            return m;
        }
        catch (InvalidOperationException e)
        {
            throw new CliException(e.Message);
        }
    }

    private static void PrintStats(CliContext ctx, IfcvfAdapter dev, VhostUserBackend server, int pairs, bool block)
    {
        var s = server.Session;
        int rings = block ? pairs : pairs * 2; // a block device's "pairs" are its request queues
        string Kind(int q) => block ? "req" : q % 2 == 0 ? "rx" : "tx";
        if (ctx.Json)
        {
            var w = new JsonText();
            w.Begin();
            w.Num("time_ms", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            w.Bool("connected", s is not null);
            w.Bool("running", s?.Configured ?? false);
            w.Num("connections", server.Connections);
            var (devLog, logAll, usedPages) = s?.DirtyLogState ?? default;
            w.Bool("dirty_log", devLog);
            w.Bool("log_all", logAll);
            var (relaying, relayed) = s?.RelayState ?? default;
            w.Bool("log_relay", relaying);
            w.Num("relayed_used", relayed);
            w.Num("dirty_pages", Enumerable.Range(0, rings).Sum(q => dev.GetVqStats(q).DirtyPages) + usedPages);
            if (dev.Function is SoftIfcVf vf)
            {
                w.Bool("strict", vf.Strict);
                w.BeginObject("spec_violations");
                foreach (var (rule, count) in vf.Violations)
                {
                    w.Num(rule.Counter, count);
                }
                w.EndObject();
            }
            w.BeginArray("queues");
            for (int q = 0; q < rings; q++)
            {
                var st = dev.GetVqStats(q);
                w.BeginObject();
                w.Num("qidx", q);
                w.Str("type", Kind(q));
                w.Num("packets", st.Packets);
                w.Num("bytes", st.Bytes);
                w.Num("kicks", st.Kicks);
                w.Num("interrupts", st.Interrupts);
                w.Num("errors", st.Errors);
                w.Num("drops", st.Drops);
                w.Num("dirty_pages", st.DirtyPages);
                w.EndObject();
            }
            w.EndArray();
            w.End();
            ctx.Out.WriteLine(w.ToString());
        }
        else
        {
            var line = new System.Text.StringBuilder();
            line.Append(CultureInfo.InvariantCulture, $"{DateTime.Now:HH:mm:ss} {(s?.Configured == true ? "running" : s is not null ? "connected" : "idle")}");
            if (s?.DirtyLogState is { } lm && (lm.DeviceLogging || lm.LogAll))
            {
                long pages = Enumerable.Range(0, rings).Sum(q => dev.GetVqStats(q).DirtyPages) + lm.UsedRingPagesMarked;
                line.Append(CultureInfo.InvariantCulture, $" | dirty log {(s.RelayState.Relaying ? "relay" : lm.DeviceLogging ? "on" : "waiting for a log")} pages {pages}");
            }
            if (dev.Function is SoftIfcVf vf && vf.ViolationTotal != 0)
            {
                line.Append(CultureInfo.InvariantCulture, $" | spec violations {string.Join(' ', vf.Violations.Select(v => $"{v.Rule.Counter}={v.Count}"))}");
            }
            for (int q = 0; q < rings; q++)
            {
                var st = dev.GetVqStats(q);
                line.Append(CultureInfo.InvariantCulture,
                    $" | q{q} {Kind(q)} pkts {st.Packets} bytes {st.Bytes} kicks {st.Kicks} irqs {st.Interrupts} err {st.Errors} drop {st.Drops}");
            }
            ctx.Out.WriteLine(line.ToString());
        }
        ctx.Out.Flush();
    }

    /// <summary>The device being served and what owns it (disposed in reverse order of creation).</summary>
    private sealed class ServedDevice(IfcvfAdapter adapter, string describe, int pairs, Action stopDatapath, params IDisposable[] owned) : IDisposable
    {
        /// <summary>A block device (then <see cref="Pairs"/> counts its request queues).</summary>
        public bool Block { get; init; }

        public IfcvfAdapter Adapter { get; } = adapter;

        public string Describe { get; } = describe;

        public int Pairs { get; } = pairs;

        public void StopDatapath() => stopDatapath();

        public void Dispose()
        {
            Adapter.Dispose();
            foreach (var d in owned)
            {
                d.Dispose();
            }
        }
    }

    private static ServedDevice SoftwareDevice(Args a, Action<string> log)
    {
        if (a.Class == "blk")
        {
            var (blkVf, blkAdapter, describe) = BlkServe.Create(a.Backend, a.Queues, a.ReadOnly, a.BlkSize, a.Mode, CpuList.ForWorker(a.Cpus, 0), log, strict: a.Strict);
            return new ServedDevice(blkAdapter, describe, a.Queues, blkVf.StopDatapath, blkVf) { Block = true };
        }
        var vfOptions = new SoftIfcVfOptions
        {
            Address = "sim:00.0",
            QueuePairs = a.Queues,
            Mac = a.Mac ?? new SoftIfcVfOptions().Mac,
            Mtu = a.Mtu ?? 1500,
            DeviceFeatures = SoftIfcVfOptions.DefaultFeatures | (a.PackedRings ? 1UL << Virtio.VirtioFeature.F_RING_PACKED : 0),
            DirtyLog = a.DirtyLog,
            Strict = a.Strict,
            Log = log,
        };
        try
        {
            vfOptions.Validate();
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
        NetBackend backend;
        try
        {
            backend = NetBackend.Parse(a.Backend);
        }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
        {
            throw new CliException($"backend {a.Backend}: {e.Message}");
        }
        var sw = SoftVf.Create(vfOptions, backend, new EngineOptions { Mode = a.Mode, CpuAffinity = CpuList.ForWorker(a.Cpus, 0), Log = log });
        try
        {
            var adapter = IfcvfAdapter.Probe(sw.Function, new IfcvfAdapterOptions { Name = "vdpa0" });
            return new ServedDevice(adapter, $"{sw.Function.Address}, {a.Queues} queue pair(s), backend {backend}, {a.Mode} mode{(a.Strict ? ", strict" : "")}", a.Queues,
                sw.StopDatapath, sw);
        }
        catch
        {
            sw.Dispose();
            throw;
        }
    }

    private static ServedDevice VfioDevice(Args a)
    {
        VfioPciFunction fn;
        try
        {
            fn = VfioPciFunction.Open(PciSysfs.NormalizeAddress(a.Vfio!));
        }
        catch (Exception e) when (e is ArgumentException || DaemonErrors.IsRefusal(e))
        {
            throw new CliException(e.Message);
        }
        try
        {
            var adapter = IfcvfAdapter.Probe(fn, new IfcvfAdapterOptions { Name = "vdpa0", AcceptGenericVirtioNet = a.Generic });
            return new ServedDevice(adapter, $"pci/{fn.Address} through VFIO, {(adapter.IsIfc ? "IFC VF" : "generic virtio-net")}, {adapter.NumVqs} virtqueues",
                adapter.NumVqs / 2, () => { }, fn);
        }
        catch (Exception e) when (DaemonErrors.IsRefusal(e))
        {
            fn.Dispose();
            throw new CliException(e.Message);
        }
    }

    private static Args Parse(IReadOnlyList<string> argv)
    {
        var a = new Args();
        for (int i = 0; i < argv.Count; i++)
        {
            string k = argv[i];
            string Value() => i + 1 < argv.Count ? argv[++i] : throw new CliException($"{k} needs a value");
            switch (k)
            {
                case "--socket" or "socket":
                    a.Socket = Value();
                    break;
                case "--backend" or "backend":
                    a.Backend = Value();
                    a.BackendGiven = true;
                    break;
                case "--class" or "class":
                    a.Class = Value() switch
                    {
                        "net" => "net",
                        "blk" or "block" => "blk",
                        var c => throw new CliException($"--class must be net or blk, not \"{c}\""),
                    };
                    break;
                case "--readonly" or "readonly":
                    a.ReadOnly = true;
                    break;
                case "--blk-size" or "blk_size":
                    a.BlkSize = uint.TryParse(Value(), CultureInfo.InvariantCulture, out uint bs) && bs is 512 or 1024 or 2048 or 4096
                        ? bs : throw new CliException("--blk-size must be 512, 1024, 2048 or 4096");
                    break;
                case "--queues" or "queues":
                    a.Queues = int.TryParse(Value(), CultureInfo.InvariantCulture, out int q) && q is >= 1 and <= 16
                        ? q : throw new CliException("--queues must be 1..16");
                    break;
                case "--mac" or "mac":
                    a.Mac = ParseMac(Value());
                    break;
                case "--mtu" or "mtu":
                    a.Mtu = ushort.TryParse(Value(), CultureInfo.InvariantCulture, out ushort m) && m >= 68
                        ? m : throw new CliException("--mtu must be 68..65535");
                    break;
                case "--client" or "client":
                    a.Client = true;
                    break;
                case "--poll":
                    a.Mode = EngineMode.Poll;
                    break;
                case "--packed":
                    a.PackedRings = true; // the default: the software VF offers VIRTIO_F_RING_PACKED, as DPDK's vhost does
                    break;
                case "--strict" or "strict":
                    a.Strict = true; // the VF checks the driver's virtio rules and sets NEEDS_RESET on a violation (docs/strict.md)
                    break;
                case "--split-only":
                    a.PackedRings = false; // offer split rings only
                    break;
                case "--no-dirty-log":
                    a.DirtyLog = false; // a VF whose LM block keeps no dirty log: migration goes through the software relay
                    break;
                case "--event":
                    a.Mode = EngineMode.Event;
                    break;
                case "--vduse" or "vduse":
                    a.Vduse = Value();
                    break;
                case "--vfio" or "vfio":
                    a.Vfio = Value();
                    break;
                case "--generic" or "generic":
                    a.Generic = true; // accept a plain virtio-net function (DPDK's vdpa=1)
                    break;
                case "--cpu" or "cpu":
                {
                    string v = Value();
                    try
                    {
                        a.Cpus = CpuList.Parse(v);
                    }
                    catch (FormatException e)
                    {
                        throw new CliException($"--cpu: {e.Message}");
                    }
                    break;
                }
                case "--metrics":
                {
                    string v = Value();
                    try
                    {
                        IfcVdpa.Daemon.Metrics.MetricsEndpoint.Parse(v);
                    }
                    catch (FormatException e)
                    {
                        throw new CliException(e.Message);
                    }
                    a.Metrics = v;
                    break;
                }
                case "--stats-period":
                    a.StatsPeriod = double.TryParse(Value(), CultureInfo.InvariantCulture, out double s) && s > 0
                        ? s : throw new CliException("--stats-period must be a positive number of seconds");
                    break;
                case "--owner":
                    a.Owner = Value();
                    break;
                case "--group":
                    a.Group = Value();
                    break;
                case "--mode" or "--socket-mode":
                    a.SocketMode = Value();
                    break;
                case "--log-format":
                    a.LogFormat = LogValue(() => DaemonLog.ParseFormat(Value()));
                    break;
                case "--log-level":
                    a.LogLevel = LogValue(() => DaemonLog.ParseLevel(Value()));
                    break;
                default:
                    throw new CliException($"serve: unknown argument \"{k}\"");
            }
        }
        if (string.IsNullOrEmpty(a.Socket) && a.Vduse is null)
        {
            throw new CliException("serve needs --socket PATH (vhost-user) or --vduse NAME (the kernel vDPA bus)");
        }
        if ((a.Owner ?? a.Group ?? a.SocketMode) is not null)
        {
            if (a.Client || a.Vduse is not null)
            {
                throw new CliException("--owner, --group and --mode apply to a socket serve creates: not with --client (the front-end owns it) or --vduse");
            }
            try
            {
                a.Access = SocketAccess.Parse(a.Owner, a.Group, a.SocketMode); // the rules of `vhost add ... owner/group/mode`
            }
            catch (ArgumentException e)
            {
                throw new CliException(e.Message);
            }
        }
        if (a.Class == "blk")
        {
            if (!a.BackendGiven)
            {
                throw new CliException("serve --class blk needs --backend file:PATH|mem:SIZE");
            }
            if (a.Vfio is not null || a.Mac is not null || a.Mtu is not null)
            {
                throw new CliException("serve --class blk: --vfio, --mac and --mtu do not apply to the software block VF");
            }
        }
        else if (a.ReadOnly || a.BlkSize != 512)
        {
            throw new CliException("--readonly and --blk-size need --class blk");
        }
        if (a.Strict && a.Vfio is not null)
        {
            throw new CliException("--strict is the software VF's spec checker; a real function behind --vfio has none");
        }
        if (a.Cpus is not null)
        {
            if (a.Vfio is not null)
            {
                throw new CliException("--cpu pins the software VF's datapath worker; with --vfio the frames never pass through this process");
            }
            try
            {
                CpuList.EnsureAllowed(a.Cpus); // one worker: it takes the first CPU, but every CPU named must be usable
            }
            catch (ArgumentException e)
            {
                throw new CliException($"--cpu {CpuList.Format(a.Cpus)}: {e.Message}");
            }
        }
        return a;
    }

    private static T LogValue<T>(Func<T> parse)
    {
        try
        {
            return parse();
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
    }

    private static byte[] ParseMac(string s)
    {
        var mac = MacAddress.TryParse(s) ?? throw new CliException($"bad MAC address \"{s}\" (expected xx:xx:xx:xx:xx:xx)");
        return MacAddress.IsUnicast(mac) ? mac : throw new CliException($"mac {s} is not a unicast address");
    }
}
