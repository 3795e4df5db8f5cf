using System.Text.Json;
using IfcVdpa.Virtio;

namespace IfcVdpa.Cli;

/// <summary>
/// `ifcvf sim add [count N] [mac M] [queues N] [backend B] [cpu LIST] [dirty-log on|off] [strict]`, `ifcvf sim add class blk
/// backend file:PATH|mem:SIZE [queues N] [readonly] [blk_size N] [cpu N] [strict]`, `ifcvf sim del NAME` and `ifcvf sim show [NAME]`
/// (software VFs in the daemon).
/// </summary>
public static class SimCommand
{
    public static int Run(CliContext ctx, string verb, IEnumerable<string> args)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        var kv = new Keywords(args);
        switch (verb)
        {
            case "add":
            {
                string cls = kv.Get("class") ?? "net";
                bool readOnly = kv.Flag("readonly");
                int blkSize = kv.Int("blk_size", 0);
                int count = kv.Int("count", 1);
                string? mac = kv.Get("mac");
                int queues = kv.Int("queues", 1);
                int vectors = kv.Int("msix_vectors", 0);
                string? backend = kv.Get("backend");
                string? cpu = kv.Get("cpu");
                string? dirtyLog = kv.Get("dirty-log");
                bool strict = kv.Flag("strict");
                kv.EnsureAllUsed();
                if (dirtyLog is not null and not "on" and not "off")
                {
                    throw new CliException($"dirty-log must be on or off, not \"{dirtyLog}\"");
                }
                if (cpu is not null)
                {
                    try
                    {
                        _ = IfcvfModel.Datapath.CpuList.Parse(cpu); // the syntax here; the daemon checks the CPUs against its own
                    }
                    catch (FormatException e)
                    {
                        throw new CliException($"cpu: {e.Message}");
                    }
                }
                if (mac is not null && MacAddress.TryParse(mac) is null)
                {
                    throw new CliException($"mac must look like 00:e0:ed:00:00:01, not \"{mac}\"");
                }
                if (cls is not ("net" or "blk" or "block"))
                {
                    throw new CliException($"class must be net or blk, not \"{cls}\"");
                }
                var data = ctx.Request("sim add", w =>
                {
                    w.WriteString("class", cls);
                    if (readOnly)
                    {
                        w.WriteBoolean("readonly", true);
                    }
                    if (blkSize != 0)
                    {
                        w.WriteNumber("blk_size", blkSize);
                    }
                    w.WriteNumber("count", count);
                    w.WriteNumber("queues", queues);
                    if (mac is not null)
                    {
                        w.WriteString("mac", mac);
                    }
                    if (vectors != 0)
                    {
                        w.WriteNumber("msix_vectors", vectors);
                    }
                    if (backend is not null)
                    {
                        w.WriteString("backend", backend);
                    }
                    if (cpu is not null)
                    {
                        w.WriteString("cpu", cpu);
                    }
                    if (dirtyLog is not null)
                    {
                        w.WriteBoolean("dirty_log", dirtyLog == "on");
                    }
                    if (strict)
                    {
                        w.WriteBoolean("strict", true);
                    }
                });
                if (ctx.Json)
                {
                    ctx.PrintJson(data);
                }
                else
                {
                    MgmtdevCommand.PrintHuman(ctx.Out, data);
                }
                return 0;
            }
            case "del":
            {
                string name = kv.Positional() ?? throw new CliException("sim del needs a VF name (e.g. sim/ifcvf0)");
                kv.EnsureAllUsed();
                ctx.Request("sim del", w => w.WriteString("name", name));
                return 0;
            }
            case "show":
            {
                string? name = kv.Positional();
                kv.EnsureAllUsed();
                var data = ctx.Request("sim show", w =>
                {
                    if (name is not null)
                    {
                        w.WriteString("name", name);
                    }
                });
                if (ctx.Json)
                {
                    ctx.PrintJson(data);
                }
                else
                {
                    PrintShow(ctx.Out, data);
                }
                return 0;
            }
            case "link":
            {
                // sim link NAME up|down: the software VF's link status (what unplugging its cable would do)
                string name = kv.Positional() ?? throw new CliException("sim link needs a VF name and up|down");
                string state = kv.Positional() ?? throw new CliException("sim link NAME needs up or down");
                kv.EnsureAllUsed();
                if (state is not ("up" or "down"))
                {
                    throw new CliException($"sim link: state must be up or down, not \"{state}\"");
                }
                ctx.Request("sim link", w =>
                {
                    w.WriteString("name", name);
                    w.WriteBoolean("up", state == "up");
                });
                return 0;
            }
            default:
                throw new CliException($"unknown command \"sim {verb}\"; try \"ifcvf help\"");
        }
    }

    private static void PrintShow(TextWriter o, JsonElement data)
    {
        foreach (var vf in data.GetProperty("sim").EnumerateObject())
        {
            var v = vf.Value;
            string dev = v.TryGetProperty("dev", out var d) ? $" dev {d.GetString()}" : "";
            string why = v.TryGetProperty("needs_reset_reason", out var r) ? $" ({r.GetString()})" : "";
            o.WriteLine($"{vf.Name}: address {v.GetProperty("address").GetString()}{dev} status {v.GetProperty("status").GetString()}{why} strict {(v.GetProperty("strict").GetBoolean() ? "on" : "off")}");
            PrintViolations(o, "  ", v.GetProperty("spec_violations"));
        }
    }

    /// <summary>The spec checker's counters as `sim show` and `dev vstats show` print them.</summary>
    internal static void PrintViolations(TextWriter o, string prefix, JsonElement s)
    {
        long total = s.GetProperty("total").GetInt64();
        o.WriteLine($"{prefix}spec violations {total}");
        foreach (var rule in s.EnumerateObject())
        {
            if (rule.Name == "total")
            {
                continue;
            }
            var x = rule.Value;
            o.WriteLine($"{prefix}  {rule.Name} {x.GetProperty("count").GetInt64()} (VIRTIO 1.2 §{x.GetProperty("section").GetString()}){(x.GetProperty("ifc_extension").GetBoolean() ? " IFC VF extension" : "")}");
        }
    }

    internal static string Features(JsonElement o, string name) =>
        o.TryGetProperty(name, out var f) && f.ValueKind == JsonValueKind.Array
            ? string.Join(' ', f.EnumerateArray().Select(x => x.GetString()))
            : "";
}
