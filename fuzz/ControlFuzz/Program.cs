using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using IfcVdpa.Daemon;
using IfcVdpa.Fuzz;

// Target: control-socket request parsing and the command handlers behind it. One real ControlServer with
// every daemon command (ControlCommands.Register) on a private socket; each input is sent as one request
// over a fresh connection. The reply must be one JSON object {"ok":true,"data":…} or {"ok":false,"error":"…"},
// never an "internal error" (an unexpected exception in a handler). Software VFs and devices created by an
// input are removed after it. Requests with host side effects outside the process (vhost add: a socket at
// any path; dev attach and tap:/pcap: backends: TAP devices, capture files) are skipped here: the hostile
// suite covers them.
return FuzzDriver.Run(args, ControlTarget.Run, ControlTarget.Seeds);

internal static class ControlTarget
{
    private static readonly Lazy<(ControlServer Server, DeviceRegistry Registry)> s_daemon = new(() =>
    {
        var log = new DaemonLog(TextWriter.Null);
        var registry = new DeviceRegistry(log);
        string dir = Directory.CreateTempSubdirectory("ifcvf-ctlfuzz").FullName;
        var server = new ControlServer(new ControlServerOptions { Path = Path.Combine(dir, "ctl.sock"), ReadTimeout = TimeSpan.FromSeconds(2) }, log);
        ControlCommands.Register(server, registry);
        server.Start();
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            server.Dispose();
            registry.Dispose();
            Directory.Delete(dir, true);
        };
        return (server, registry);
    });

    public static void Run(ReadOnlySpan<byte> input)
    {
        if (HasOutsideEffects(input))
        {
            return;
        }
        var (server, registry) = s_daemon.Value;
        byte[] reply;
        using (var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            s.Connect(new UnixDomainSocketEndPoint(server.Path));
            s.ReceiveTimeout = 10000;
            try
            {
                s.Send(input);
                s.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException)
            {
                // the server may answer (and close) before reading everything: a reply is still expected
            }
            using var ms = new MemoryStream();
            var buf = new byte[4096];
            int n;
            while ((n = s.Receive(buf)) > 0)
            {
                ms.Write(buf, 0, n);
            }
            reply = ms.ToArray();
        }
        Check(reply);
        foreach (var d in registry.Devices.ToArray())
        {
            registry.DeleteDevice(d.Name);
        }
        foreach (var m in registry.ManagementDevices.Where(m => m.BusName == "sim").ToArray())
        {
            registry.RemoveManagementDevice(m.Name);
        }
    }

    private static void Check(byte[] reply)
    {
        if (reply.Length == 0 || reply[^1] != (byte)'\n' || Array.IndexOf(reply, (byte)'\n') != reply.Length - 1)
        {
            throw new InvalidOperationException($"BUG: reply is not one line: \"{Encoding.UTF8.GetString(reply)}\"");
        }
        using var doc = JsonDocument.Parse(reply.AsMemory(0, reply.Length - 1));
        var root = doc.RootElement;
        bool ok = root.GetProperty("ok").GetBoolean();
        if (!ok)
        {
            string error = root.GetProperty("error").GetString() ?? "";
            if (error.StartsWith("internal error", StringComparison.Ordinal))
            {
                throw new InvalidOperationException($"BUG: handler failed unexpectedly: {error}");
            }
        }
        else if (root.GetProperty("data").ValueKind != JsonValueKind.Object)
        {
            throw new InvalidOperationException("BUG: ok reply without a data object");
        }
    }

    /// <summary>True for requests the harness must not send (see the file comment).</summary>
    private static bool HasOutsideEffects(ReadOnlySpan<byte> input)
    {
        int nl = input.IndexOf((byte)'\n');
        var req = nl >= 0 ? input[..nl] : input;
        try
        {
            using var doc = JsonDocument.Parse(req.ToArray(), new JsonDocumentOptions { MaxDepth = 8 });
            return Strings(doc.RootElement).Any(s => s.Contains("vhost", StringComparison.OrdinalIgnoreCase)
                || s.Contains("attach", StringComparison.OrdinalIgnoreCase) || s.Contains("tap:", StringComparison.Ordinal)
                || s.Contains("pcap:", StringComparison.Ordinal));
        }
        catch (JsonException)
        {
            return false; // not JSON: the server refuses it before any handler runs
        }
        catch (InvalidOperationException)
        {
            // Invalid UTF-8 inside a string: be conservative, look at the raw bytes.
            string raw = Encoding.Latin1.GetString(req);
            return raw.Contains("vhost", StringComparison.OrdinalIgnoreCase) || raw.Contains("attach", StringComparison.OrdinalIgnoreCase)
                || raw.Contains("tap:", StringComparison.Ordinal) || raw.Contains("pcap:", StringComparison.Ordinal)
                || raw.Contains("\\u", StringComparison.Ordinal);
        }
    }

    private static IEnumerable<string> Strings(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => [e.GetString() ?? ""],
        JsonValueKind.Object => e.EnumerateObject().SelectMany(p => Strings(p.Value).Prepend(p.Name)),
        JsonValueKind.Array => e.EnumerateArray().SelectMany(Strings),
        _ => [],
    };

    public static IEnumerable<(string, byte[])> Seeds()
    {
        string[] requests =
        [
            """{"cmd":"ping"}""",
            """{"cmd":"sim add","args":{"count":2,"queues":2}}""",
            """{"cmd":"sim add","args":{"count":2,"backend":"pair","mac":"02:00:00:00:00:01"}}""",
            """{"cmd":"mgmtdev show"}""",
            """{"cmd":"dev add","args":{"name":"vdpa0","mgmtdev":"sim/ifcvf0","mac":"02:00:00:00:00:09","max_vqp":1,"mtu":1500}}""",
            """{"cmd":"dev show","args":{"name":"vdpa0"}}""",
            """{"cmd":"dev config show","args":{"name":"vdpa0"}}""",
            """{"cmd":"dev vstats show","args":{"name":"vdpa0","qidx":0}}""",
            """{"cmd":"dev del","args":{"name":"vdpa0"}}""",
            """{"cmd":"sim del","args":{"name":"sim/ifcvf0"}}""",
            """{"cmd":"dev add","args":{"name":"x","device_features":"0x100000020"}}""",
            """{"cmd":"unknown","args":[1,2,{"a":null}]}""",
            "[]",
        ];
        int i = 0;
        foreach (var r in requests)
        {
            yield return ($"req-{i++:d2}", Encoding.UTF8.GetBytes(r + "\n"));
        }
    }
}
