using System.Text.Json;

namespace IfcVdpa.Cli;

/// <summary>`ifcvf mgmtdev show [NAME]`.</summary>
public static class MgmtdevCommand
{
    public static int Run(CliContext ctx, string verb, IEnumerable<string> args)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        if (verb is not ("show" or "list" or ""))
        {
            throw new CliException($"unknown command \"mgmtdev {verb}\"; try \"ifcvf help\"");
        }
        var kv = new Keywords(args);
        string? name = kv.Positional();
        kv.EnsureAllUsed();
        var data = ctx.Request("mgmtdev show", w =>
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
            PrintHuman(ctx.Out, data);
        }
        return 0;
    }

    /// <summary>Like `vdpa mgmtdev show`: the name line, then indented attributes.</summary>
    internal static void PrintHuman(TextWriter o, JsonElement data)
    {
        if (!data.TryGetProperty("mgmtdev", out var all))
        {
            return;
        }
        foreach (var m in all.EnumerateObject())
        {
            var v = m.Value;
            string dev = v.TryGetProperty("dev", out var d) ? $" dev {d.GetString()}" : "";
            string cpu = v.TryGetProperty("cpu", out var c) ? $" cpu {c.GetInt32()}" : "";
            o.WriteLine($"{m.Name}: address {v.GetProperty("address").GetString()} msix_vectors {v.GetProperty("msix_vectors").GetInt32()}{dev}{cpu}");
            o.WriteLine($"  supported_classes {string.Join(' ', v.GetProperty("supported_classes").EnumerateArray().Select(x => x.GetString()))}");
            if (v.TryGetProperty("backend", out var backend))
            {
                o.WriteLine($"  backend {backend.GetString()}");
            }
            o.WriteLine($"  max_supported_vqs {v.GetProperty("max_supported_vqs").GetInt32()}");
            o.WriteLine($"  dev_features {SimCommand.Features(v, "dev_features")}");
        }
    }
}
