using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace IfcVdpa.Tests.Shared;

/// <summary>
/// Runs one of the guest proofs' shell scripts (scripts/*-guest/prepare.sh, run.sh) from the repository root
/// and collects stdout and stderr in order; a script that outlives its timeout is killed with its children.
/// Linked into the test projects that boot a guest (Vfio.Tests, Peers.Tests).
/// </summary>
internal static class GuestScript
{
    public static string RepoRoot { get; } = FindRepoRoot();

    private static string FindRepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "IfcVdpa.slnx")))
        {
            d = d.Parent;
        }
        return d?.FullName ?? throw new InvalidOperationException("repository root (IfcVdpa.slnx) not found");
    }

    public static (int Rc, string Out) Run(string script, string args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo("bash", $"{script} {args}")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = RepoRoot,
        };
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"bash {script} did not start");
        var sb = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (sb) { sb.AppendLine(e.Data); } } };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (sb) { sb.AppendLine(e.Data); } } };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        bool exited = p.WaitForExit(timeout);
        if (!exited)
        {
            p.Kill(entireProcessTree: true);
        }
        p.WaitForExit();
        lock (sb)
        {
            return exited ? (p.ExitCode, sb.ToString()) : (-1, sb + $"\n[timed out after {timeout.TotalSeconds:0} s]");
        }
    }

    /// <summary>The first line of <paramref name="log"/> that starts with <paramref name="marker"/>; fails the test when there is none.</summary>
    public static string Line(string log, string marker)
    {
        var m = Regex.Match(log, "^" + Regex.Escape(marker) + ".*$", RegexOptions.Multiline);
        Assert.True(m.Success, $"marker \"{marker}\" missing from the guest log");
        return m.Value.TrimEnd('\r');
    }
}
