using System.Globalization;
using System.Text.Json;
using IfcVdpa.Virtio;

namespace IfcVdpa.Daemon;

/// <summary>A request the daemon refuses: one error line back to the client.</summary>
public sealed class ControlException(string message) : Exception(message);

/// <summary>
/// The `args` object of a control request. Requests are hostile input: every field is type-, range- and
/// length-checked, and a field the command does not know is an error (no silent ignoring of typos).
/// </summary>
public sealed class ControlArgs
{
    private readonly JsonElement _args;
    private readonly HashSet<string> _known = [];

    public ControlArgs(JsonElement args)
    {
        if (args.ValueKind is not (JsonValueKind.Object or JsonValueKind.Undefined or JsonValueKind.Null))
        {
            throw new ControlException("\"args\" must be an object");
        }
        _args = args;
    }

    private JsonElement? Find(string name)
    {
        _known.Add(name);
        if (_args.ValueKind != JsonValueKind.Object)
        {
            return null;
        }
        JsonElement? found = null;
        foreach (var p in _args.EnumerateObject())
        {
            if (p.NameEquals(name))
            {
                if (found is not null)
                {
                    throw new ControlException($"argument \"{name}\" given twice");
                }
                found = p.Value;
            }
        }
        return found is { ValueKind: JsonValueKind.Null } ? null : found;
    }

    public string? String(string name, int maxLength = 64)
    {
        if (Find(name) is not { } v)
        {
            return null;
        }
        if (v.ValueKind != JsonValueKind.String)
        {
            throw new ControlException($"argument \"{name}\" must be a string");
        }
        string s = v.GetString()!;
        if (s.Length == 0 || s.Length > maxLength)
        {
            throw new ControlException($"argument \"{name}\" must be 1..{maxLength} characters");
        }
        foreach (char c in s)
        {
            if (char.IsControl(c))
            {
                throw new ControlException($"argument \"{name}\" contains a control character");
            }
        }
        return s;
    }

    /// <summary>Whether the argument is present (and not null).</summary>
    public bool WasGiven(string name) => Find(name) is not null;

    public bool? Bool(string name)
    {
        if (Find(name) is not { } v)
        {
            return null;
        }
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ControlException($"argument \"{name}\" must be true or false"),
        };
    }

    public string RequiredString(string name, int maxLength = 64) =>
        String(name, maxLength) ?? throw new ControlException($"argument \"{name}\" is required");

    public long? Integer(string name, long min, long max)
    {
        if (Find(name) is not { } v)
        {
            return null;
        }
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long n))
        {
            throw new ControlException($"argument \"{name}\" must be an integer");
        }
        if (n < min || n > max)
        {
            throw new ControlException($"argument \"{name}\" must be in {min}..{max}, not {n}");
        }
        return n;
    }

    /// <summary>A 64-bit value given as a hex string ("0x…" or bare hex digits).</summary>
    public ulong? Hex64(string name)
    {
        string? s = String(name, 18);
        if (s is null)
        {
            return null;
        }
        return ParseHex64(s) ?? throw new ControlException($"argument \"{name}\" must be a hex number like 0x1300030020, not \"{s}\"");
    }

    public static ulong? ParseHex64(string s)
    {
        string digits = s.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? s[2..] : s;
        return digits.Length is > 0 and <= 16 &&
               ulong.TryParse(digits, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out ulong v) ? v : null;
    }

    /// <summary>A MAC address "xx:xx:xx:xx:xx:xx".</summary>
    public byte[]? Mac(string name)
    {
        string? s = String(name, 17);
        if (s is null)
        {
            return null;
        }
        return MacAddress.TryParse(s) ?? throw new ControlException($"argument \"{name}\" must be a MAC like 00:e0:ed:00:00:01, not \"{s}\"");
    }

    /// <summary>Call after reading every argument: anything else in the object is refused.</summary>
    public void EnsureNoUnknown()
    {
        if (_args.ValueKind != JsonValueKind.Object)
        {
            return;
        }
        foreach (var p in _args.EnumerateObject())
        {
            if (!_known.Contains(p.Name))
            {
                throw new ControlException($"unknown argument \"{Truncate(p.Name)}\"");
            }
        }
    }

    internal static string Truncate(string s) => s.Length <= 40 ? s : string.Concat(s.AsSpan(0, 40), "…");
}
