using System.Globalization;

namespace IfcVdpa.Cli;

/// <summary>iproute2-style arguments: `key value` pairs and bare flags.</summary>
public sealed class Keywords
{
    private readonly List<string> _args;
    private readonly HashSet<int> _used = [];

    public Keywords(IEnumerable<string> args) => _args = args.ToList();

    public string? Get(string key)
    {
        for (int i = 0; i < _args.Count; i++)
        {
            if (_args[i] == key && !_used.Contains(i))
            {
                if (i + 1 >= _args.Count)
                {
                    throw new CliException($"\"{key}\" needs a value");
                }
                _used.UnionWith([i, i + 1]);
                return _args[i + 1];
            }
        }
        return null;
    }

    public bool Flag(string key)
    {
        int i = _args.IndexOf(key);
        return i >= 0 && _used.Add(i);
    }

    /// <summary>The first argument not used as a keyword (e.g. a device name).</summary>
    public string? Positional()
    {
        for (int i = 0; i < _args.Count; i++)
        {
            if (_used.Add(i))
            {
                return _args[i];
            }
        }
        return null;
    }

    public int Int(string key, int fallback)
    {
        string? v = Get(key);
        if (v is null)
        {
            return fallback;
        }
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int r))
        {
            throw new CliException($"\"{key}\" must be a number, not \"{v}\"");
        }
        return r;
    }

    public void EnsureAllUsed()
    {
        for (int i = 0; i < _args.Count; i++)
        {
            if (!_used.Contains(i))
            {
                throw new CliException($"unexpected argument \"{_args[i]}\"");
            }
        }
    }
}
