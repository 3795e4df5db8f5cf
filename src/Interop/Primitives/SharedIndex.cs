using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// Acquire/release accessors for ring fields shared with another agent (a guest, a front-end process,
/// a device worker). Little-endian hosts only (x86-64, arm64), like virtio 1.x rings.
/// Safety contract: the offset plus the field size lies inside the span (checked by the slice).
/// </summary>
public static class SharedIndex
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort Load16(Span<byte> s, int offset) =>
        Volatile.Read(ref Unsafe.As<byte, ushort>(ref MemoryMarshal.GetReference(s.Slice(offset, 2))));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store16(Span<byte> s, int offset, ushort value) =>
        Volatile.Write(ref Unsafe.As<byte, ushort>(ref MemoryMarshal.GetReference(s.Slice(offset, 2))), value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Load32(Span<byte> s, int offset) =>
        Volatile.Read(ref Unsafe.As<byte, uint>(ref MemoryMarshal.GetReference(s.Slice(offset, 4))));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store32(Span<byte> s, int offset, uint value) =>
        Volatile.Write(ref Unsafe.As<byte, uint>(ref MemoryMarshal.GetReference(s.Slice(offset, 4))), value);
}
