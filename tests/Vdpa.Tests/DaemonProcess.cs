using System.Diagnostics;
using System.Text;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>
/// A real `ifcvf daemon` process on a private control socket, and a way to run the real CLI against it
/// (optionally as another uid through setpriv). Everything lives in a fresh temp directory.
/// </summary>
public sealed class DaemonProcess : IDisposable
{
    private readonly Process _proc;
    private readonly StringBuilder _log = new();

    public DaemonProcess(params string[] daemonArgs)
        : this(null, null, daemonArgs)
    {
    }

    /// <summary>A daemon in <paramref name="dir"/> (else a fresh one) with extra environment variables.</summary>
    public DaemonProcess(string? dir, IReadOnlyDictionary<string, string>? env, params string[] daemonArgs)
        : this(dir, env, "ctl.sock", socket => ["daemon", "--control", socket, .. daemonArgs])
    {
    }

    /// <summary>
    /// Any long-running command of the CLI in a fresh directory, started once <paramref name="socketName"/>
    /// (there) exists: <paramref name="args"/> gets that socket's path.
    /// </summary>
    private DaemonProcess(string? dir, IReadOnlyDictionary<string, string>? env, string socketName, Func<string, string[]> args)
    {
        Dir = dir ?? Path.Combine(Path.GetTempPath(), $"ifcvf-test-{Environment.ProcessId}-{Guid.NewGuid():N}"[..40]);
        Directory.CreateDirectory(Dir);
        Socket = Path.Combine(Dir, socketName);
        var psi = Start(args(Socket), env: env);
        _proc = Process.Start(psi)!;
        _proc.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (_log)
                {
                    _log.AppendLine(e.Data);
                }
            }
        };
        _proc.BeginErrorReadLine();
        var sw = Stopwatch.StartNew();
        while (!File.Exists(Socket))
        {
            if (_proc.HasExited || sw.Elapsed > TimeSpan.FromSeconds(20))
            {
                throw new InvalidOperationException($"{psi.ArgumentList[1]} did not start: {Log}");
            }
            Thread.Sleep(20);
        }
    }

    /// <summary>`ifcvf serve --socket DIR/vhost.sock ARGS...` (<see cref="Socket"/> is the vhost-user socket).</summary>
    public static DaemonProcess Serve(IReadOnlyDictionary<string, string>? env, params string[] serveArgs) =>
        new(null, env, "vhost.sock", socket => ["serve", "--socket", socket, .. serveArgs]);

    public string Dir { get; }

    public string Socket { get; }

    public int Pid => _proc.Id;

    public string Log
    {
        get { lock (_log) { return _log.ToString(); } }
    }

    public static string CliDll => Path.Combine(AppContext.BaseDirectory, "ifcvf.dll");

    private static ProcessStartInfo Start(IEnumerable<string> args, uint? asUid = null, IReadOnlyDictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetTempPath(),
        };
        if (asUid is uint uid)
        {
            psi.FileName = "setpriv";
            foreach (var a in new[] { "--reuid", $"{uid}", "--regid", $"{uid}", "--clear-groups", "--", "dotnet" })
            {
                psi.ArgumentList.Add(a);
            }
            psi.Environment["HOME"] = Path.GetTempPath();
        }
        else
        {
            psi.FileName = "dotnet";
        }
        psi.ArgumentList.Add(CliDll);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment.Remove(Daemon.ControlPaths.EnvVar);
        psi.Environment.Remove(Daemon.SystemdNotify.EnvVar);
        foreach (var (k, v) in env ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
        }
        return psi;
    }

    /// <summary>Runs the CLI against this daemon's socket.</summary>
    public (int Exit, string Out, string Err) Cli(params string[] args) => RunCli(["--control", Socket, .. args], null);

    public (int Exit, string Out, string Err) CliAs(uint uid, params string[] args) => RunCli(["--control", Socket, .. args], uid);

    public static (int Exit, string Out, string Err) RunCli(IEnumerable<string> args, uint? asUid = null, IReadOnlyDictionary<string, string>? env = null)
    {
        using var p = Process.Start(Start(args, asUid, env))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(60_000))
        {
            p.Kill();
            throw new TimeoutException("CLI did not finish in 60 s");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>SIGTERM, as a service manager would stop it.</summary>
    public int Stop()
    {
        if (!_proc.HasExited)
        {
            Process.Start("kill", ["-TERM", _proc.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!.WaitForExit();
            if (!_proc.WaitForExit(20_000))
            {
                _proc.Kill();
            }
        }
        _proc.WaitForExit(); // and the asynchronous stderr reader has seen the end: Log is complete
        return _proc.ExitCode;
    }

    public void Dispose()
    {
        Stop();
        _proc.Dispose();
        try
        {
            Directory.Delete(Dir, recursive: true);
        }
        catch (IOException)
        {
            // best effort
        }
    }
}
