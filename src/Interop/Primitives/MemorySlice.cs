namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// A window [<see cref="Offset"/>, <see cref="Offset"/> + <see cref="Length"/>) of an owned
/// <see cref="MappedMemory"/>: how memory is handed to a device (a DMA map) outside Interop. It is a
/// capability to bytes this process owns, checked against the mapping when it is made, never a bare
/// address: safe code cannot point a device at arbitrary process memory.
/// </summary>
/// <remarks>
/// Whoever installs a slice in a DMA map (<see cref="IovaMap.Map"/>, a VFIO container) pins its
/// <see cref="MappedMemory"/>: disposing the memory while it is still mapped defers the munmap until the
/// last mapping is removed, so a device never touches unmapped memory even when an owner gets the order wrong.
/// </remarks>
public readonly struct MemorySlice : IEquatable<MemorySlice>
{
    internal MemorySlice(MappedMemory memory, ulong offset, ulong length)
    {
        Memory = memory;
        Offset = offset;
        Length = length;
    }

    /// <summary>The mapping this slice lies in.</summary>
    public MappedMemory Memory { get; }

    /// <summary>Byte offset of the slice in <see cref="Memory"/>.</summary>
    public ulong Offset { get; }

    /// <summary>Length in bytes (never 0).</summary>
    public ulong Length { get; }

    /// <summary>
    /// The address this process sees the first byte at, as a number for protocols that name memory by it
    /// (vhost-user's user address, a log line). It cannot be dereferenced outside Interop.
    /// </summary>
    public ulong UserAddress => (ulong)Memory.Address + Offset;

    /// <summary>The first byte's address, for the audited primitives only.</summary>
    internal nint Address => Memory.Address + (nint)Offset;

    /// <summary>A narrower window of the same mapping (bounds-checked against this slice).</summary>
    public MemorySlice Slice(ulong offset, ulong length)
    {
        if (length == 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"[0x{offset:x}, +0x{length:x}) outside a 0x{Length:x}-byte slice");
        }
        return new MemorySlice(Memory, Offset + offset, length);
    }

    public bool Equals(MemorySlice other) => ReferenceEquals(Memory, other.Memory) && Offset == other.Offset && Length == other.Length;

    public override bool Equals(object? obj) => obj is MemorySlice s && Equals(s);

    public override int GetHashCode() => HashCode.Combine(Memory, Offset, Length);

    public static bool operator ==(MemorySlice left, MemorySlice right) => left.Equals(right);

    public static bool operator !=(MemorySlice left, MemorySlice right) => !left.Equals(right);

    public override string ToString() => $"[0x{Offset:x}, +0x{Length:x}) of a 0x{Memory.Length:x}-byte mapping";
}
