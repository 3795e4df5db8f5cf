using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Pci;

/// <summary>One memory BAR of a function as the driver sees it.</summary>
/// <param name="Index">BAR number 0..5 (a 64-bit BAR uses Index and Index+1).</param>
/// <param name="Size">Length in bytes (a power of two).</param>
/// <param name="Is64Bit">Memory BAR of type 64-bit.</param>
/// <param name="Prefetchable">Prefetchable memory.</param>
/// <param name="Address">Bus address assigned to the BAR (informational).</param>
public readonly record struct PciBar(int Index, ulong Size, bool Is64Bit, bool Prefetchable, ulong Address);

/// <summary>
/// Where another process can mmap a BAR: a descriptor (owned by the function, valid while it is open:
/// do not dispose it) and the file offset of the BAR's first byte. All <paramref name="Size"/> bytes
/// are mappable (VFIO hands this out only for a region it lets be mmapped whole).
/// </summary>
/// <param name="Fd">The descriptor to mmap (the VFIO device fd); passed to a peer with SCM_RIGHTS.</param>
/// <param name="FileOffset">Offset of BAR byte 0 in <paramref name="Fd"/> (the VFIO region offset).</param>
/// <param name="Size">BAR length in bytes.</param>
public sealed record PciBarMapping(SafeFd Fd, ulong FileOffset, ulong Size);

/// <summary>
/// A PCI function, real (VFIO) or modelled (the software IFC VF). The ifcvf driver uses nothing else:
/// it cannot tell the two apart. BAR accesses are naturally sized; a 64-bit register is two 32-bit
/// accesses, low half first, as on the IFC VF.
/// </summary>
public interface IPciFunction : IDisposable
{
    /// <summary>Where the function lives: a PCI address (0000:00:05.0) or a software bus name.</summary>
    string Address { get; }

    /// <summary>Size of config space in bytes (256 conventional, 4096 extended).</summary>
    int ConfigSize { get; }

    byte ReadConfig8(int offset);
    ushort ReadConfig16(int offset);
    uint ReadConfig32(int offset);
    void WriteConfig8(int offset, byte value);
    void WriteConfig16(int offset, ushort value);
    void WriteConfig32(int offset, uint value);

    /// <summary>The memory BARs that exist (absent ones are not listed).</summary>
    IReadOnlyList<PciBar> Bars { get; }

    byte ReadBar8(int bar, ulong offset);
    ushort ReadBar16(int bar, ulong offset);
    uint ReadBar32(int bar, ulong offset);
    void WriteBar8(int bar, ulong offset, byte value);
    void WriteBar16(int bar, ulong offset, ushort value);
    void WriteBar32(int bar, ulong offset, uint value);

    /// <summary>Number of MSI-X vectors the function supports (0 if it has no MSI-X).</summary>
    int MsixVectorCount { get; }

    /// <summary>
    /// Enables MSI-X with one sink per vector (null = vector left unused), like VFIO_DEVICE_SET_IRQS
    /// with eventfds. Replaces any earlier set.
    /// </summary>
    void EnableMsix(IReadOnlyList<IMsixSink?> sinks);

    /// <summary>Disables MSI-X; no sink is signalled after this returns.</summary>
    void DisableMsix();

    /// <summary>Maps [iova, iova + memory.Length) of the device's DMA space onto <paramref name="memory"/>.</summary>
    void DmaMap(ulong iova, MemorySlice memory, bool writable);

    /// <summary>Removes a mapping made with exactly this IOVA and size.</summary>
    void DmaUnmap(ulong iova, ulong size);

    /// <summary>Number of DMA mappings currently installed (for leak checks and `dev show`).</summary>
    int DmaMapCount { get; }

    /// <summary>
    /// A descriptor and file offset through which another process (a vhost-user front-end) can mmap
    /// <paramref name="bar"/> so that its stores reach the device directly, or null when the BAR cannot
    /// be mapped that way: a software function (it cannot trap stores to shared memory), a BAR VFIO
    /// does not let be mmapped, an absent BAR.
    /// </summary>
    PciBarMapping? GetBarMapping(int bar) => null;
}

/// <summary>Convenience accessors built from the primitive ones.</summary>
public static class PciFunctionExtensions
{
    /// <summary>Reads a 64-bit BAR register as two 32-bit halves, low first.</summary>
    public static ulong ReadBar64(this IPciFunction f, int bar, ulong offset) =>
        f.ReadBar32(bar, offset) | ((ulong)f.ReadBar32(bar, offset + 4) << 32);

    /// <summary>Writes a 64-bit BAR register as two 32-bit halves, low first.</summary>
    public static void WriteBar64(this IPciFunction f, int bar, ulong offset, ulong value)
    {
        f.WriteBar32(bar, offset, (uint)value);
        f.WriteBar32(bar, offset + 4, (uint)(value >> 32));
    }

    public static PciBar? FindBar(this IPciFunction f, int index)
    {
        foreach (var b in f.Bars)
        {
            if (b.Index == index)
            {
                return b;
            }
        }
        return null;
    }
}
