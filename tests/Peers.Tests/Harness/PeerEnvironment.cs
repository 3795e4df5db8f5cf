using System.Diagnostics;
using System.Globalization;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>
/// Where the peers are (scripts/install-peers.sh installs them) and small helpers to run short
/// commands. A missing peer FAILS the test with a message naming the install script: these tests
/// are never skipped (in CI, CI=true, they are the proof that the back-end works with real peers).
/// </summary>
public static class PeerEnvironment
{
    private static int s_counter;

    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary>The test guest's kernel and initramfs (IFCVF_GUEST_DIR overrides: a private build of scripts/guest).</summary>
    public static string GuestDir => Environment.GetEnvironmentVariable("IFCVF_GUEST_DIR") is { Length: > 0 } d ? d : Path.Combine(RepoRoot, ".peers", "guest");

    public static string Kernel => Path.Combine(GuestDir, "vmlinuz");

    public static string Initrd => Path.Combine(GuestDir, "initrd.gz");

    public static string TestPmd => "/usr/bin/dpdk-testpmd";

    public static string Qemu => "/usr/bin/qemu-system-x86_64";

    public static string Busybox => "/bin/busybox";

    /// <summary>The launcher at the repository root that builds and runs the CLI.</summary>
    public static string Ifcvf => Path.Combine(RepoRoot, "ifcvf");

    public static bool InCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// The back-end under test: "serve" (this project's `ifcvf serve`, the default) or "dpdk"
    /// (DPDK's vhost PMD, to prove the harness itself: IFCVF_PEERS_BACKEND=dpdk).
    /// </summary>
    public static string BackendKind => Environment.GetEnvironmentVariable("IFCVF_PEERS_BACKEND") ?? "serve";

    private static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "IfcVdpa.slnx")))
            {
                return d.FullName;
            }
        }
        throw new InvalidOperationException("cannot find the repository root (IfcVdpa.slnx) above " + AppContext.BaseDirectory);
    }

    /// <summary>Fails (never skips) when one of <paramref name="paths"/> is missing.</summary>
    public static void Require(params string[] paths)
    {
        var missing = paths.Where(p => !File.Exists(p)).ToList();
        if (missing.Count > 0)
        {
            Assert.Fail($"real peer missing: {string.Join(", ", missing)}. Run scripts/install-peers.sh " +
                        "(scripts/test.sh runs it); these tests do not skip" + (InCi ? " in CI." : "."));
        }
        if (Environment.UserName != "root" && !InCi)
        {
            Assert.Fail("the peer tests need root (network namespaces, TAP devices, DPDK memfd).");
        }
    }

    /// <summary>A name unique to this test process (IFNAMSIZ-safe for prefixes of up to 5 characters).</summary>
    public static string Unique(string prefix)
    {
        int n = Interlocked.Increment(ref s_counter);
        return string.Create(CultureInfo.InvariantCulture, $"{prefix}{Environment.ProcessId % 100000}x{n}");
    }

    /// <summary>A fresh directory for sockets and files of one test (short path: sun_path is 108 bytes).</summary>
    public static string NewRunDir()
    {
        string dir = Path.Combine("/tmp", Unique("ifcvf-peers-"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>Runs a short command to completion (killed after <paramref name="timeout"/>): exit code and output.</summary>
    public static (int Code, string Output) Run(string file, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        using var p = new PeerProcess(Path.GetFileName(file), file, args, (timeout ?? TimeSpan.FromSeconds(30)) + TimeSpan.FromSeconds(1));
        p.CloseInput();
        bool exited = p.WaitForExit(timeout ?? TimeSpan.FromSeconds(30));
        return (exited ? p.ExitCode : -1, p.Transcript);
    }

    /// <summary>Runs a command that must succeed.</summary>
    public static string RunChecked(string file, params string[] args)
    {
        var (code, output) = Run(file, args);
        if (code != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({code}): {output}");
        }
        return output;
    }

    /// <summary>Waits until <paramref name="condition"/> holds; false after <paramref name="timeout"/>.</summary>
    public static bool Eventually(Func<bool> condition, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < timeout)
        {
            if (condition())
            {
                return true;
            }
            Thread.Sleep(50);
        }
        return condition();
    }

    /// <summary>Number of open file descriptors of a process (/proc/PID/fd).</summary>
    public static int FdCount(int pid) => Directory.GetFileSystemEntries($"/proc/{pid}/fd").Length;

    /// <summary>A "Vm*" line of /proc/PID/status in kB (VmRSS, VmSize).</summary>
    public static long StatusKb(int pid, string field)
    {
        foreach (string line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
            {
                return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
            }
        }
        throw new InvalidOperationException($"no {field} in /proc/{pid}/status");
    }
}
