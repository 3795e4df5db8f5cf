using System.Diagnostics;
using System.Globalization;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.VhostUser;

namespace IfcVdpa.Cli;

/// <summary>
/// `ifcvf demo`: the whole "vhost" path end to end on any Linux machine. A software IFC VF with a TAP
/// backend, probed by the ifcvf driver, behind a vhost-user socket; the TAP moved into a network namespace
/// the demo creates (169.254.99.1); a small Linux guest under QEMU on the socket (169.254.99.2); pings both
/// ways; then everything is removed again. Needs root and the peers from scripts/install-peers.sh.
/// </summary>
public static class DemoCommand
{
    private const string HostIp = "169.254.99.1";
    private const string GuestIp = "169.254.99.2";

    public static int Run(CliContext ctx, IEnumerable<string> args)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        var kv = new Keywords(args);
        int count = kv.Int("count", 3);
        kv.EnsureAllUsed();
        var o = ctx.Out;
        string root = FindRepoRoot() ?? throw new CliException("demo needs the repository (its scripts build the guest); run it as ./ifcvf demo");
        string guestDir = Path.Combine(root, ".peers", "guest");
        if (!File.Exists(Path.Combine(guestDir, "vmlinuz")) || !File.Exists("/usr/bin/qemu-system-x86_64"))
        {
            o.WriteLine("demo: installing QEMU and building the guest (scripts/install-peers.sh)...");
            if (RunProcess(Path.Combine(root, "scripts", "install-peers.sh"), [], 900_000).Code != 0)
            {
                throw new CliException("scripts/install-peers.sh failed; run it by hand to see why");
            }
        }
        int id = Environment.ProcessId % 100000;
        string dir = Path.Combine("/tmp", $"ifcvf-demo-{id}");
        Directory.CreateDirectory(dir);
        string socket = Path.Combine(dir, "vhost.sock");
        string tap = $"ifdemo{id}";
        string ns = $"ifcvf-demo-{id}";
        var log = new Action<string>(s => o.WriteLine($"  [back-end] {s}"));

