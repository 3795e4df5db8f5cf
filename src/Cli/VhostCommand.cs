namespace IfcVdpa.Cli;

/// <summary>`ifcvf vhost add NAME socket PATH [client] [owner U] [group G] [mode OCTAL]` / `vhost del NAME`: a daemon device served over vhost-user.</summary>
public static class VhostCommand
{
    public static int Run(CliContext ctx, string verb, IEnumerable<string> args)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        var kv = new Keywords(args);
        switch (verb)
        {
            case "add":
            {
                string name = kv.Positional() ?? throw new CliException("vhost add needs a device name (see \"ifcvf dev show\")");
                string socket = kv.Get("socket") ?? throw new CliException("vhost add NAME needs \"socket PATH\"");
                bool client = kv.Flag("client");
                string? owner = kv.Get("owner");
                string? group = kv.Get("group");
                string? mode = kv.Get("mode");
                kv.EnsureAllUsed();
                ctx.Request("vhost add", w =>
                {
                    w.WriteString("name", name);
                    w.WriteString("socket", Path.GetFullPath(socket));
                    w.WriteBoolean("client", client);
                    foreach (var (k, v) in new[] { ("owner", owner), ("group", group), ("mode", mode) })
                    {
                        if (v is not null)
                        {
                            w.WriteString(k, v);
                        }
                    }
                });
                return 0;
            }
            case "del":
            {
                string name = kv.Positional() ?? throw new CliException("vhost del needs a device name");
                kv.EnsureAllUsed();
                ctx.Request("vhost del", w => w.WriteString("name", name));
                return 0;
            }
            default:
                throw new CliException($"unknown command \"vhost {verb}\"; try \"ifcvf help\"");
        }
    }
}
