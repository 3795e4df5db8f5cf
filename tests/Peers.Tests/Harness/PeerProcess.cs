using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>
/// A peer process started by a test: stdout and stderr captured into one transcript (read
/// character by character, so prompts without a newline are seen), stdin kept open for
/// interactive peers, a deadline after which it is killed, and a kill of its whole process
/// tree by PID on dispose. Never leaves a process behind.
/// </summary>
public sealed class PeerProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _transcript = new();
    private readonly StringBuilder _stdout = new();
    private readonly Lock _gate = new();
    private readonly Thread[] _readers;
    private readonly Timer _deadline;
    private bool _disposed;

    public string Name { get; }

    public int Pid => _process.Id;

    /// <summary>Starts <paramref name="file"/> with <paramref name="args"/>; it is killed after <paramref name="lifetime"/>.</summary>
    public PeerProcess(string name, string file, IEnumerable<string> args, TimeSpan lifetime, string? workingDirectory = null)
    {
        Name = name;
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? PeerEnvironment.RepoRoot,
        };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        CommandLine = file + " " + string.Join(' ', psi.ArgumentList.Select(Quote));
        _process = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        _readers = [StartReader(_process.StandardOutput, isStdout: true), StartReader(_process.StandardError, isStdout: false)];
        _deadline = new Timer(_ => KillTree(), null, lifetime, Timeout.InfiniteTimeSpan);
    }

    public string CommandLine { get; }

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    /// <summary>Everything the process printed so far (stdout and stderr interleaved).</summary>
    public string Transcript
    {
        get
        {
            lock (_gate)
            {
                return _transcript.ToString();
            }
        }
    }

    /// <summary>Length of the transcript now: pass it to WaitFor to look only at later output.</summary>
    public int Mark
    {
        get
        {
            lock (_gate)
            {
                return _transcript.Length;
            }
        }
    }

    /// <summary>Standard output alone (prompts are not split by log lines on stderr).</summary>
    public string Stdout
    {
        get
        {
            lock (_gate)
            {
                return _stdout.ToString();
            }
        }
    }

    /// <summary>Length of standard output now, for <see cref="WaitForStdout"/>.</summary>
    public int StdoutMark
    {
        get
        {
            lock (_gate)
            {
                return _stdout.Length;
            }
        }
    }

    private Thread StartReader(StreamReader reader, bool isStdout)
    {
        var t = new Thread(() =>
        {
            var buf = new char[4096];
            int n;
            try
            {
                while ((n = reader.Read(buf, 0, buf.Length)) > 0)
                {
                    lock (_gate)
                    {
                        _transcript.Append(buf, 0, n);
                        if (isStdout)
                        {
                            _stdout.Append(buf, 0, n);
                        }
                    }
                }
            }
            catch (IOException)
            {
                // the process went away
            }
            catch (ObjectDisposedException)
            {
            }
        })
        { IsBackground = true, Name = $"{Name}-reader" };
        t.Start();
        return t;
    }

    /// <summary>Writes one line to the process's stdin (interactive peers such as testpmd -i).</summary>
    public void Send(string line)
    {
        try
        {
            _process.StandardInput.Write(line + "\n");
            _process.StandardInput.Flush();
        }
        catch (IOException)
        {
            // the process has gone: the next WaitFor reports it with the transcript
        }
    }

    /// <summary>Closes stdin (EOF), e.g. to end a reader such as nc.</summary>
    public void CloseInput()
    {
        try
        {
            _process.StandardInput.Close();
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Waits until the transcript after <paramref name="from"/> matches <paramref name="pattern"/>.</summary>
    /// <exception cref="TimeoutException">With the tail of the transcript, when it does not match in time or the process exits first.</exception>
    public Match WaitFor(Regex pattern, TimeSpan timeout, int from = 0) => WaitIn(() => Transcript, pattern, timeout, from);

    /// <summary>Like WaitFor, on standard output only (offsets from <see cref="StdoutMark"/>).</summary>
    public Match WaitForStdout(Regex pattern, TimeSpan timeout, int from = 0) => WaitIn(() => Stdout, pattern, timeout, from);

    private Match WaitIn(Func<string> source, Regex pattern, TimeSpan timeout, int from)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            string text = source();
            var m = pattern.Match(text, Math.Min(from, text.Length));
            if (m.Success)
            {
                return m;
            }
            if (_process.HasExited)
            {
                // let the readers drain what is left, then look once more
                foreach (var r in _readers)
                {
                    r.Join(TimeSpan.FromSeconds(2));
                }
                text = source();
                m = pattern.Match(text, Math.Min(from, text.Length));
                if (m.Success)
                {
                    return m;
                }
                throw new TimeoutException($"{Name} exited (code {_process.ExitCode}) before printing /{pattern}/.\n{Describe()}");
            }
            if (sw.Elapsed > timeout)
            {
                throw new TimeoutException($"{Name} did not print /{pattern}/ within {timeout.TotalSeconds:0} s.\n{Describe()}");
            }
            Thread.Sleep(50);
        }
    }

    public Match WaitFor(string pattern, TimeSpan timeout, int from = 0) =>
        WaitFor(new Regex(pattern, RegexOptions.Multiline | RegexOptions.CultureInvariant), timeout, from);

    /// <summary>Waits for the process to exit by itself; false (and the process killed) when it does not in time.</summary>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (_process.WaitForExit(timeout))
        {
            foreach (var r in _readers)
            {
                r.Join(TimeSpan.FromSeconds(2));
            }
            return true;
        }
        KillTree();
        return false;
    }

    /// <summary>SIGKILL to the process and all its descendants (by PID).</summary>
    public void KillTree()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException)
        {
        }
        catch (System.ComponentModel.Win32Exception)
        {
        }
    }

    /// <summary>Sends <paramref name="signal"/> (kill -s, by PID: STOP, CONT, ...) and returns without waiting for its effect.</summary>
    public void Post(string signal)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-s", signal, Pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]) { UseShellExecute = false });
        if (kill is null || !kill.WaitForExit(5000) || kill.ExitCode != 0)
        {
            throw new InvalidOperationException($"kill -s {signal} {Pid} failed");
        }
    }

    /// <summary>Whether every thread of the process is stopped (a SIGSTOP took effect: state T in /proc/PID/task/*/stat).</summary>
    public bool IsStopped()
    {
        foreach (string task in Directory.GetDirectories($"/proc/{Pid}/task"))
        {
            string stat;
            try
            {
                stat = File.ReadAllText(Path.Combine(task, "stat"));
            }
            catch (IOException)
            {
                continue; // the thread has gone
            }
            int close = stat.LastIndexOf(')');
            if (close < 0 || close + 2 >= stat.Length || stat[close + 2] is not ('T' or 't'))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>SIGKILL to this process alone, at once (no walk of its descendants first); waits for it to exit.</summary>
    public void Kill()
    {
        _process.Kill(entireProcessTree: false);
        if (!_process.WaitForExit(10000))
        {
            throw new InvalidOperationException($"{Name} (pid {Pid}) did not exit after SIGKILL");
        }
    }

    /// <summary>Sends SIGINT/SIGTERM (by PID) and waits; kills the tree if it does not exit in time.</summary>
    public bool Signal(string signal, TimeSpan wait)
    {
        if (_process.HasExited)
        {
            return true;
        }
        using (var kill = Process.Start(new ProcessStartInfo("kill", ["-s", signal, Pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]) { UseShellExecute = false }))
        {
            kill?.WaitForExit(5000);
        }
        return WaitForExit(wait);
    }

    /// <summary>The command line and the last part of the transcript, for assertion messages.</summary>
    public string Describe(int tail = 6000)
    {
        string t = Transcript;
        if (t.Length > tail)
        {
            t = "..." + t[^tail..];
        }
        return $"--- {Name}: {CommandLine}\n{t}\n--- end of {Name}";
    }

    private static string Quote(string a) => a.Contains(' ', StringComparison.Ordinal) || a.Length == 0 ? $"'{a}'" : a;

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _deadline.Dispose();
        KillTree();
        foreach (var r in _readers)
        {
            r.Join(TimeSpan.FromSeconds(2));
        }
        _process.Dispose();
    }
}
