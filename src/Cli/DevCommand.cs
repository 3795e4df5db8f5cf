using System.Globalization;
using System.Text.Json;
using System.Text;
using IfcVdpa.Daemon;
using IfcVdpa.Virtio;

namespace IfcVdpa.Cli;

/// <summary>`ifcvf dev add|del|show|config show|vstats show` (vdpa dev).</summary>
public static class DevCommand
{
    public static int Run(CliContext ctx, string verb, IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ArgumentNullException.ThrowIfNull(args);
        switch (verb)
        {
            case "add":
                return Add(ctx, new Keywords(args));
            case "del":
            {
                var kv = new Keywords(args);
                string name = kv.Positional() ?? throw new CliException("dev del needs a device name");
                kv.EnsureAllUsed();
                ctx.Request("dev del", w => w.WriteString("name", name));
                return 0;
            }
            case "attach":
            {
                // dev attach NAME virtio tap TAPNAME [queues N]
                var kv = new Keywords(args);
                string name = kv.Positional() ?? throw new CliException("dev attach needs a device name");
                string consumer = kv.Positional() ?? throw new CliException("dev attach needs a consumer: virtio tap TAPNAME, or vduse [ VDUSENAME ]");
                if (consumer == "vduse")
                {
                    // dev attach NAME vduse [ VDUSENAME ]: the device joins the kernel's vDPA bus through VDUSE
                    string? vduseName = kv.Positional();
                    kv.EnsureAllUsed();
                    ctx.Request("dev attach", w =>
                    {
                        w.WriteString("name", name);
                        w.WriteString("consumer", consumer);
                        if (vduseName is not null)
                        {
                            w.WriteString("vduse", vduseName);
                        }
                    });
                    return 0;
                }
                string tap = kv.Get("tap") ?? throw new CliException("dev attach NAME virtio needs \"tap TAPNAME\"");
                int queues = kv.Int("queues", 1);
                kv.EnsureAllUsed();
                ctx.Request("dev attach", w =>
                {
                    w.WriteString("name", name);
                    w.WriteString("consumer", consumer);
                    w.WriteString("tap", tap);
                    w.WriteNumber("queues", queues);
                });
                return 0;
            }
            case "detach":
            {
                var kv = new Keywords(args);
                string name = kv.Positional() ?? throw new CliException("dev detach needs a device name");
                kv.EnsureAllUsed();
                ctx.Request("dev detach", w => w.WriteString("name", name));
                return 0;
            }
            case "show" or "list" or "":
                return Show(ctx, new Keywords(args));
            case "config" when args.Count > 0 && args[0] == "show":
                return ConfigShow(ctx, new Keywords(args.Skip(1)));
            case "vstats" when args.Count > 0 && args[0] == "show":
                return VstatsShow(ctx, new Keywords(args.Skip(1)));
            default:
                throw new CliException($"unknown command \"dev {verb}{(args.Count > 0 ? " " + args[0] : "")}\"; try \"ifcvf help\"");
        }
    }

