using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Hardening.Tests;

/// <summary>
/// Guest RAM as QEMU presents it: a memfd whose guest-physical address, front-end virtual address and
/// file offset all differ (so mixing up the translation tables fails the tests), plus split-ring
/// layouts and a tiny virtio driver side (descriptors, avail ring, used ring reads).
/// </summary>
public sealed class GuestMemoryFixture : IDisposable
{
    public const ulong Gpa = 0x4000_0000;
    public const ulong Va = 0x7f12_0000_0000;
    public const ulong FileOffset = 0x10_0000;
    public const ulong Size = 0x20_0000; // 2 MiB of guest RAM

    public GuestMemoryFixture()
    {
        File = MappedMemory.CreateShared("vu-test-guest", FileOffset + Size);
    }

    /// <summary>The backing file; guest RAM starts <see cref="FileOffset"/> bytes into it.</summary>
    public MappedMemory File { get; }

    public int Fd => File.Fd!.Fd;

    public MemoryRegionDesc Region => new(Gpa, Size, Va, FileOffset);

    public Span<byte> At(ulong gpa, int len) => File.Span(FileOffset + (gpa - Gpa), len);

    /// <summary>Ring q's three parts, 16 KiB apart per ring, at 64 KiB + q*16 KiB.</summary>
    public static (ulong Desc, ulong Avail, ulong Used) RingGpa(int q)
    {
        ulong b = Gpa + 0x1_0000 + ((ulong)q * 0x4000);
        return (b, b + 0x1000, b + 0x2000);
    }

    public static (ulong Desc, ulong Avail, ulong Used) RingVa(int q)
    {
        var (d, a, u) = RingGpa(q);
        return (d - Gpa + Va, a - Gpa + Va, u - Gpa + Va);
    }

    /// <summary>A buffer area per ring: 64 KiB at 1 MiB + q*64 KiB.</summary>
    public static ulong BufferGpa(int q, int slot) => Gpa + 0x10_0000 + ((ulong)q * 0x1_0000) + ((ulong)slot * 0x800);

    public void WriteDesc(int q, int i, ulong addr, uint len, ushort flags, ushort next = 0)
    {
        var d = At(RingGpa(q).Desc + (ulong)(16 * i), 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    /// <summary>Publishes descriptor head <paramref name="head"/> in avail slot idx % num and bumps avail.idx.</summary>
    public void PushAvail(int q, uint num, ushort head)
    {
        var a = RingGpa(q).Avail;
        ushort idx = SharedIndex.Load16(At(a + 2, 2), 0);
        BinaryPrimitives.WriteUInt16LittleEndian(At(a + 4 + (ulong)(2 * (idx % num)), 2), head);
        SharedIndex.Store16(At(a + 2, 2), 0, (ushort)(idx + 1));
    }

    public ushort UsedIdx(int q) => SharedIndex.Load16(At(RingGpa(q).Used + 2, 2), 0);

    public void SetUsedIdx(int q, ushort v) => SharedIndex.Store16(At(RingGpa(q).Used + 2, 2), 0, v);

    public void SetAvailIdx(int q, ushort v) => SharedIndex.Store16(At(RingGpa(q).Avail + 2, 2), 0, v);

    public (uint Id, uint Len) UsedElem(int q, uint num, int i)
    {
        var e = At(RingGpa(q).Used + 4 + (ulong)(8 * (i % num)), 8);
        return (BinaryPrimitives.ReadUInt32LittleEndian(e), BinaryPrimitives.ReadUInt32LittleEndian(e[4..]));
    }

    public void Dispose() => File.Dispose();
}
