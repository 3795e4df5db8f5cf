using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>sched_setaffinity(2) for the calling thread, sched_getaffinity(2) for any thread.</summary>
public static class CpuAffinity
{
    /// <summary>CPUs a mask can name (1024, glibc's CPU_SETSIZE).</summary>
    public const int MaxCpus = 1024;

    private const int Words = MaxCpus / 64;

    /// <summary>Pins the calling OS thread to one CPU (0..1023). Returns false (errno kept) on failure.</summary>
    public static unsafe bool PinCurrentThread(int cpu)
    {
        if (cpu is < 0 or >= MaxCpus)
        {
            throw new ArgumentOutOfRangeException(nameof(cpu), "CPU must be 0..1023");
        }
        ulong* mask = stackalloc ulong[Words];
        for (int i = 0; i < Words; i++)
        {
            mask[i] = 0;
        }
        mask[cpu / 64] = 1UL << (cpu % 64);
        return Libc.sched_setaffinity(0, Words * sizeof(ulong), mask) == 0;
    }

    /// <summary>
    /// The CPUs a thread may run on, ascending: <paramref name="tid"/> 0 is the calling thread, the process id
    /// is the main thread (what `taskset` set for the process). Null (errno kept) when the call fails.
    /// </summary>
    public static unsafe int[]? Allowed(int tid = 0)
    {
        ulong* mask = stackalloc ulong[Words];
        for (int i = 0; i < Words; i++)
        {
            mask[i] = 0;
        }
        if (Libc.sched_getaffinity(tid, Words * sizeof(ulong), mask) < 0)
        {
            return null;
        }
        var cpus = new List<int>();
        for (int cpu = 0; cpu < MaxCpus; cpu++)
        {
            if ((mask[cpu / 64] & (1UL << (cpu % 64))) != 0)
            {
                cpus.Add(cpu);
            }
        }
        return [.. cpus];
    }
}
