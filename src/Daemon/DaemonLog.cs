using System.Globalization;
using System.Text;

namespace IfcVdpa.Daemon;

/// <summary>
/// Structured logs, one logfmt line per event (<c>time=… level=info msg="…" key=value …</c>), written
/// to stderr by default. Values are quoted and escaped, so a hostile string cannot forge a line.
/// </summary>
public sealed class DaemonLog(TextWriter writer)
{
    private readonly Lock _lock = new();

    public static DaemonLog Stderr { get; } = new(Console.Error);

    /// <summary>Lowest level written: debug, info, warn, error.</summary>
    public string MinLevel { get; set; } = "info";

    public void Info(string msg, params (string Key, object? Value)[] fields) => Write("info", msg, fields);

    public void Warn(string msg, params (string Key, object? Value)[] fields) => Write("warn", msg, fields);

    public void Error(string msg, params (string Key, object? Value)[] fields) => Write("error", msg, fields);

    public void Debug(string msg, params (string Key, object? Value)[] fields) => Write("debug", msg, fields);

    private static int Rank(string level) => level switch
    {
        "debug" => 0,
        "info" => 1,
        "warn" => 2,
        _ => 3,
    };

    public void Write(string level, string msg, params (string Key, object? Value)[] fields)
    {
        ArgumentNullException.ThrowIfNull(fields);
        if (Rank(level) < Rank(MinLevel))
        {
            return;
        }
        var sb = new StringBuilder(128);
        sb.Append("time=").Append(DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture));
        sb.Append(" level=").Append(level);
        sb.Append(" msg=");
        AppendValue(sb, msg);
        foreach (var (key, value) in fields)
        {
            sb.Append(' ').Append(key).Append('=');
            AppendValue(sb, Convert.ToString(value, CultureInfo.InvariantCulture) ?? "");
        }
        lock (_lock)
        {
            writer.WriteLine(sb.ToString());
            writer.Flush();
        }
    }

    private static void AppendValue(StringBuilder sb, string v)
    {
        bool plain = v.Length > 0;
        foreach (char c in v)
        {
            if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c > '~')
            {
                plain = false;
                break;
            }
        }
        if (plain)
        {
            sb.Append(v);
            return;
        }
        sb.Append('"');
        foreach (char c in v)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c < ' ' || c == '\x7f')
                    {
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }
                    break;
            }
        }
        sb.Append('"');
    }
}
