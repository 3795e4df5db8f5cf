using System.Diagnostics;
using SharpFuzz;

namespace IfcVdpa.Fuzz;

/// <summary>
/// The entry point every harness shares. Modes:
/// <list type="bullet">
/// <item>(no arguments) under afl-fuzz (SharpFuzz's fork-server protocol; the assemblies under test are
/// instrumented with the <c>sharpfuzz</c> tool by scripts/fuzz.sh), or once on standard input otherwise;</item>
/// <item><c>--seeds DIR</c>: writes the seed corpus (built the way the unit tests drive the code);</item>
/// <item><c>--replay PATH...</c>: runs each file (or every file of each folder) once, prints failures, exits 1 on any;</item>
/// <item><c>--mutate SECONDS CORPUS [CRASHDIR]</c>: the fallback when afl-fuzz is unavailable: an in-process byte-level
/// mutation fuzzer (not coverage-guided) over the corpus for a bounded time.</item>
/// </list>
/// A target signals a bug by throwing; expected rejections of hostile input are caught inside the target.
/// </summary>
public static class FuzzDriver
{
    public static int Run(string[] args, Action<ReadOnlySpan<byte>> target, Func<IEnumerable<(string Name, byte[] Data)>> seeds)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(seeds);
        if (args.Length >= 2 && args[0] == "--seeds")
        {
            Directory.CreateDirectory(args[1]);
            int n = 0;
            foreach (var (name, data) in seeds())
            {
                File.WriteAllBytes(Path.Combine(args[1], name), data);
                target(data); // every seed must pass
                n++;
            }
            Console.WriteLine($"wrote {n} seeds to {args[1]}");
            return 0;
        }
        if (args.Length >= 2 && args[0] == "--replay")
        {
            return Replay(args.Skip(1), target);
        }
        if (args.Length >= 3 && args[0] == "--mutate")
        {
            return Mutate(double.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture), args[2],
                args.Length >= 4 ? args[3] : Path.Combine(Path.GetTempPath(), "ifcvf-fuzz-crashes"), target);
        }
        // FUZZ_CURRENT_INPUT=FILE: each input is written there before it runs. SharpFuzz runs every input in
        // this one process, so a crash it cannot catch (an exception on another thread, a memory fault) kills
        // the whole afl-fuzz session without a saved crash; scripts/fuzz.sh then keeps this file as the input.
        using var current = Environment.GetEnvironmentVariable("FUZZ_CURRENT_INPUT") is { Length: > 0 } path
            ? new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.ReadWrite, bufferSize: 0)
            : null;
        Fuzzer.Run(stream =>
        {
            using var ms = new MemoryStream();
            stream.CopyTo(ms);
            var input = ms.GetBuffer().AsSpan(0, (int)ms.Length);
            if (current is not null)
            {
                current.Position = 0;
                current.Write(input);
                current.SetLength(input.Length);
            }
            target(input);
        });
        return 0;
    }

    private static IEnumerable<string> Files(IEnumerable<string> paths) =>
        paths.SelectMany(p => Directory.Exists(p) ? Directory.GetFiles(p).Order(StringComparer.Ordinal) : (IEnumerable<string>)[p]);

    private static int Replay(IEnumerable<string> paths, Action<ReadOnlySpan<byte>> target)
    {
        int ok = 0, bad = 0;
        foreach (var f in Files(paths))
        {
            if (Path.GetFileName(f).StartsWith('.') || Path.GetFileName(f) == "README.txt")
            {
                continue;
            }
            try
            {
                target(File.ReadAllBytes(f));
                ok++;
            }
#pragma warning disable CA1031 // report every failing input, then fail
            catch (Exception e)
#pragma warning restore CA1031
            {
                bad++;
                Console.WriteLine($"FAIL {f}: {e}");
            }
        }
        Console.WriteLine($"replay: {ok} inputs ok, {bad} failing");
        return bad == 0 ? 0 : 1;
    }

    /// <summary>Fallback fuzzer: random byte-level mutations of corpus inputs for a bounded time.</summary>
    private static int Mutate(double seconds, string corpus, string crashDir, Action<ReadOnlySpan<byte>> target)
    {
        var inputs = Files([corpus]).Select(File.ReadAllBytes).Where(b => b.Length > 0).ToList();
        if (inputs.Count == 0)
        {
            inputs.Add(new byte[16]);
        }
        var rng = new Random(Environment.ProcessId ^ (int)Stopwatch.GetTimestamp());
        var sw = Stopwatch.StartNew();
        long execs = 0;
        while (sw.Elapsed.TotalSeconds < seconds)
        {
            var input = MutateOnce(inputs[rng.Next(inputs.Count)], inputs[rng.Next(inputs.Count)], rng);
            execs++;
            try
            {
                target(input);
            }
#pragma warning disable CA1031 // a crash is saved and reported
            catch (Exception e)
#pragma warning restore CA1031
            {
                Directory.CreateDirectory(crashDir);
                string file = Path.Combine(crashDir, $"crash-{execs}");
                File.WriteAllBytes(file, input);
                Console.WriteLine($"CRASH after {execs} execs, saved {file}: {e}");
                return 1;
            }
        }
        Console.WriteLine($"mutate: {execs} execs in {sw.Elapsed.TotalSeconds:0} s, no crash");
        return 0;
    }

    private static byte[] MutateOnce(byte[] a, byte[] b, Random rng)
    {
        var buf = new List<byte>(a);
        int rounds = 1 + rng.Next(8);
        for (int i = 0; i < rounds; i++)
        {
            int pos = buf.Count == 0 ? 0 : rng.Next(buf.Count);
            switch (rng.Next(7))
            {
                case 0 when buf.Count > 0:
                    buf[pos] ^= (byte)(1 << rng.Next(8));
                    break;
                case 1 when buf.Count > 0:
                    buf[pos] = (byte)rng.Next(256);
                    break;
                case 2 when buf.Count > 0:
                    buf[pos] = (byte)(buf[pos] + rng.Next(-8, 9));
                    break;
                case 3 when buf.Count > 1:
                    buf.RemoveRange(pos, Math.Min(buf.Count - pos, 1 + rng.Next(16)));
                    break;
                case 4:
                    buf.InsertRange(pos, Enumerable.Range(0, 1 + rng.Next(8)).Select(_ => (byte)rng.Next(256)));
                    break;
                case 5 when buf.Count > 3:
                    // interesting values: 0, ff.., 0x80.., 0x7f..
                    byte[] vals = [0x00, 0xFF, 0x80, 0x7F, 0x01];
                    byte v = vals[rng.Next(vals.Length)];
                    for (int k = 0; k < 1 + rng.Next(4) && pos + k < buf.Count; k++)
                    {
                        buf[pos + k] = v;
                    }
                    break;
                case 6 when b.Length > 0:
                    // splice a piece of another input
                    int from = rng.Next(b.Length);
                    buf.InsertRange(pos, b.Skip(from).Take(1 + rng.Next(Math.Min(64, b.Length - from))));
                    break;
            }
        }
        return [.. buf];
    }
}