        o.WriteLine($"1. software IFC VF (1af4:1041, subsystem 8086:001a) with backend tap:{tap}");
        using var sw = SoftVf.Create(new SoftIfcVfOptions { Address = "sim:00.0" }, NetBackend.Tap(tap), new EngineOptions { Mode = EngineMode.Event, Log = log });
        using var adapter = IfcvfAdapter.Probe(sw.Function, new IfcvfAdapterOptions { Name = "vdpa0" });
        o.WriteLine($"2. ifcvf driver probed it: vDPA device {adapter.Name}, {adapter.NumVqs} virtqueues, features 0x{adapter.GetDeviceFeatures():x}");
        using var server = new VhostUserBackend(adapter, new VhostUserBackendOptions
        {
            SocketPath = socket,
            Session = new VhostUserSessionOptions { Log = log, Name = "vhost-user" },
        });
        server.Start();
        o.WriteLine($"3. vhost-user back-end listening on {socket}");
        Process? qemu = null;
        bool ok = false;
        try
        {
            Must("ip", ["netns", "add", ns]);
            Must("ip", ["link", "set", tap, "netns", ns]);
            Must("ip", ["-n", ns, "addr", "add", HostIp + "/24", "dev", tap]);
            Must("ip", ["-n", ns, "link", "set", tap, "up"]);
            Must("ip", ["-n", ns, "link", "set", "lo", "up"]);
            o.WriteLine($"4. namespace {ns}: {tap} = {HostIp}/24");

            var output = new System.Collections.Concurrent.ConcurrentQueue<string>();
            qemu = StartQemu(guestDir, socket, count, output);
            o.WriteLine($"5. QEMU guest booting (kernel virtio-net driver on the vhost-user socket), guest = {GuestIp}");
            if (!WaitLine(output, "GUEST-READY", 120, out string ready))
            {
                throw new CliException("the guest did not come up within 120 s");
            }
            o.WriteLine($"   guest: {ready.Trim()}");
            var (pcode, pout) = RunProcess("ip", ["netns", "exec", ns, "ping", "-c", count.ToString(CultureInfo.InvariantCulture), "-W", "3", GuestIp], 60_000);
            string summary = pout.Split('\n').FirstOrDefault(l => l.Contains("packets transmitted", StringComparison.Ordinal))?.Trim() ?? pout.Trim();
            o.WriteLine($"6. namespace -> guest ping: {summary}");
            if (!WaitLine(output, "GUEST-RESULT ping", 90, out string gping))
            {
                throw new CliException("the guest did not report its ping");
            }
            o.WriteLine($"7. guest -> namespace ping: {gping.Trim()}");
            ok = pcode == 0 && gping.Contains("ping ok", StringComparison.Ordinal);
            for (int q = 0; q < 2; q++)
            {
                var s = adapter.GetVqStats(q);
                o.WriteLine($"   queue {q} ({(q == 0 ? "rx" : "tx")}): packets {s.Packets} bytes {s.Bytes} kicks {s.Kicks} drops {s.Drops} errors {s.Errors}");
            }
        }
        finally
        {
            if (qemu is not null)
            {
                if (!qemu.WaitForExit(20_000))
                {
                    qemu.Kill(entireProcessTree: true);
                }
                qemu.Dispose();
            }
            server.Stop();
            RunProcess("ip", ["netns", "del", ns], 10_000);
            sw.StopDatapath();
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
            o.WriteLine("8. cleaned up: guest stopped, namespace and TAP removed, socket removed");
        }
        o.WriteLine(ok ? "demo: OK, pings went both ways" : "demo: FAILED");
        return ok ? 0 : 1;
    }

    private static Process StartQemu(string guestDir, string socket, int count, System.Collections.Concurrent.ConcurrentQueue<string> output)
    {
        var psi = new ProcessStartInfo("/usr/bin/qemu-system-x86_64")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        string append = string.Create(CultureInfo.InvariantCulture,
            $"console=ttyS0 panic=-1 quiet guest_ip={GuestIp}/24 guest_peer={HostIp} guest_mode=ping guest_count={count + 5} guest_timeout=120");
        foreach (string a in (string[])[
            "-machine", "q35", "-m", "256", "-smp", "1", "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
            "-kernel", Path.Combine(guestDir, "vmlinuz"), "-initrd", Path.Combine(guestDir, "initrd.gz"), "-append", append,
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
            "-chardev", $"socket,id=c0,path={socket}", "-netdev", "vhost-user,id=n0,chardev=c0",
            // vectors=0: QEMU 7.2 without KVM crashes in msix_set_vector_notifiers with vhost-user and MSI-X.
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,vectors=0,romfile="])
        {
            psi.ArgumentList.Add(a);
        }
        var p = Process.Start(psi) ?? throw new CliException("cannot start QEMU");
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) { output.Enqueue(e.Data); } };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) { output.Enqueue(e.Data); } };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    private static bool WaitLine(System.Collections.Concurrent.ConcurrentQueue<string> output, string marker, int seconds, out string line)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed.TotalSeconds < seconds)
        {
            while (output.TryDequeue(out string? l))
            {
                int i = l.IndexOf(marker, StringComparison.Ordinal);
                if (i >= 0)
                {
                    line = l[i..];
                    return true;
                }
            }
            Thread.Sleep(50);
        }
        line = "";
        return false;
    }

    private static void Must(string file, string[] args)
    {
        var (code, text) = RunProcess(file, args, 30_000);
        if (code != 0)
        {
            throw new CliException($"{file} {string.Join(' ', args)} failed: {text.Trim()}");
        }
    }

    private static (int Code, string Output) RunProcess(string file, string[] args, int timeoutMs)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi) ?? throw new CliException($"cannot start {file}");
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutMs))
        {
            p.Kill(entireProcessTree: true);
            return (-1, "timed out");
        }
        return (p.ExitCode, so.Result + se.Result);
    }

    private static string? FindRepoRoot()
    {
        foreach (string start in (string[])[AppContext.BaseDirectory, Environment.CurrentDirectory])
        {
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
            {
                if (File.Exists(Path.Combine(d.FullName, "IfcVdpa.slnx")))
                {
                    return d.FullName;
                }
            }
        }
        return null;
    }
}
