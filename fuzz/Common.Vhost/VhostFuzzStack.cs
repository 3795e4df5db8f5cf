using System.Buffers.Binary;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.VhostUser;

namespace IfcVdpa.Fuzz;

/// <summary>
/// The real stack under fuzz: a software IFC VF with the datapath engine (Manual mode: the harness polls,
/// so a run is deterministic), probed by IfcvfAdapter, served by a VhostUserSession on one end of a
/// socketpair. The harness plays the front-end on the other end, one message at a time: send it, let the
/// session receive and process it, drain the replies. Guest RAM is one memfd whose GPA, VA and file
/// offset all differ (as with QEMU).
/// </summary>
public sealed class VhostFuzzStack : IDisposable
{
    public const ulong Gpa = 0x4000_0000;
    public const ulong Va = 0x7f12_0000_0000;
    public const ulong FileOffset = 0x10_0000;
    public const ulong Size = 0x20_0000;
    public const int MaxMessages = 96;

    private static MappedMemory? s_guest;
    private static int s_fdBaseline = -1;

    private readonly List<IDisposable> _owned = [];
    private readonly List<EventFd> _eventFds = [];
    private readonly byte[] _drain = new byte[8192];
    private readonly List<SafeFd> _drainFds = [];
    private bool _closed;

    public VhostFuzzStack(ulong extraDeviceFeatures = 0)
    {
        s_guest ??= MappedMemory.CreateShared("fuzz-guest", FileOffset + Size);
        s_guest.Span(0, (int)(FileOffset + Size)).Clear();
        Vf = new SoftIfcVf(new SoftIfcVfOptions
        {
            Address = "sim:07.0",
            QueuePairs = 1,
            DeviceFeatures = SoftIfcVfOptions.DefaultFeatures | extraDeviceFeatures,
        });
        Engine = new VirtioNetEngine(NetBackend.Loopback(), new EngineOptions { Mode = EngineMode.Manual, Log = _ => { } });
        Vf.AttachEngine(Engine);
        Adapter = IfcvfAdapter.Probe(Vf, new IfcvfAdapterOptions { Name = "vdpa-fuzz" });
        var (a, b) = UnixSocket.CreatePair();
        FrontEnd = a;
        Connection = new VhostUserConnection(b, payloadTimeoutMs: 5);
        Session = new VhostUserSession(Adapter, Connection, new VhostUserSessionOptions { PayloadTimeoutMs = 5, Name = "fuzz" });
    }

    public SoftIfcVf Vf { get; }

    public VirtioNetEngine Engine { get; }

    public IfcvfAdapter Adapter { get; }

    public UnixSocket FrontEnd { get; }

    public VhostUserConnection Connection { get; }

    public VhostUserSession Session { get; }

    /// <summary>False once the session closed the connection (protocol error, unacked failure).</summary>
    public bool Open => !_closed;

    public static Span<byte> Guest(ulong gpaOffset, int len) => s_guest!.Span(FileOffset + gpaOffset, len);

    public static MemoryRegionDesc Region => new(Gpa, Size, Va, FileOffset);

    /// <summary>Sends one message with descriptors of the given kinds and lets the session handle it.</summary>
    public void Message(uint request, uint flags, ReadOnlySpan<byte> payload, int sizeField, byte fdSpec)
    {
        if (_closed)
        {
            return;
        }
        int count = fdSpec & 7;
        int kind = (fdSpec >> 3) & 7;
        var fds = new int[count];
        for (int i = 0; i < count; i++)
        {
            fds[i] = MakeFd(kind == 5 ? (i % 2 == 0 ? 0 : 1) : kind);
        }
        var buf = new byte[VhostUserWire.HeaderSize + payload.Length];
        VhostUserCodec.WriteHeader(buf, request, flags, sizeField);
        payload.CopyTo(buf.AsSpan(VhostUserWire.HeaderSize));
        FrontEnd.Send(buf, fds);
        Step();
    }

    /// <summary>The session's own loop body: receive one message (or fail), process it.</summary>
    private void Step()
    {
        VhostUserMessage? m;
        try
        {
            m = Connection.Receive();
        }
        catch (VhostUserProtocolException)
        {
            _closed = true; // Run() closes the connection here
            return;
        }
        bool keep;
        try
        {
            keep = m is not null && Session.Process(m);
        }
        catch (VhostUserProtocolException)
        {
            keep = false; // a reply the front-end did not take: Run() closes the connection here
        }
        if (!keep)
        {
            _closed = true;
            return;
        }
        // A message whose size field is smaller than what was sent leaves bytes behind: they are the next header.
        while (!_closed && IfcVdpa.Interop.Primitives.Poll.WaitReadable(Connection.Socket.Fd, 0))
        {
            Step();
        }
        Drain();
    }

    private void Drain()
    {
        while (IfcVdpa.Interop.Primitives.Poll.WaitReadable(FrontEnd.Fd, 0))
        {
            int n = FrontEnd.Receive(_drain, _drainFds, out _);
            foreach (var f in _drainFds)
            {
                f.Dispose();
            }
            _drainFds.Clear();
            if (n == 0)
            {
                break;
            }
        }
    }

