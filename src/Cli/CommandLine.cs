using IfcVdpa.Cli.SelfTest;
using IfcVdpa.Daemon;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;

namespace IfcVdpa.Cli;

/// <summary>Entry point of the `ifcvf` tool: iproute2 `vdpa`-style object/verb/keyword-value commands.</summary>
public static class CommandLine
{
    public const string Usage = """
        Usage: ifcvf [ -j ] OBJECT COMMAND [ ARGS ]

        A userspace vDPA stack for Intel IFC VFs (virtio-net in hardware), with a software IFC VF.

        Objects and commands:
          sim dump [ transitional ] [ queues N ] [ layout pairs|compact ]
                                     show a software IFC VF's PCI identity, BARs and capabilities
                                     the way `lspci -vv` does
          pci list | bind BDF | unbind BDF | show BDF
                                     virtio/IFC functions, vfio-pci binding (previous driver restored)
          daemon [ --allow-uid UID ]... [ --metrics [ADDR:]PORT ] [ --config FILE ] [ sim N ] [ vfio BDF ]... [ generic ]
                 [ --log-format logfmt|json ] [ --log-level error|warn|info|debug ]
                                     run the daemon in the foreground (control socket mode 0600);
                                     vfio BDF adopts a vfio-pci function as mgmtdev pci/BDF;
                                     --metrics serves Prometheus metrics (only a port: 127.0.0.1);
                                     --config applies vfio, sim add, dev add, dev attach and vhost add
                                     lines before listening (a bad line: FILE:LINE, nothing started)
          sim add [ count N ] [ mac M ] [ queues N ] [ msix_vectors N ] [ backend loopback|pair|tap:NAME|pcap:FILE ]
                  [ cpu LIST ] [ dirty-log on|off ] [ strict ]
                                     create software IFC VFs (management devices sim/ifcvfN); the
                                     backend is their "wire" (pair: VFs wired two by two); cpu pins
                                     each VF's datapath worker: VF i gets the i-th CPU of LIST, round robin;
                                     dirty-log off: VFs without the LM dirty log (software relay migration);
                                     strict: a driver's virtio rule violation sets NEEDS_RESET (docs/strict.md)
          sim add class blk backend file:PATH[,direct]|mem:SIZE [ queues N ] [ readonly ] [ blk_size N ] [ cpu N ] [ strict ]
                                     a software IFC block VF (capacity from the backend; N request
                                     queues, each with its own I/O thread; readonly offers VIRTIO_BLK_F_RO)
          sim show [ NAME ]          software VFs: status, strict, virtio rule violations per rule
          sim del NAME               delete a software VF (and its vDPA device)
          sim link NAME up|down      set a software VF's link status (config interrupt to its driver)
          mgmtdev show [ NAME ]      management devices (VFs): classes, max vqs, features
          dev add name NAME mgmtdev MGMTDEV [ mac M ] [ mtu N ] [ max_vqp N ] [ device_features HEX ]
          dev add name NAME mgmtdev MGMTDEV [ capacity SECTORS ] [ blk_size N ] [ readonly ] [ queues N ]
                                     block VF: capacity (512-byte sectors, at most the backend's),
                                     blk_size (at least the VF's), readonly, queues (at most the VF's)
          dev del NAME
          dev show [ NAME ]
          dev config show [ NAME ]
          dev vstats show NAME [ qidx Q ]
          dev attach NAME virtio tap TAPNAME [ queues N ]
                                     the host uses the device as its own NIC through TAP TAPNAME
          dev attach NAME vduse [ VDUSENAME ]
                                     the device joins the kernel's vDPA bus through VDUSE (Linux 6.7+,
                                     modprobe vduse); then `vdpa dev add name VDUSENAME mgmtdev vduse`
          dev detach NAME            detach the device's consumer
          vhost add NAME socket PATH [ client ] [ owner USER ] [ group GROUP ] [ mode OCTAL ]
                                     serve the device's virtqueues to a vhost-user front-end (daemon mode)
          vhost del NAME             stop serving it (the device is reset)
          serve --socket PATH [ --backend loopback|tap:NAME|pcap:FILE ] [ --queues N ] [ --mac M ] [ --mtu N ]
                [ --client ] [ --poll | --event ] [ --split-only ] [ --stats-period S ]
                [ --owner USER ] [ --group GROUP ] [ --mode OCTAL ] [ --cpu LIST ] [ --metrics [ADDR:]PORT ]
                [ --no-dirty-log ] [ --strict ] [ --log-format logfmt|json ] [ --log-level error|warn|info|debug ]
                                     vhost-user back-end (QEMU, DPDK virtio-user) on a software IFC VF
                                     until Ctrl-C; -j or --stats-period print per-queue counters;
                                     --strict: the VF sets NEEDS_RESET on a virtio rule violation;
                                     --cpu pins the datapath worker (one: the first CPU of LIST);
                                     --owner/--group/--mode: who may connect (default 0600, root;
                                     never world-writable), as vhost add's owner/group/mode;
                                     --no-dirty-log: a VF without the LM dirty log (migration then
                                     goes through the back-end's software relay, split rings only)
          serve --vduse NAME [ --backend ... ] [ --mac M ] [ --mtu N ] [ --stats-period S ]
                                     one software IFC VF on the kernel's vDPA bus as VDUSE device NAME
          serve --socket PATH --vfio BDF [ --generic ] [ --client ] [ --stats-period S ]
                                     the same on a function bound to vfio-pci (an IFC VF; --generic also
                                     takes a plain virtio-net function): true vDPA, like DPDK's vdpa app
          demo [ count N ]           end to end: serve with a TAP in a new namespace, a Linux guest under
                                     QEMU on the socket, pings both ways, clean-up (root; installs peers)
          help                       this text

        Options:
          -j, --json                 JSON output (where supported)
          --control PATH             daemon control socket (default: $IFCVF_CONTROL, else
                                     $XDG_RUNTIME_DIR/ifcvf/ifcvfd.sock, else /run/ifcvf/ifcvfd.sock)
          -h, --help                 this text
          -V, --version              version, git commit and how it runs (NativeAOT or JIT)
        """;

