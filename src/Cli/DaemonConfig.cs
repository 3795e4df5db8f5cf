using System.Text.Json;
using IfcVdpa.Daemon;

namespace IfcVdpa.Cli;

/// <summary>
/// `ifcvf daemon --config FILE`: the setup a daemon brings back at every start. One command per line, in
/// the words of the CLI, applied in order before the control socket listens:
/// <code>
/// vfio 0000:3b:00.2 [generic]                     # adopt a function bound to vfio-pci (mgmtdev pci/BDF)
/// sim add count 2 backend pair                    # software VFs (mgmtdev sim/ifcvfN)
/// dev add name vm0 mgmtdev sim/ifcvf0 mac 02:00:00:00:00:01
/// vhost add vm0 socket /run/ifcvf/vm0.sock [client]
/// dev attach vm1 virtio tap vnet1
/// </code>
/// `#` starts a comment; words are separated by blanks (no quoting). The whole file is checked first
/// (syntax and allowed commands), then applied; the first line that fails stops the start with
/// `FILE:LINE: reason`, and everything the earlier lines created is removed: the daemon never runs
/// half-configured.
/// </summary>
public static class DaemonConfig
{
    /// <summary>One command of the file and where it is.</summary>
    public sealed record Line(int Number, string[] Words)
    {
        public override string ToString() => string.Join(' ', Words);
    }

    private sealed class DryRunDone : Exception;

    /// <summary>Reads and checks the file: unknown commands, bad syntax and missing values are refused here, before anything runs.</summary>
    public static IReadOnlyList<Line> Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        string[] text;
        try
        {
            text = File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"config {path}: {e.Message}");
        }
        var lines = new List<Line>();
        for (int i = 0; i < text.Length; i++)
        {
            string body = text[i];
            int hash = body.IndexOf('#', StringComparison.Ordinal);
            if (hash >= 0)
            {
                body = body[..hash];
            }
            string[] words = body.Split([' ', '\t', '\r'], StringSplitOptions.RemoveEmptyEntries);
            if (words.Length > 0)
            {
                lines.Add(new Line(i + 1, words));
            }
        }
        // Dry run: each command parses its words exactly as the CLI does and stops at its request.
        var dry = new CliContext(false, TextWriter.Null, TextWriter.Null, null) { Requester = (_, _) => throw new DryRunDone() };
        foreach (var line in lines)
        {
            try
            {
                if (line.Words[0] == "vfio")
                {
                    VfioArgs(line);
                }
                else
                {
                    Run(dry, line);
                }
            }
            catch (DryRunDone)
            {
                // the words are right; the daemon decides the rest when the line is applied
            }
            catch (CliException e)
            {
                throw new CliException($"{path}:{line.Number}: {e.Message}");
            }
        }
        return lines;
    }

    /// <summary>Applies the lines to a daemon that is not listening yet; the first failure names its line.</summary>
    public static void Apply(DaemonHost host, string path, IReadOnlyList<Line> lines)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(lines);
        var ctx = new CliContext(false, TextWriter.Null, TextWriter.Null, null)
        {
            Requester = (cmd, args) => ControlClient.ParseReply(host.Server.Invoke(ControlWire.Request(cmd, args))),
        };
        foreach (var line in lines)
        {
            try
            {
                if (line.Words[0] == "vfio")
                {
                    var (bdf, generic) = VfioArgs(line);
                    DaemonCommand.AdoptVfio(host, bdf, generic);
                }
                else
                {
                    Run(ctx, line);
                }
            }
            catch (CliException e)
            {
                throw new CliException($"{path}:{line.Number}: {e.Message}");
            }
            catch (JsonException e)
            {
                throw new CliException($"{path}:{line.Number}: {e.Message}");
            }
            host.Log.Info("config line applied", ("config", path), ("line", line.Number), ("command", line.ToString()));
        }
    }

    private static void Run(CliContext ctx, Line line)
    {
        string[] w = line.Words;
        string verb = w.Length > 1 ? w[1] : "";
        switch (w[0], verb)
        {
            case ("sim", "add"):
                SimCommand.Run(ctx, "add", w.Skip(2));
                break;
            case ("dev", "add") or ("dev", "attach"):
                DevCommand.Run(ctx, verb, w.Skip(2).ToList());
                break;
            case ("vhost", "add"):
                VhostCommand.Run(ctx, "add", w.Skip(2));
                break;
            default:
                throw new CliException($"\"{string.Join(' ', w.Take(2))}\" does not belong in a config file " +
                                       "(it holds vfio, sim add, dev add, dev attach and vhost add lines)");
        }
    }

    private static (string Bdf, bool Generic) VfioArgs(Line line)
    {
        string[] w = line.Words;
        bool generic = w.Length == 3 && w[2] == "generic";
        if (w.Length < 2 || w.Length > 3 || (w.Length == 3 && !generic))
        {
            throw new CliException("vfio needs a PCI address and at most the word generic: vfio 0000:3b:00.2 [generic]");
        }
        try
        {
            return (Vfio.PciSysfs.NormalizeAddress(w[1]), generic);
        }
        catch (ArgumentException e)
        {
            throw new CliException($"vfio: {e.Message}");
        }
    }
}