    private int MakeFd(int kind)
    {
        switch (kind)
        {
            case 1:
                return s_guest!.Fd!.Fd;
            case 2:
            {
                var small = MappedMemory.CreateShared("fuzz-small", 4096);
                _owned.Add(small);
                return small.Fd!.Fd;
            }
            case 3:
            {
                var h = File.OpenHandle("/dev/null");
                _owned.Add(h);
                return (int)h.DangerousGetHandle();
            }
            case 4:
            {
                var (x, y) = UnixSocket.CreatePair();
                _owned.Add(x);
                _owned.Add(y);
                return y.Fd;
            }
            default:
            {
                var e = EventFd.Create();
                _eventFds.Add(e);
                _owned.Add(e);
                return e.Fd;
            }
        }
    }

    /// <summary>Signals the i-th eventfd the front-end created (kick or call), then lets the engine run.</summary>
    public void Kick(int i, int polls)
    {
        if (_eventFds.Count > 0)
        {
            _eventFds[i % _eventFds.Count].Signal();
        }
        Poll(polls);
    }

    public void Poll(int polls)
    {
        for (int i = 0; i < polls; i++)
        {
            Engine.PollOnce();
        }
    }

    /// <summary>Ends the session like a disconnect and checks what must hold afterwards: nothing mapped, device reset.</summary>
    public void Dispose()
    {
        Session.Dispose();
        int mapped = Vf.DmaMapCount;
        byte status = Vf.Status;
        FrontEnd.Dispose();
        Adapter.Dispose();
        Vf.AttachEngine(null);
        Engine.Dispose();
        Vf.Dispose();
        foreach (var o in _owned)
        {
            o.Dispose();
        }
        if (mapped != 0)
        {
            throw new InvalidOperationException($"BUG: {mapped} DMA mappings left after the session ended");
        }
        if (status != 0)
        {
            throw new InvalidOperationException($"BUG: device status 0x{status:x} after the session ended (not reset)");
        }
        CheckFds();
    }

    /// <summary>Descriptors must come back to the first input's count (after finalizers, so only real leaks count).</summary>
    private static void CheckFds()
    {
        int n = Directory.GetFiles("/proc/self/fd").Length;
        if (s_fdBaseline < 0)
        {
            s_fdBaseline = n;
            return;
        }
        if (n > s_fdBaseline + 8)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            n = Directory.GetFiles("/proc/self/fd").Length;
            if (n > s_fdBaseline + 8)
            {
                throw new InvalidOperationException($"BUG: descriptor leak: {n} open, baseline {s_fdBaseline}");
            }
        }
    }
}

/// <summary>Builds inputs in the vhost-user harness's record format (used for seeds: the unit tests' sequences).</summary>
public sealed class VhostInputBuilder
{
    public const uint V1 = VhostUserWire.FlagVersion;
    public const uint NeedReply = VhostUserWire.FlagNeedReply;
    public const byte FdEvent = 0 << 3;
    public const byte FdGuest = 1 << 3;
    public const ulong NetFeatures = (1UL << 32) | (1UL << 5) | (1UL << 30); // VERSION_1 | MAC | PROTOCOL_FEATURES
    public const uint Num = 256;

    private readonly MemoryStream _s = new();

    public uint Flags { get; set; } = V1;

    public byte[] ToArray() => _s.ToArray();

    public VhostInputBuilder Msg(VhostUserRequest r, ReadOnlySpan<byte> payload, byte fdSpec = 0)
    {
        _s.WriteByte(0);
        _s.WriteByte((byte)r);
        _s.WriteByte((byte)Flags);
        _s.WriteByte(fdSpec);
        Span<byte> len = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(len, (ushort)payload.Length);
        _s.Write(len);
        _s.Write(payload);
        return this;
    }

