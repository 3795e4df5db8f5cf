using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>An error QEMU answered to a QMP command ("error": {"class", "desc"}).</summary>
public sealed class QmpException(string command, string errorClass, string description)
    : Exception($"QMP {command}: {errorClass}: {description}")
{
    public string ErrorClass { get; } = errorClass;

    public string Description { get; } = description;
}

/// <summary>What `query-migrate` reports (times in milliseconds; -1 when QEMU does not report them yet).</summary>
public sealed record MigrationInfo(string Status, long TotalTimeMs, long DowntimeMs, long SetupTimeMs, long RamTransferredBytes, string? ErrorDesc,
    long DirtySyncCount = -1, long RemainingBytes = -1, long ExpectedDowntimeMs = -1, long DirtyPagesRate = -1)
{
    public bool Finished => Status is "completed" or "failed" or "cancelled";

    public static MigrationInfo Parse(JsonElement r)
    {
        static long Num(JsonElement e, string name) =>
            e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt64() : -1;
        string status = r.TryGetProperty("status", out var s) ? s.GetString() ?? "" : "none";
        long ram = r.TryGetProperty("ram", out var ramObj) ? Num(ramObj, "transferred") : -1;
        string? err = r.TryGetProperty("error-desc", out var e) ? e.GetString() : null;
        // ram.dirty-sync-count = RAM passes (bitmap syncs) so far; remaining/expected-downtime say what QEMU
        // expected to copy with the guest stopped at its last poll while active
        long syncs = -1, remaining = -1, rate = -1;
        if (r.TryGetProperty("ram", out var ramStats))
        {
            syncs = Num(ramStats, "dirty-sync-count");
            remaining = Num(ramStats, "remaining");
            rate = Num(ramStats, "dirty-pages-rate");
        }
        return new MigrationInfo(status, Num(r, "total-time"), Num(r, "downtime"), Num(r, "setup-time"), ram, err,
            syncs, remaining, Num(r, "expected-downtime"), rate);
    }
}

/// <summary>
/// A QEMU Machine Protocol client: line-delimited JSON over QEMU's `-qmp unix:PATH,server=on,wait=off`
/// socket. Reads the greeting, enters command mode (`qmp_capabilities`) and runs one command at a time;
/// asynchronous events that arrive in between are kept in <see cref="Events"/>.
/// </summary>
public sealed class QmpClient : IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly StreamReader _reader;
    private readonly List<string> _events = [];
    private readonly Dictionary<string, DateTimeOffset> _lastEventAt = [];
    private readonly Lock _gate = new();

    /// <summary>QEMU's own timestamp of the latest event named <paramref name="name"/> (host wall clock), or null.</summary>
    public DateTimeOffset? LastEventAt(string name)
    {
        lock (_gate)
        {
            return _lastEventAt.TryGetValue(name, out var t) ? t : null;
        }
    }

    /// <summary>Event names seen so far (STOP, RESUME, MIGRATION, ...), oldest first.</summary>
    public IReadOnlyList<string> Events
    {
        get
        {
            lock (_gate)
            {
                return [.. _events];
            }
        }
    }

    private QmpClient(Socket socket)
    {
        _socket = socket;
        _socket.ReceiveTimeout = 30_000;
        _stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(_stream, Encoding.UTF8);
        using var greeting = ReadMessage();
        if (!greeting.RootElement.TryGetProperty("QMP", out _))
        {
            throw new InvalidOperationException("not a QMP greeting: " + greeting.RootElement.GetRawText());
        }
        Execute("qmp_capabilities");
    }

    /// <summary>Connects once QEMU has created <paramref name="path"/> (it does so early in its start-up).</summary>
    public static QmpClient Connect(string path, TimeSpan timeout, Func<bool> qemuExited)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                s.Connect(new UnixDomainSocketEndPoint(path));
                return new QmpClient(s);
            }
            catch (SocketException) when (DateTime.UtcNow < deadline && !qemuExited())
            {
                s.Dispose();
                Thread.Sleep(100); // QEMU has not bound its QMP socket yet: bounded poll
            }
            catch
            {
                s.Dispose();
                throw;
            }
        }
    }

    private JsonDocument ReadMessage()
    {
        string? line = _reader.ReadLine() ?? throw new IOException("QMP connection closed by QEMU");
        return JsonDocument.Parse(line);
    }

    /// <summary>Runs <paramref name="command"/> with string/number/bool <paramref name="arguments"/>; returns a copy of "return".</summary>
    /// <exception cref="QmpException">QEMU answered with an error.</exception>
    public JsonElement Execute(string command, IReadOnlyDictionary<string, object>? arguments = null)
    {
        using var buf = new MemoryStream();
        using (var w = new Utf8JsonWriter(buf))
        {
            w.WriteStartObject();
            w.WriteString("execute", command);
            if (arguments is not null)
            {
                w.WriteStartObject("arguments");
                foreach (var (k, v) in arguments)
                {
                    switch (v)
                    {
                        case string str: w.WriteString(k, str); break;
                        case bool b: w.WriteBoolean(k, b); break;
                        case long l: w.WriteNumber(k, l); break;
                        case int i: w.WriteNumber(k, i); break;
                        default: throw new ArgumentException($"QMP argument {k}: unsupported type {v.GetType()}", nameof(arguments));
                    }
                }
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        buf.WriteByte((byte)'\n');
        _stream.Write(buf.ToArray());
        while (true)
        {
            using var doc = ReadMessage();
            var root = doc.RootElement;
            if (root.TryGetProperty("event", out var ev))
            {
                string name = ev.GetString() ?? "?";
                DateTimeOffset? at = null;
                if (root.TryGetProperty("timestamp", out var ts) && ts.TryGetProperty("seconds", out var sec) && sec.TryGetInt64(out long secs)
                    && ts.TryGetProperty("microseconds", out var usec) && usec.TryGetInt64(out long usecs) && secs > 0)
                {
                    at = DateTimeOffset.FromUnixTimeSeconds(secs).AddTicks(usecs * 10);
                }
                lock (_gate)
                {
                    _events.Add(name);
                    if (at is { } t)
                    {
                        _lastEventAt[name] = t;
                    }
                }
                continue;
            }
            if (root.TryGetProperty("error", out var err))
            {
                throw new QmpException(command,
                    err.TryGetProperty("class", out var c) ? c.GetString() ?? "" : "",
                    err.TryGetProperty("desc", out var d) ? d.GetString() ?? "" : err.GetRawText());
            }
            if (root.TryGetProperty("return", out var ret))
            {
                return ret.Clone();
            }
        }
    }

    /// <summary>`query-status`: running, inmigrate, postmigrate, paused, ...</summary>
    public string Status() => Execute("query-status").GetProperty("status").GetString() ?? "";

    public MigrationInfo QueryMigrate() => MigrationInfo.Parse(Execute("query-migrate"));

    /// <summary>`migrate` to <paramref name="uri"/> (e.g. unix:/path); returns at once, the migration runs in QEMU.</summary>
    public void Migrate(string uri) => Execute("migrate", new Dictionary<string, object> { ["uri"] = uri });

    public void MigrateCancel() => Execute("migrate_cancel");

    /// <summary>`quit`: QEMU exits (the connection closes; a missing answer is fine).</summary>
    public void Quit()
    {
        try
        {
            Execute("quit");
        }
        catch (IOException)
        {
        }
    }

    public void Dispose()
    {
        _reader.Dispose();
        _stream.Dispose();
        _socket.Dispose();
    }
}
