using System.Globalization;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// CPU lists as taskset and DPDK write them ("1", "0,2", "0-3", "0-1,6"): which CPUs datapath workers are
/// pinned to. Workers take the CPUs of a list in order, one each, round robin (worker i gets cpus[i % n]);
/// a single worker (one software VF) gets the first CPU of the list.
/// </summary>
public static class CpuList
{
    /// <summary>Parses a list; CPUs in the order written, duplicates dropped. Throws <see cref="FormatException"/>.</summary>
    public static int[] Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var cpus = new List<int>();
        foreach (string part in text.Split(','))
        {
            string p = part.Trim();
            int dash = p.IndexOf('-', StringComparison.Ordinal);
            int lo = Cpu(dash < 0 ? p : p[..dash], text);
            int hi = dash < 0 ? lo : Cpu(p[(dash + 1)..], text);
            if (hi < lo)
            {
                throw new FormatException($"CPU list \"{text}\": range {p} runs backwards");
            }
            for (int c = lo; c <= hi; c++)
            {
                if (!cpus.Contains(c))
                {
                    cpus.Add(c);
                }
            }
        }
        return [.. cpus];
    }

    private static int Cpu(string s, string text) =>
        s.Length > 0 && s.All(char.IsAsciiDigit) && int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int c) && c < CpuAffinity.MaxCpus
            ? c
            : throw new FormatException($"CPU list \"{text}\": \"{s}\" is not a CPU number 0..{CpuAffinity.MaxCpus - 1} (expected e.g. 1, 0,2 or 0-3)");

    /// <summary>Writes a list compactly, ranges folded ("0-3,6").</summary>
    public static string Format(IEnumerable<int> cpus)
    {
        var sorted = cpus.Distinct().Order().ToArray();
        var parts = new List<string>();
        for (int i = 0; i < sorted.Length;)
        {
            int j = i;
            while (j + 1 < sorted.Length && sorted[j + 1] == sorted[j] + 1)
            {
                j++;
            }
            parts.Add(j == i ? sorted[i].ToString(CultureInfo.InvariantCulture) : $"{sorted[i]}-{sorted[j]}");
            i = j + 1;
        }
        return string.Join(',', parts);
    }

    /// <summary>
    /// Refuses CPUs this process may not run on (its main thread's affinity: what taskset or a cgroup allows):
    /// pinning there would fail in the worker, long after start. Throws <see cref="ArgumentException"/>.
    /// </summary>
    public static void EnsureAllowed(IReadOnlyList<int> cpus)
    {
        ArgumentNullException.ThrowIfNull(cpus);
        var allowed = CpuAffinity.Allowed(Environment.ProcessId)
            ?? throw new ArgumentException($"cannot read this process's CPU affinity (errno {Errno.Last})");
        var outside = cpus.Where(c => Array.BinarySearch(allowed, c) < 0).ToArray();
        if (outside.Length > 0)
        {
            throw new ArgumentException(
                $"CPU {Format(outside)} is not among the CPUs this process may run on ({Format(allowed)}; see taskset -p {Environment.ProcessId})");
        }
    }

    /// <summary>The CPU of worker <paramref name="index"/> (round robin over the list), or null for none.</summary>
    public static int? ForWorker(IReadOnlyList<int>? cpus, int index) =>
        cpus is { Count: > 0 } ? cpus[index % cpus.Count] : null;
}