    /// <summary>`ifcvf --version`: the assembly's informational version (publish sets the commit), the runtime and the code form.</summary>
    public static string VersionText()
    {
        var asm = typeof(CommandLine).Assembly;
        string version = asm.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
            is [System.Reflection.AssemblyInformationalVersionAttribute a, ..] ? a.InformationalVersion : asm.GetName().Version?.ToString() ?? "unknown";
        string form = System.Runtime.CompilerServices.RuntimeFeature.IsDynamicCodeSupported ? "JIT" : "NativeAOT";
        return $"ifcvf {version} ({form}, {System.Runtime.InteropServices.RuntimeInformation.FrameworkDescription}, {System.Runtime.InteropServices.RuntimeInformation.RuntimeIdentifier})";
    }

    public static Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var rest = new List<string>();
        bool json = false;
        string? control = null;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            switch (a)
            {
                case "--control" when i + 1 < args.Length:
                    control = args[++i];
                    break;
                case "--control":
                    stderr.WriteLine("ifcvf: --control needs a socket path");
                    return Task.FromResult(1);
                case "-j" or "--json":
                    json = true;
                    break;
                case "-h" or "--help" or "help":
                    stdout.Write(Usage);
                    return Task.FromResult(0);
                case "-V" or "--version":
                    stdout.WriteLine(VersionText());
                    return Task.FromResult(0);
                default:
                    rest.Add(a);
                    break;
            }
        }
        if (rest.Count == 0)
        {
            stdout.Write(Usage);
            return Task.FromResult(0);
        }
        try
        {
            return Task.FromResult(Dispatch(rest, json, stdout, new CliContext(json, stdout, stderr, control)));
        }
        catch (CliException e)
        {
            stderr.WriteLine($"ifcvf: {e.Message}");
            return Task.FromResult(e.ExitCode);
        }
        catch (Exception e) when (DaemonErrors.IsRefusal(e))
        {
            // The one error contract: a device refusal (VdpaException) or an environment one is one line, never a stack.
            stderr.WriteLine($"ifcvf: {e.Message}");
            return Task.FromResult(1);
        }
    }

    private static int Dispatch(List<string> a, bool json, TextWriter stdout, CliContext ctx)
    {
        string obj = a[0];
        string verb = a.Count > 1 ? a[1] : "";
        var kv = new Keywords(a.Skip(2));
        switch (obj, verb)
        {
            case ("pci", _):
                return PciCommand.Run(verb, kv, json, stdout);
            case ("selftest", _):
                return SelfTestCommand.Run(verb, kv, stdout);
            case ("sim", "dump"):
                return SimDump(kv, json, stdout);
            case ("sim", _):
                return SimCommand.Run(ctx, verb, a.Skip(2));
            case ("demo", _):
                return DemoCommand.Run(ctx, a.Skip(1));
            case ("serve", _):
                return ServeCommand.Run(ctx, a.Skip(1).ToList());
            case ("daemon", _):
                return DaemonCommand.Run(ctx, a.Skip(1));
            case ("mgmtdev", _):
                return MgmtdevCommand.Run(ctx, verb, a.Skip(2));
            case ("dev", _):
                return DevCommand.Run(ctx, verb, a.Skip(2).ToList());
            case ("vhost", _):
                return VhostCommand.Run(ctx, verb, a.Skip(2));
            default:
                throw new CliException($"unknown command \"{string.Join(' ', a.Take(2))}\"; try \"ifcvf help\"");
        }
    }

    private static int SimDump(Keywords kv, bool json, TextWriter stdout)
    {
        var opts = new SoftIfcVfOptions
        {
            Address = "sim:00.0",
            Transitional = kv.Flag("transitional"),
            QueuePairs = kv.Int("queues", 1),
            LmLayout = kv.Get("layout") switch
            {
                null or "pairs" => LmLayout.PairBlocks,
                "compact" => LmLayout.Compact,
                "queues" => LmLayout.PerQueueBlocks,
                var x => throw new CliException($"layout must be pairs, queues or compact, not \"{x}\""),
            },
        };
        kv.EnsureAllUsed();
        try
        {
            opts.Validate();
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
        using var vf = new SoftIfcVf(opts);
        if (json)
        {
            stdout.WriteLine(SimDumpJson(vf));
        }
        else
        {
            stdout.Write(LspciFormatter.Format(vf));
        }
        return 0;
    }

    private static string SimDumpJson(SoftIfcVf vf)
    {
        var w = new JsonText();
        w.Begin();
        w.Str("address", vf.Address);
        w.Str("vendor", $"{vf.ReadConfig16(PciConfig.VendorId):x4}");
        w.Str("device", $"{vf.ReadConfig16(PciConfig.DeviceId):x4}");
        w.Str("subsystem_vendor", $"{vf.ReadConfig16(PciConfig.SubsystemVendorId):x4}");
        w.Str("subsystem_device", $"{vf.ReadConfig16(PciConfig.SubsystemId):x4}");
        w.Num("num_queues", vf.NumQueues);
        w.Num("msix_vectors", vf.MsixVectorCount);
        w.Str("device_features", $"0x{vf.DeviceFeatures:x}");
        w.BeginArray("bars");
        foreach (var b in vf.Bars)
        {
            w.BeginObject();
            w.Num("index", b.Index);
            w.Num("size", (long)b.Size);
            w.Bool("64bit", b.Is64Bit);
            w.EndObject();
        }
        w.EndArray();
        w.End();
        return w.ToString();
    }
}

/// <summary>A user error: one clear line and a non-zero exit.</summary>
public sealed class CliException(string message, int exitCode = 1) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
