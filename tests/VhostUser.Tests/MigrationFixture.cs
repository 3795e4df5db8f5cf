using IfcVdpa.IfcvfModel.Backends;
using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// What the live-migration tests (<see cref="LiveMigrationTests"/>, <see cref="SoftwareRelayTests"/>) share: a
/// software IFC VF on the real stack (with its LM dirty log, or without it: the software relay's case), guest
/// memory, a vhost-user session and a virtio-net front-end on it; and the front-end's side of the dirty log
/// (log files with guard bytes, SET_LOG_BASE, reading the bitmap back).
/// </summary>
public sealed class MigrationFixture : IDisposable
{
    public const ulong Proto = VhostUserProtocolFeature.Supported | VhostUserProtocolFeature.Migration;
    public const ulong LogAll = 1UL << VirtioFeature.F_LOG_ALL;

    /// <summary>Bytes of bitmap guest memory (up to 0x4020_0000) needs: one bit per 4 KiB page.</summary>
    public const ulong NeededLog = (GuestMemoryFixture.Gpa + GuestMemoryFixture.Size) / 4096 / 8;

    public RealDevice Dev { get; }

    public GuestMemoryFixture Mem { get; } = new();

    public SessionHarness H { get; }

    public VirtioNetFrontEnd Net { get; }

    public TestFrontEnd Fe => H.Fe;

    public MigrationFixture(bool dirtyLog = true, NetBackend? backend = null)
    {
        Dev = new RealDevice(dirtyLog: dirtyLog, backend: backend);
        H = new SessionHarness(Dev.Adapter);
        Net = new VirtioNetFrontEnd(H.Fe, Mem);
    }

    public void Dispose()
    {
        H.Dispose();
        Net.Dispose();
        Dev.Dispose();
        Mem.Dispose();
    }

    /// <summary>A front-end's log file: the bitmap at <paramref name="offset"/>, guard bytes 0xA5 everywhere else.</summary>
    public static MappedMemory LogFile(ulong size, ulong offset = 0, ulong tail = 0x1000)
    {
        var f = MappedMemory.CreateShared("vhost-log", offset + size + tail);
        f.Span(0, (int)f.Length).Fill(0xA5);
        f.Span(offset, (int)size).Clear();
        return f;
    }

    /// <summary>The pages marked in the bitmap of <paramref name="size"/> bytes at <paramref name="offset"/>.</summary>
    public static List<ulong> DirtyPages(MappedMemory f, ulong size = NeededLog, ulong offset = 0)
    {
        var pages = new List<ulong>();
        var b = f.Span(offset, (int)size);
        for (int i = 0; i < b.Length; i++)
        {
            for (int bit = 0; bit < 8; bit++)
            {
                if ((Volatile.Read(ref b[i]) & (1 << bit)) != 0)
                {
                    pages.Add(((ulong)i * 8) + (ulong)bit);
                }
            }
        }
        return pages;
    }

    public static ulong Page(ulong gpa) => gpa / 4096;

    /// <summary>SET_LOG_BASE with the log's fd; returns the back-end's reply.</summary>
    public ulong SetLogBase(MappedMemory f, ulong size, ulong offset = 0)
    {
        var p = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(p, size);
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), offset);
        Fe.Send(VhostUserRequest.SET_LOG_BASE, p, [f.Fd!.Fd]);
        var r = Fe.ReadReply(VhostUserRequest.SET_LOG_BASE);
        Assert.Equal(8, r.Length);
        return BinaryPrimitives.ReadUInt64LittleEndian(r);
    }
}
