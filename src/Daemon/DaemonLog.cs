using System.Globalization;
using System.Text;

namespace IfcVdpa.Daemon;

/// <summary>Severity of a log line; lines below a log's <see cref="DaemonLog.MinLevel"/> are dropped.</summary>
public enum LogLevel
{
    Debug,
    Info,
    Warn,
    Error,
}

/// <summary>How a line is written: logfmt (<c>key=value</c> pairs) or one JSON object.</summary>
public enum LogFormat
{
    Logfmt,
    Json,
}

/// <summary>
/// Structured logs of `ifcvf daemon` and `ifcvf serve` (the one writer both use), one line per event, to
/// stderr by default. logfmt: <c>time=… level=info msg="…" key=value …</c>; JSON (`--log-format json`):
/// <c>{"time":"…","level":"info","msg":"…","key":value,…}</c>, the same keys in the same order. Values
/// are quoted and escaped, so a hostile string (a front-end's, a guest's) can neither forge a line nor
/// break the JSON. Nothing is logged per packet: the datapath logs only events (errors, state changes),
/// and repeated ones are counted, not logged.
/// </summary>
public sealed class DaemonLog(TextWriter writer, LogFormat format = LogFormat.Logfmt, LogLevel minLevel = LogLevel.Info)
{
    private readonly Lock _lock = new();

    public static DaemonLog Stderr { get; } = new(Console.Error);

    /// <summary>Lowest level written.</summary>
    public LogLevel MinLevel { get; set; } = minLevel;

    public LogFormat Format { get; } = format;

    /// <summary>A log on <paramref name="writer"/> from the `--log-format` and `--log-level` option values (null: the defaults, logfmt and info).</summary>
    /// <exception cref="ArgumentException">a value is not one of the accepted words (the message lists them)</exception>
    public static DaemonLog Create(TextWriter writer, string? format, string? level) =>
        new(writer, ParseFormat(format ?? "logfmt"), ParseLevel(level ?? "info"));

    public static LogFormat ParseFormat(string s) => s switch
    {
        "logfmt" => LogFormat.Logfmt,
        "json" => LogFormat.Json,
        _ => throw new ArgumentException($"--log-format must be logfmt or json, not \"{s}\""),
    };

    public static LogLevel ParseLevel(string s) => s switch
    {
        "debug" => LogLevel.Debug,
        "info" => LogLevel.Info,
        "warn" => LogLevel.Warn,
        "error" => LogLevel.Error,
        _ => throw new ArgumentException($"--log-level must be error, warn, info or debug, not \"{s}\""),
    };

    public static string Name(LogLevel level) => level switch
    {
        LogLevel.Debug => "debug",
        LogLevel.Info => "info",
        LogLevel.Warn => "warn",
        _ => "error",
    };

    public bool IsEnabled(LogLevel level) => level >= MinLevel;

    /// <summary>A sink for the layers below, which log free-text events: each string becomes a line's msg at <paramref name="level"/>.</summary>
    public Action<string> Lines(LogLevel level) => m => Write(level, m);

    public void Info(string msg, params (string Key, object? Value)[] fields) => Write(LogLevel.Info, msg, fields);

    public void Warn(string msg, params (string Key, object? Value)[] fields) => Write(LogLevel.Warn, msg, fields);

    public void Error(string msg, params (string Key, object? Value)[] fields) => Write(LogLevel.Error, msg, fields);

    public void Debug(string msg, params (string Key, object? Value)[] fields) => Write(LogLevel.Debug, msg, fields);

    public void Write(LogLevel level, string msg, params (string Key, object? Value)[] fields)
    {
        ArgumentNullException.ThrowIfNull(fields);
        if (!IsEnabled(level))
        {
            return;
        }
        string line = Format == LogFormat.Json ? JsonLine(level, msg, fields) : LogfmtLine(level, msg, fields);
        lock (_lock)
        {
            writer.WriteLine(line);
            writer.Flush();
        }
    }

    private static string Now() => DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture);

    private static string LogfmtLine(LogLevel level, string msg, (string Key, object? Value)[] fields)
    {
        var sb = new StringBuilder(128);
        sb.Append("time=").Append(Now());
        sb.Append(" level=").Append(Name(level));
        sb.Append(" msg=");
        AppendLogfmtValue(sb, msg);
        foreach (var (key, value) in fields)
        {
            sb.Append(' ').Append(key).Append('=');
            AppendLogfmtValue(sb, Text(value));
        }
        return sb.ToString();
    }

    private static string JsonLine(LogLevel level, string msg, (string Key, object? Value)[] fields)
    {
        var sb = new StringBuilder(160);
        sb.Append("{\"time\":\"").Append(Now()).Append("\",\"level\":\"").Append(Name(level)).Append("\",\"msg\":");
        AppendJsonString(sb, msg);
        foreach (var (key, value) in fields)
        {
            sb.Append(',');
            AppendJsonString(sb, key);
            sb.Append(':');
            switch (value)
            {
                case null:
                    sb.Append("null");
                    break;
                case bool b:
                    sb.Append(b ? "true" : "false");
                    break;
                case sbyte or byte or short or ushort or int or uint or long or ulong:
                    sb.Append(Text(value)); // integers stay numbers (a counter, a uid, a line number)
                    break;
                default:
                    AppendJsonString(sb, Text(value));
                    break;
            }
        }
        return sb.Append('}').ToString();
    }

    private static string Text(object? value) => Convert.ToString(value, CultureInfo.InvariantCulture) ?? "";

    private static void AppendJsonString(StringBuilder sb, string v) => AppendQuoted(sb, v, json: true);

    private static void AppendLogfmtValue(StringBuilder sb, string v)
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
        AppendQuoted(sb, v, json: false);
    }

    /// <summary>
    /// A double-quoted value with JSON's escapes (logfmt quotes the same way). In JSON a lone surrogate becomes
    /// U+FFFD, since it is not text and parsers would refuse the line; logfmt keeps it as it came.
    /// </summary>
    private static void AppendQuoted(StringBuilder sb, string v, bool json)
    {
        sb.Append('"');
        for (int i = 0; i < v.Length; i++)
        {
            char c = v[i];
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
                    else if (char.IsHighSurrogate(c) && i + 1 < v.Length && char.IsLowSurrogate(v[i + 1]))
                    {
                        sb.Append(c).Append(v[++i]);
                    }
                    else if (json && char.IsSurrogate(c))
                    {
                        sb.Append("\\ufffd");
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