    public VhostInputBuilder U64(VhostUserRequest r, ulong v, byte fdSpec = 0)
    {
        var p = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, v);
        return Msg(r, p, fdSpec);
    }

    public VhostInputBuilder State(VhostUserRequest r, uint index, uint num)
    {
        var p = new byte[8];
        new VringState(index, num).Write(p);
        return Msg(r, p);
    }

    public VhostInputBuilder MemWrite(ulong gpaOffset, ReadOnlySpan<byte> data)
    {
        _s.WriteByte(1);
        Span<byte> h = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(h, (uint)gpaOffset);
        _s.Write(h);
        _s.WriteByte((byte)data.Length);
        _s.Write(data);
        return this;
    }

    public VhostInputBuilder Kick(int eventFdIndex, int polls = 2)
    {
        _s.WriteByte(2);
        _s.WriteByte((byte)eventFdIndex);
        _s.WriteByte((byte)polls);
        return this;
    }

    public VhostInputBuilder Negotiate(ulong features = NetFeatures, ulong protocol = VhostUserProtocolFeature.Supported)
    {
        Msg(VhostUserRequest.GET_FEATURES, []);
        Msg(VhostUserRequest.GET_PROTOCOL_FEATURES, []);
        U64(VhostUserRequest.SET_PROTOCOL_FEATURES, protocol);
        if ((protocol & (1UL << VhostUserProtocolFeature.REPLY_ACK)) != 0)
        {
            Flags = V1 | NeedReply;
        }
        U64(VhostUserRequest.SET_OWNER, 0);
        U64(VhostUserRequest.SET_FEATURES, features);
        return this;
    }

    public VhostInputBuilder MemTable(params MemoryRegionDesc[] regions)
    {
        var p = new byte[8 + (32 * regions.Length)];
        BinaryPrimitives.WriteUInt32LittleEndian(p, (uint)regions.Length);
        for (int i = 0; i < regions.Length; i++)
        {
            regions[i].Write(p.AsSpan(8 + (32 * i)));
        }
        return Msg(VhostUserRequest.SET_MEM_TABLE, p, (byte)(FdGuest | regions.Length));
    }

    public static (ulong Desc, ulong Avail, ulong Used) RingOffset(int q)
    {
        ulong b = 0x1_0000 + ((ulong)q * 0x4000);
        return (b, b + 0x1000, b + 0x2000);
    }

    public static ulong BufferOffset(int q, int slot) => 0x10_0000 + ((ulong)q * 0x1_0000) + ((ulong)slot * 0x800);

    public VhostInputBuilder Desc(int q, int i, ulong gpa, uint len, ushort flags, ushort next = 0)
    {
        var d = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(d, gpa);
        BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(8), len);
        BinaryPrimitives.WriteUInt16LittleEndian(d.AsSpan(12), flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d.AsSpan(14), next);
        return MemWrite(RingOffset(q).Desc + (ulong)(16 * i), d);
    }

    /// <summary>Writes avail ring entries 0..heads-1 and sets avail.idx = heads (split ring).</summary>
    public VhostInputBuilder Avail(int q, int heads)
    {
        var a = new byte[4 + (2 * heads)];
        BinaryPrimitives.WriteUInt16LittleEndian(a.AsSpan(2), (ushort)heads);
        for (int i = 0; i < heads; i++)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(a.AsSpan(4 + (2 * i)), (ushort)i);
        }
        return MemWrite(RingOffset(q).Avail, a);
    }

    /// <summary>QEMU's bring-up order: memory, per ring NUM/BASE/ADDR/KICK/CALL/ENABLE, then DRIVER_OK.</summary>
    public VhostInputBuilder BringUp(int rxBuffers = 8, uint num = Num, bool status = true, uint ringBase = 0)
    {
        MemTable(VhostFuzzStack.Region);
        for (int q = 0; q < 2; q++)
        {
            if (q == 0)
            {
                for (int i = 0; i < rxBuffers; i++)
                {
                    Desc(0, i, VhostFuzzStack.Gpa + BufferOffset(0, i), 2048, 2);
                }
                Avail(0, rxBuffers);
            }
            var (d, a, u) = RingOffset(q);
            State(VhostUserRequest.SET_VRING_NUM, (uint)q, num);
            State(VhostUserRequest.SET_VRING_BASE, (uint)q, ringBase);
            var p = new byte[40];
            new VringAddr((uint)q, 0, VhostFuzzStack.Va + d, VhostFuzzStack.Va + u, VhostFuzzStack.Va + a, 0).Write(p);
            Msg(VhostUserRequest.SET_VRING_ADDR, p);
            U64(VhostUserRequest.SET_VRING_KICK, (ulong)q, FdEvent | 1);
            U64(VhostUserRequest.SET_VRING_CALL, (ulong)q, FdEvent | 1);
            State(VhostUserRequest.SET_VRING_ENABLE, (uint)q, 1);
        }
        if (status)
        {
            U64(VhostUserRequest.SET_STATUS, 0xF);
        }
        return this;
    }

    /// <summary>One TX frame on ring 1 slot <paramref name="slot"/> (zero virtio-net header), then its kick (eventfd 2).</summary>
    public VhostInputBuilder Tx(int slot, int frameLen)
    {
        var frame = new byte[12 + frameLen];
        frame[12] = 0x02;
        frame[17] = 0x01;
        for (int i = 18; i < frame.Length; i++)
        {
            frame[i] = (byte)i;
        }
        ulong buf = BufferOffset(1, slot);
        for (int off = 0; off < frame.Length; off += 255)
        {
            MemWrite(buf + (ulong)off, frame.AsSpan(off, Math.Min(255, frame.Length - off)));
        }
        Desc(1, slot, VhostFuzzStack.Gpa + buf, (uint)frame.Length, 0);
        var a = new byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(a, (ushort)slot);
        MemWrite(RingOffset(1).Avail + 4 + (ulong)(2 * slot), a);
        BinaryPrimitives.WriteUInt16LittleEndian(a, (ushort)(slot + 1));
        MemWrite(RingOffset(1).Avail + 2, a);
        return Kick(2, 3);
    }
}
