using System.Diagnostics;

namespace IfcVdpa.VirtioNet.Tests;

/// <summary>Runs host commands (ip, ping, python3) for tests that build their own namespaces.</summary>
public static class Host
{
    public static (int Code, string Output) Run(string file, string args, int timeoutMs = 30_000)
    {
        var psi = new ProcessStartInfo(file, args)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutMs))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            return (-1, $"timed out after {timeoutMs} ms: {file} {args}\n{stdout.Result}{stderr.Result}");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    public static string Must(string file, string args, int timeoutMs = 30_000)
    {
        var (code, output) = Run(file, args, timeoutMs);
        if (code != 0)
        {
            throw new InvalidOperationException($"`{file} {args}` exited {code}: {output}");
        }
        return output;
    }

    public static string Ip(string args) => Must("ip", args);

    /// <summary>A network namespace that is deleted on dispose (with anything moved into it).</summary>
    public sealed class Netns : IDisposable
    {
        public Netns(string name)
        {
            Name = name;
            Run("ip", $"netns del {name}");
            Ip($"netns add {name}");
            Ip($"-n {name} link set lo up");
        }

        public string Name { get; }

        public string Exec(string cmd, string args, int timeoutMs = 30_000) =>
            Must("ip", $"netns exec {Name} {cmd} {args}", timeoutMs);

        public (int Code, string Output) TryExec(string cmd, string args, int timeoutMs = 30_000) =>
            Run("ip", $"netns exec {Name} {cmd} {args}", timeoutMs);

        /// <summary>Moves a host interface into this namespace, addresses it and brings it up.</summary>
        public void Adopt(string ifname, string cidr)
        {
            Ip($"link set {ifname} netns {Name}");
            Ip($"-n {Name} addr add {cidr} dev {ifname}");
            Ip($"-n {Name} link set {ifname} up");
        }

        public void Dispose() => Run("ip", $"netns del {Name}");
    }

    public static string Unique(string prefix) => $"{prefix}{Environment.ProcessId % 10000}{Random.Shared.Next(100)}";
}
