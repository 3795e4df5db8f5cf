using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>sched_setaffinity(2) for the calling thread.</summary>
public static class CpuAffinity
{
    /// <summary>Pins the calling OS thread to one CPU (0..1023). Returns false (errno kept) on failure.</summary>
    public static unsafe bool PinCurrentThread(int cpu)
    {
        if (cpu is < 0 or >= 1024)
        {
            throw new ArgumentOutOfRangeException(nameof(cpu), "CPU must be 0..1023");
        }
        ulong* mask = stackalloc ulong[16];
        for (int i = 0; i < 16; i++)
        {
            mask[i] = 0;
        }
        mask[cpu / 64] = 1UL << (cpu % 64);
        return Libc.sched_setaffinity(0, 16 * sizeof(ulong), mask) == 0;
    }
}
