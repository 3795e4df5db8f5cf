using System.Text;
using System.Text.Json;
using IfcVdpa.Daemon;

namespace IfcVdpa.Vdpa.Tests;

/// <summary>The one log writer of `daemon` and `serve`: logfmt and JSON lines, the same keys, levels.</summary>
public class DaemonLogTests
{
    private static (DaemonLog Log, StringWriter Out) New(LogFormat format, LogLevel level = LogLevel.Info)
    {
        var w = new StringWriter();
        return (new DaemonLog(w, format, level), w);
    }

    private static string[] Lines(StringWriter w) => w.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>A logfmt line's keys and values (values unquoted and unescaped), in order: the test's own reader.</summary>
    private static List<(string Key, string Value)> ParseLogfmt(string line)
    {
        var result = new List<(string, string)>();
        int i = 0;
        while (i < line.Length)
        {
            int eq = line.IndexOf('=', i);
            Assert.True(eq > i, $"no key=value at {i}: {line}");
            string key = line[i..eq];
            var v = new StringBuilder();
            i = eq + 1;
            if (i < line.Length && line[i] == '"')
            {
                for (i++; line[i] != '"'; i++)
                {
                    if (line[i] == '\\')
                    {
                        i++;
                        v.Append(line[i] switch
                        {
                            'n' => "\n",
                            'r' => "\r",
                            't' => "\t",
                            'u' => ((char)Convert.ToInt32(line.Substring(i + 1, 4), 16)).ToString(),
                            var c => c.ToString(),
                        });
                        if (line[i] == 'u')
                        {
                            i += 4;
                        }
                    }
                    else
                    {
                        v.Append(line[i]);
                    }
                }
                i++;
            }
            else
            {
                while (i < line.Length && line[i] != ' ')
                {
                    v.Append(line[i++]);
                }
            }
            result.Add((key, v.ToString()));
            Assert.True(i == line.Length || line[i] == ' ', $"garbage after {key}: {line}");
            i++;
        }
        return result;
    }

    private static readonly (string, object?)[] Fields =
    [
        ("dev", "vm 0"), ("queue", 3), ("uid", 4321u), ("pages", 1L << 40), ("ok", true), ("none", null),
        ("error", "bad \"ring\" at C:\\x\nnext line\u0001\ud800 end"),
    ];

    [Fact]
    public void JsonLinesAreObjectsWithTheLogfmtKeys()
    {
        var (json, jw) = New(LogFormat.Json);
        var (logfmt, lw) = New(LogFormat.Logfmt);
        json.Warn("front-end \"x\" gone", Fields);
        logfmt.Warn("front-end \"x\" gone", Fields);

        string line = Assert.Single(Lines(jw));
        using var doc = JsonDocument.Parse(line);
        var root = doc.RootElement;
        Assert.Equal(JsonValueKind.Object, root.ValueKind);
        var keys = root.EnumerateObject().Select(p => p.Name).ToList();
        Assert.Equal(["time", "level", "msg", "dev", "queue", "uid", "pages", "ok", "none", "error"], keys);
        Assert.Equal(keys, ParseLogfmt(Assert.Single(Lines(lw))).Select(f => f.Key));
        Assert.True(DateTime.TryParse(root.GetProperty("time").GetString(), System.Globalization.CultureInfo.InvariantCulture,
            System.Globalization.DateTimeStyles.AdjustToUniversal, out _), line);
        Assert.Equal("warn", root.GetProperty("level").GetString());
        Assert.Equal("front-end \"x\" gone", root.GetProperty("msg").GetString());
        Assert.Equal("vm 0", root.GetProperty("dev").GetString());
        Assert.Equal(3, root.GetProperty("queue").GetInt32());
        Assert.Equal(4321u, root.GetProperty("uid").GetUInt32());
        Assert.Equal(1L << 40, root.GetProperty("pages").GetInt64());
        Assert.True(root.GetProperty("ok").GetBoolean());
        Assert.Equal(JsonValueKind.Null, root.GetProperty("none").ValueKind);
        // a hostile string survives whole (a lone surrogate, which is not text, becomes U+FFFD)
        Assert.Equal("bad \"ring\" at C:\\x\nnext line\u0001\ufffd end", root.GetProperty("error").GetString());
    }

    [Fact]
    public void LogfmtQuotesValuesWithSpacesQuotesAndNewlinesOnOneLine()
    {
        var (log, w) = New(LogFormat.Logfmt);
        log.Info("session failed", ("plain", "vdpa0"), ("spaced", "a b"), ("quoted", "say \"hi\""), ("eq", "k=v"),
            ("multi", "one\ntwo"), ("empty", ""), ("path", "C:\\dir"));
        string line = Assert.Single(Lines(w));
        Assert.Matches(@"^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info msg=""session failed"" ", line);
        Assert.Contains(" plain=vdpa0 ", line, StringComparison.Ordinal);
        Assert.Contains(" spaced=\"a b\" ", line, StringComparison.Ordinal);
        Assert.Contains(" quoted=\"say \\\"hi\\\"\" ", line, StringComparison.Ordinal);
        Assert.Contains(" eq=\"k=v\" ", line, StringComparison.Ordinal);
        Assert.Contains(" multi=\"one\\ntwo\" ", line, StringComparison.Ordinal);
        Assert.Contains(" empty=\"\" ", line, StringComparison.Ordinal);
        Assert.EndsWith(" path=\"C:\\\\dir\"", line, StringComparison.Ordinal);
        var f = ParseLogfmt(line);
        Assert.Equal(("quoted", "say \"hi\""), f[5]);
        Assert.Equal(("multi", "one\ntwo"), f[7]);
    }

    [Theory]
    [InlineData(LogLevel.Debug, "debug,info,warn,error")]
    [InlineData(LogLevel.Info, "info,warn,error")]
    [InlineData(LogLevel.Warn, "warn,error")]
    [InlineData(LogLevel.Error, "error")]
    public void LevelFilteringDropsLowerLevels(LogLevel min, string written)
    {
        foreach (var format in new[] { LogFormat.Logfmt, LogFormat.Json })
        {
            var (log, w) = New(format, min);
            log.Debug("d");
            log.Info("i");
            log.Lines(LogLevel.Warn)("w"); // the sink the layers below log through
            log.Error("e");
            var levels = Lines(w).Select(l => format == LogFormat.Json
                ? JsonDocument.Parse(l).RootElement.GetProperty("level").GetString()
                : ParseLogfmt(l).Single(x => x.Key == "level").Value);
            Assert.Equal(written, string.Join(',', levels));
        }
    }

    [Theory]
    [InlineData(null, null, LogFormat.Logfmt, LogLevel.Info)]
    [InlineData("json", "debug", LogFormat.Json, LogLevel.Debug)]
    [InlineData("logfmt", "error", LogFormat.Logfmt, LogLevel.Error)]
    public void OptionsSelectFormatAndLevel(string? format, string? level, LogFormat f, LogLevel l)
    {
        var log = DaemonLog.Create(TextWriter.Null, format, level);
        Assert.Equal((f, l), (log.Format, log.MinLevel));
    }

    [Theory]
    [InlineData("xml", null, "--log-format must be logfmt or json, not \"xml\"")]
    [InlineData(null, "trace", "--log-level must be error, warn, info or debug, not \"trace\"")]
    [InlineData(null, "INFO", "--log-level must be")]
    public void BadOptionsAreRefusedByName(string? format, string? level, string message) =>
        Assert.StartsWith(message, Assert.Throws<ArgumentException>(() => DaemonLog.Create(TextWriter.Null, format, level)).Message, StringComparison.Ordinal);
}
