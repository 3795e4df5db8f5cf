using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// The test front-end acting as a virtio-net driver (QEMU-like memory layout: GPA != VA != file offset)
/// over the back-end bound to the real stack: IfcvfAdapter probing a SoftIfcVf with the datapath engine
/// and a loopback backend. Frames sent on TX come back on RX.
/// </summary>
public sealed class VirtioNetFrontEnd : IDisposable
{
    public const uint Num = 256;
    public const int RxBuffers = 16;
    public const int BufLen = 2048;
    public const int NetHdr = 12;

    public VirtioNetFrontEnd(TestFrontEnd fe, GuestMemoryFixture mem, int pairs = 1)
    {
        Fe = fe;
        Mem = mem;
        Kicks = Enumerable.Range(0, pairs * 2).Select(_ => EventFd.Create()).ToArray();
        Calls = Enumerable.Range(0, pairs * 2).Select(_ => EventFd.Create()).ToArray();
    }

    public TestFrontEnd Fe { get; }

    public GuestMemoryFixture Mem { get; }

    public EventFd[] Kicks { get; }

    public EventFd[] Calls { get; }

    private readonly int[] _txNext = new int[16];

    public const ulong Features = (1UL << VirtioFeature.F_VERSION_1) | (1UL << VirtioFeature.NET_F_MAC) | (1UL << 30);

    /// <summary>QEMU's order: negotiate, memory, per ring NUM/BASE/ADDR/KICK/CALL, ENABLE, then DRIVER_OK.</summary>
    public void Start(int rings = 2, bool driverOk = true, ushort rxBase = 0, ushort txBase = 0, bool addMemReg = false,
        ulong protocol = VhostUserProtocolFeature.Supported, ulong extraFeatures = 0)
    {
        ulong offered = Fe.Negotiate(protocol: protocol, features: Features | extraFeatures);
        Assert.Equal(Features, offered & Features);
        if (addMemReg)
        {
            // QEMU with CONFIGURE_MEM_SLOTS: one ADD_MEM_REG per RAM block (here the region split in two).
            var r = Mem.Region;
            ulong half = r.Size / 2;
            Assert.Equal(0UL, Fe.AddMemReg(r with { Size = half }, Mem.Fd));
            Assert.Equal(0UL, Fe.AddMemReg(new MemoryRegionDesc(r.GuestPhysAddr + half, half, r.UserAddr + half, r.MmapOffset + half), Mem.Fd));
        }
        else
        {
            Assert.Equal(0UL, Fe.SetMemTable([Mem.Region], [Mem.Fd]));
        }
        for (int q = 0; q < rings; q++)
        {
            SetupRing(q, q % 2 == 0 ? rxBase : txBase);
        }
        if (driverOk)
        {
            Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_STATUS, 0xF)); // ACK|DRIVER|FEATURES_OK|DRIVER_OK
        }
    }

    public void SetupRing(int q, ushort baseIdx = 0)
    {
        Mem.SetAvailIdx(q, baseIdx);
        Mem.SetUsedIdx(q, baseIdx);
        if (q % 2 == 0)
        {
            for (int i = 0; i < RxBuffers; i++)
            {
                Mem.WriteDesc(q, i, GuestMemoryFixture.BufferGpa(q, i), BufLen, 2 /* WRITE */);
                Mem.PushAvail(q, Num, (ushort)i);
            }
        }
        var (d, a, u) = GuestMemoryFixture.RingVa(q);
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_NUM, (uint)q, Num));
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_BASE, (uint)q, baseIdx));
        Assert.Equal(0UL, Fe.SetVringAddr((uint)q, d, a, u));
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_VRING_KICK, (ulong)q, [Kicks[q].Fd]));
        Assert.Equal(0UL, Fe.SetU64(VhostUserRequest.SET_VRING_CALL, (ulong)q, [Calls[q].Fd]));
        Assert.Equal(0UL, Fe.SetState(VhostUserRequest.SET_VRING_ENABLE, (uint)q, 1));
    }

    public static byte[] Frame(int len, byte seed)
    {
        var f = new byte[len];
        f[0] = 0x02; // locally administered unicast destination
        f[5] = 0x01;
        f[6] = 0x02;
        f[11] = 0x02;
        f[12] = 0x88;
        f[13] = 0xB5;
        for (int i = 14; i < len; i++)
        {
            f[i] = (byte)(seed + i);
        }
        return f;
    }

    /// <summary>Puts one frame (with a zero virtio-net header) on TX ring <paramref name="q"/> without kicking.</summary>
    public void QueueTx(int q, byte[] frame)
    {
        int slot = _txNext[q]++ % 16;
        ulong gpa = GuestMemoryFixture.BufferGpa(q, slot);
        Mem.At(gpa, NetHdr).Clear();
        frame.CopyTo(Mem.At(gpa + NetHdr, frame.Length));
        Mem.WriteDesc(q, slot, gpa, (uint)(NetHdr + frame.Length), 0);
        Mem.PushAvail(q, Num, (ushort)slot);
    }

    public void Send(int q, byte[] frame)
    {
        QueueTx(q, frame);
        Assert.True(Kicks[q].Signal());
    }

    /// <summary>Waits for RX ring <paramref name="q"/>'s used index to reach <paramref name="idx"/> and returns that frame.</summary>
    public byte[] Receive(int q, ushort idx, int timeoutMs = 5000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while ((ushort)(Mem.UsedIdx(q) - idx) > 0x7FFF)
        {
            Assert.True(Environment.TickCount64 < deadline, $"no frame on ring {q}: used idx {Mem.UsedIdx(q)}, want {idx}");
            Calls[q].WaitReadable(50);
            Calls[q].TryConsume(out _);
        }
        var (id, len) = Mem.UsedElem(q, Num, idx - 1);
        Assert.True(len >= NetHdr && len <= BufLen, $"used len {len}");
        return Mem.At(GuestMemoryFixture.BufferGpa(q, (int)id), (int)len)[NetHdr..].ToArray();
    }

    public void Dispose()
    {
        foreach (var e in Kicks.Concat(Calls))
        {
            e.Dispose();
        }
    }
}