    private static int Add(CliContext ctx, Keywords kv)
    {
        string name = kv.Get("name") ?? throw new CliException("dev add needs \"name NAME\"");
        string mgmtdev = kv.Get("mgmtdev") ?? throw new CliException("dev add needs \"mgmtdev MGMTDEV\" (see \"ifcvf mgmtdev show\")");
        string? mac = kv.Get("mac");
        int mtu = kv.Int("mtu", 0);
        int maxVqp = kv.Int("max_vqp", 0);
        string? features = kv.Get("device_features");
        string? capacity = kv.Get("capacity");
        int blkSize = kv.Int("blk_size", 0);
        bool readOnly = kv.Flag("readonly");
        int queues = kv.Int("queues", 0);
        kv.EnsureAllUsed();
        long capacitySectors = 0;
        if (capacity is not null && (!long.TryParse(capacity, NumberStyles.None, CultureInfo.InvariantCulture, out capacitySectors) || capacitySectors < 1))
        {
            throw new CliException($"capacity must be a number of 512-byte sectors, not \"{capacity}\"");
        }
        if (mac is not null && MacAddress.TryParse(mac) is null)
        {
            throw new CliException($"mac must look like 00:e0:ed:00:00:01, not \"{mac}\"");
        }
        if (features is not null && ControlArgs.ParseHex64(features) is null)
        {
            throw new CliException($"device_features must be a hex number like 0x300000020, not \"{features}\"");
        }
        var data = ctx.Request("dev add", w =>
        {
            w.WriteString("name", name);
            w.WriteString("mgmtdev", mgmtdev);
            if (mac is not null)
            {
                w.WriteString("mac", mac);
            }
            if (mtu != 0)
            {
                w.WriteNumber("mtu", mtu);
            }
            if (maxVqp != 0)
            {
                w.WriteNumber("max_vqp", maxVqp);
            }
            if (features is not null)
            {
                w.WriteString("device_features", features);
            }
            if (capacity is not null)
            {
                w.WriteNumber("capacity", capacitySectors);
            }
            if (blkSize != 0)
            {
                w.WriteNumber("blk_size", blkSize);
            }
            if (readOnly)
            {
                w.WriteBoolean("readonly", true);
            }
            if (queues != 0)
            {
                w.WriteNumber("queues", queues);
            }
        });
        if (ctx.Json)
        {
            ctx.PrintJson(data);
        }
        return 0;
    }

    private static int Show(CliContext ctx, Keywords kv)
    {
        string? name = kv.Positional();
        kv.EnsureAllUsed();
        var data = ctx.Request("dev show", w => WriteName(w, name));
        if (ctx.Json)
        {
            ctx.PrintJson(data);
            return 0;
        }
        foreach (var d in data.GetProperty("dev").EnumerateObject())
        {
            var v = d.Value;
            ctx.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{d.Name}: type {v.GetProperty("type").GetString()} mgmtdev {v.GetProperty("mgmtdev").GetString()} vendor_id {v.GetProperty("vendor_id").GetInt64()} max_vqs {v.GetProperty("max_vqs").GetInt32()} max_vq_size {v.GetProperty("max_vq_size").GetInt32()}"));
            if (v.TryGetProperty("consumer", out var consumer))
            {
                ctx.Out.WriteLine($"  consumer {consumer.GetString()} {v.GetProperty("consumer_detail").GetString()}");
            }
        }
        return 0;
    }

    private static void WriteName(Utf8JsonWriter w, string? name)
    {
        if (name is not null)
        {
            w.WriteString("name", name);
        }
    }

    private static int ConfigShow(CliContext ctx, Keywords kv)
    {
        string? name = kv.Positional();
        kv.EnsureAllUsed();
        var data = ctx.Request("dev config show", w => WriteName(w, name));
        if (ctx.Json)
        {
            ctx.PrintJson(data);
            return 0;
        }
        foreach (var d in data.GetProperty("config").EnumerateObject())
        {
            var v = d.Value;
            if (v.TryGetProperty("capacity", out _))
            {
                PrintBlockConfig(ctx.Out, d.Name, v);
                continue;
            }
            var sb = new StringBuilder();
            sb.Append(d.Name).Append(':');
            if (v.TryGetProperty("mac", out var mac))
            {
                sb.Append(" mac ").Append(mac.GetString());
            }
            sb.Append(" link ").Append(v.GetProperty("link").GetString());
            sb.Append(" link_announce ").Append(v.GetProperty("link_announce").GetBoolean() ? "true" : "false");
            sb.Append(" max_vq_pairs ").Append(v.GetProperty("max_vq_pairs").GetInt32().ToString(CultureInfo.InvariantCulture));
            if (v.TryGetProperty("mtu", out var mtu))
            {
                sb.Append(" mtu ").Append(mtu.GetInt32().ToString(CultureInfo.InvariantCulture));
            }
            ctx.Out.WriteLine(sb.ToString());
            if (v.TryGetProperty("negotiated_features", out _))
            {
                ctx.Out.WriteLine($"  negotiated_features {SimCommand.Features(v, "negotiated_features")}");
            }
            ctx.Out.WriteLine($"  dev_features {SimCommand.Features(v, "dev_features")}");
        }
        return 0;
    }

