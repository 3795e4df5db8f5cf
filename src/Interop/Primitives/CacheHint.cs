using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// Cache hints for the datapath: ask the CPU to start loading memory that will be touched soon (the next
/// descriptors' packet buffers), so the misses of a burst overlap instead of queueing one after another.
/// A hint never reads or writes memory and never faults; on CPUs without the instruction it does nothing.
/// Safety contract: the span is memory the caller may access (it came from <see cref="IovaMap.TryTranslate"/>).
/// </summary>
public static unsafe class CacheHint
{
    /// <summary>Starts loading the first cache line of <paramref name="s"/> (and the next one when it spans two).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Prefetch(Span<byte> s)
    {
        if (!Sse.IsSupported || s.IsEmpty)
        {
            return;
        }
        byte* p = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(s));
        Sse.Prefetch0(p);
        if (s.Length > 64)
        {
            Sse.Prefetch0(p + 64);
        }
    }
}