    /// <summary>
    /// A block device's config as `vdpa dev config show` prints it for block devices: the name line with the
    /// numeric fields in the order of struct virtio_blk_config, then read-only / flush and the features.
    /// </summary>
    private static void PrintBlockConfig(TextWriter o, string name, JsonElement v)
    {
        var sb = new StringBuilder();
        sb.Append(name).Append(':');
        foreach (var p in v.EnumerateObject())
        {
            if (p.Value.ValueKind == JsonValueKind.Number)
            {
                sb.Append(' ').Append(p.Name).Append(' ').Append(p.Value.GetRawText());
            }
            else if (p.Value.ValueKind is JsonValueKind.True or JsonValueKind.False)
            {
                sb.Append(' ').Append(p.Name).Append(' ').Append(p.Value.GetBoolean() ? "true" : "false");
            }
        }
        o.WriteLine(sb.ToString());
        if (v.TryGetProperty("negotiated_features", out _))
        {
            o.WriteLine($"  negotiated_features {SimCommand.Features(v, "negotiated_features")}");
        }
        o.WriteLine($"  dev_features {SimCommand.Features(v, "dev_features")}");
    }

    private static int VstatsShow(CliContext ctx, Keywords kv)
    {
        string? q = kv.Get("qidx");
        string name = kv.Positional() ?? throw new CliException("dev vstats show needs a device name");
        kv.EnsureAllUsed();
        int? qidx = null;
        if (q is not null)
        {
            if (!int.TryParse(q, NumberStyles.None, CultureInfo.InvariantCulture, out int qi) || qi > 65535)
            {
                throw new CliException($"qidx must be a queue index, not \"{q}\"");
            }
            qidx = qi;
        }
        var data = ctx.Request("dev vstats show", w =>
        {
            w.WriteString("name", name);
            if (qidx is int i)
            {
                w.WriteNumber("qidx", i);
            }
        });
        if (ctx.Json)
        {
            ctx.PrintJson(data);
            return 0;
        }
        var v = data.GetProperty("vstats").GetProperty(name);
        if (v.TryGetProperty("dirty_log", out var dl) && (dl.GetProperty("enabled").GetBoolean() || dl.GetProperty("pages").GetInt64() != 0))
        {
            ctx.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{name}: dirty_log {(dl.GetProperty("enabled").GetBoolean() ? "on" : "off")} pages {dl.GetProperty("pages").GetInt64()}"));
        }
        // The spec checker's lines: a strict VF, or one whose driver broke a virtio rule (IFC VF extensions alone,
        // such as a provisioned MAC, stay in -j only).
        if (v.TryGetProperty("spec_violations", out var spec) &&
            (v.GetProperty("strict").GetBoolean() || spec.EnumerateObject().Any(r => r.Name != "total" && !r.Value.GetProperty("ifc_extension").GetBoolean())))
        {
            ctx.Out.WriteLine($"{name}: strict {(v.GetProperty("strict").GetBoolean() ? "on" : "off")}");
            SimCommand.PrintViolations(ctx.Out, $"{name}: ", spec);
        }
        if (v.TryGetProperty("queues", out var queues))
        {
            foreach (var one in queues.EnumerateArray())
            {
                ctx.Out.WriteLine(QueueLine(name, one));
            }
            ctx.Out.WriteLine($"{name}: total {Counters(v.GetProperty("total"))}");
        }
        else
        {
            ctx.Out.WriteLine(QueueLine(name, v));
        }
        return 0;
    }

    private static string QueueLine(string name, JsonElement q) =>
        string.Create(CultureInfo.InvariantCulture,
            $"{name}: queue_type {q.GetProperty("queue_type").GetString()} queue_index {q.GetProperty("queue_index").GetInt32()} {Counters(q)}");

    private static string Counters(JsonElement q) =>
        string.Create(CultureInfo.InvariantCulture,
            $"packets {q.GetProperty("packets").GetInt64()} bytes {q.GetProperty("bytes").GetInt64()} kicks {q.GetProperty("kicks").GetInt64()} interrupts {q.GetProperty("interrupts").GetInt64()} errors {q.GetProperty("errors").GetInt64()} drops {q.GetProperty("drops").GetInt64()}");
}
