using System.Buffers.Binary;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;

namespace IfcVdpa.Fidelity.Tests;

/// <summary>One virtio-blk request as a guest driver builds it: header, OUT data or an IN buffer, status byte.</summary>
/// <param name="In">Bytes of device-writable data (IN, GET_ID).</param>
public readonly record struct BlkReq(uint Type, ulong Sector, byte[]? Out = null, int In = 0)
{
    public static BlkReq Write(ulong sector, byte[] data) => new(VirtioBlk.T_OUT, sector, data);

    public static BlkReq Read(ulong sector, int bytes) => new(VirtioBlk.T_IN, sector, In: bytes);

    public static BlkReq Flush() => new(VirtioBlk.T_FLUSH, 0);

    public static BlkReq GetId() => new(VirtioBlk.T_GET_ID, 0, In: VirtioBlk.IdBytes);
}

/// <summary>A completed request: status byte, used length, the IN data, and where its writable buffers were.</summary>
public sealed record BlkDone(byte Status, uint UsedLen, byte[] Data, ulong DataIova, ulong StatusIova);

/// <summary>
/// A software IFC block VF over a mem: backend (strict), its test memory DMA-mapped as ifcvf_vdpa.c maps
/// guest memory, MSI-X with counting sinks (vector 0 config, 1 + i vring i), and DPDK's base code driving it
/// through <see cref="DpdkIfcHarness"/> with hw->device_type = IFCVF_BLK, which the harness's probe derives
/// from the VF's PCI IDs with DPDK's ID table.
/// </summary>
public sealed class DpdkBlkVf : IDisposable
{
    public const int Dev = 0;
    public const ulong CapacitySectors = 2048; // 1 MiB
    public const string Address = "sim:dpdk-blk";

    public DpdkBlkVf(int queues, ushort queueSize = 128)
    {
        QueueCount = queues;
        Config = new VirtioBlkConfig
        {
            Capacity = CapacitySectors,
            NumQueues = (ushort)queues,
            BlkSize = 512,
            SizeMax = 0x10000,
            SegMax = 126,
            Cylinders = 0x0102,
            Heads = 16,
            Sectors = 63,
        };
        var options = SoftIfcVfOptions.ForBlock(Config, readOnly: false, Address) with { Strict = true, Log = SpecLogs.Enqueue };
        Vf = SoftVf.CreateBlock(options, BlkBackend.Memory((long)CapacitySectors * VirtioBlk.SectorSize), new EngineOptions { Mode = EngineMode.Event, Log = EngineLogs.Enqueue });
        Memory = new GuestMemory();
        Vf.Function.DmaMap(GuestMemory.IovaBase, Memory.All, writable: true);
        Irqs = new long[Vf.Function.MsixVectorCount];
        var sinks = new IMsixSink?[Irqs.Length];
        for (int v = 0; v < sinks.Length; v++)
        {
            int vector = v;
            sinks[v] = new CallbackSink(() => Interlocked.Increment(ref Irqs[vector]));
        }
        Vf.Function.EnableMsix(sinks);
        Queues = new GuestQueue[queues];
        for (int q = 0; q < queues; q++)
        {
            Queues[q] = new GuestQueue(Memory, queueSize);
        }
        Harness = new DpdkIfcHarness([Vf.Function]);
    }

    public int QueueCount { get; }

    public VirtioBlkConfig Config { get; }

    public SoftVf Vf { get; }

    public SoftIfcVf Function => Vf.Function;

    public GuestMemory Memory { get; }

    public GuestQueue[] Queues { get; }

    /// <summary>MSI-X messages per vector.</summary>
    public long[] Irqs { get; }

    public DpdkIfcHarness Harness { get; }

    /// <summary>What the block engine logged (e.g. the first IOERR answer per queue).</summary>
    public System.Collections.Concurrent.ConcurrentQueue<string> EngineLogs { get; } = new();

    /// <summary>What the strict VF logged (the first violation of each rule).</summary>
    public System.Collections.Concurrent.ConcurrentQueue<string> SpecLogs { get; } = new();

    /// <summary>
    /// What ifcvf_vdpa.c puts in hw->req_features for a block device: the features a vhost-user-blk front-end
    /// negotiated, including the vhost-only bits LOG_ALL (26) and PROTOCOL_FEATURES (30) DPDK adds to what it
    /// offers; never ACCESS_PLATFORM (DPDK removes it from the device's features before offering them).
    /// </summary>
    public ulong RequestedFeatures =>
        VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioBlk.F_SIZE_MAX) | VirtioFeature.Bit(VirtioBlk.F_SEG_MAX) |
        VirtioFeature.Bit(VirtioBlk.F_GEOMETRY) | VirtioFeature.Bit(VirtioBlk.F_BLK_SIZE) | VirtioFeature.Bit(VirtioBlk.F_TOPOLOGY) |
        VirtioFeature.Bit(VirtioBlk.F_FLUSH) | VirtioFeature.Bit(VirtioFeature.F_RING_INDIRECT_DESC) |
        (QueueCount > 1 ? VirtioFeature.Bit(VirtioBlk.F_MQ) : 0) |
        VirtioFeature.Bit(VirtioFeature.F_LOG_ALL) | VirtioFeature.Bit(VirtioFeature.F_PROTOCOL_FEATURES);

    /// <summary>ifcvf_init_hw, then the probe's ID match and block config read.</summary>
    public DpdkIfcHarness.ProbeResult Probe()
    {
        Assert.Equal(0, Harness.InitHw(Dev).Rc);
        return Harness.Probe(Dev);
    }

    /// <summary>
    /// The vrings as vdpa_ifcvf_start gives them to ifcvf_start_hw (block: hw->device_type = IFCVF_BLK), with
    /// the ring position to restore through the LM ring state; then ifcvf_start_hw.
    /// </summary>
    public void Start(Func<int, (ushort Avail, ushort Used)> position, Func<int, bool>? enabled = null, bool resetRings = true)
    {
        Harness.Configure(Dev, RequestedFeatures, QueueCount, block: true);
        for (int q = 0; q < QueueCount; q++)
        {
            var g = Queues[q];
            var (avail, used) = position(q);
            if (resetRings)
            {
                g.ResetAt(avail);
            }
            Harness.SetVring(Dev, q, g.Size, g.Desc, g.Avail, g.Used, avail, used, enabled?.Invoke(q) ?? true);
        }
        Assert.Equal(0, Harness.StartHw(Dev));
    }

    /// <summary>
    /// Posts <paramref name="reqs"/> on vring <paramref name="q"/>, rings its doorbell once with DPDK's
    /// ifcvf_notify_queue, waits (bounded) for every used entry, and returns the results in request order.
    /// </summary>
    public BlkDone[] Run(int q, params BlkReq[] reqs)
    {
        var g = Queues[q];
        var posted = new Dictionary<ushort, (ulong Data, int In, ulong Status)>();
        var order = new List<ushort>();
        foreach (var r in reqs)
        {
            var hdr = Memory.Alloc(VirtioBlk.HeaderSize, 16);
            var h = Memory.Span(hdr, VirtioBlk.HeaderSize);
            BinaryPrimitives.WriteUInt32LittleEndian(h, r.Type);
            BinaryPrimitives.WriteUInt32LittleEndian(h[4..], 0);
            BinaryPrimitives.WriteUInt64LittleEndian(h[8..], r.Sector);
            var segs = new List<(ulong, uint, bool)> { (hdr, VirtioBlk.HeaderSize, false) };
            if (r.Out is { } o)
            {
                ulong at = Memory.Alloc((ulong)o.Length, 512);
                o.CopyTo(Memory.Span(at, o.Length));
                segs.Add((at, (uint)o.Length, false));
            }
            ulong data = 0;
            if (r.In > 0)
            {
                data = Memory.Alloc((ulong)r.In, 512);
                Memory.Span(data, r.In).Fill(0xA5);
                segs.Add((data, (uint)r.In, true));
            }
            ulong status = Memory.Alloc(1, 1);
            Memory.Span(status, 1)[0] = 0xEE;
            segs.Add((status, 1, true));
            ushort head = g.PostChain(segs.ToArray());
            posted.Add(head, (data, r.In, status));
            order.Add(head);
        }
        Harness.NotifyQueue(Dev, q);
        Assert.True(g.WaitUsed(g.AvailIdx, TimeSpan.FromSeconds(10)), $"vring {q} did not complete {reqs.Length} requests (used {g.DeviceUsedIdx}, avail {g.AvailIdx}, status 0x{Function.Status:x})");
        var done = new Dictionary<ushort, BlkDone>();
        while (g.TryTakeUsed(out ushort id, out uint len))
        {
            Assert.True(posted.TryGetValue(id, out var p), $"vring {q}: used id {id} was not posted");
            done.Add(id, new BlkDone(Memory.Span(p.Status, 1)[0], len, p.In > 0 ? Memory.Span(p.Data, p.In).ToArray() : [], p.Data, p.Status));
        }
        return order.Select(h => done[h]).ToArray();
    }

    /// <summary>A sector pattern distinct per (queue, seed).</summary>
    public static byte[] Pattern(int bytes, int q, int seed)
    {
        var b = new byte[bytes];
        for (int i = 0; i < bytes; i++)
        {
            b[i] = (byte)((i * 7) + (q * 37) + seed + (i >> 9));
        }
        return b;
    }

    /// <summary>The serial the model's block VF answers GET_ID with ("ifcvf-blk-" + address, 20 bytes, zero-padded).</summary>
    public static byte[] ExpectedSerial()
    {
        var id = new byte[VirtioBlk.IdBytes];
        var text = System.Text.Encoding.ASCII.GetBytes("ifcvf-blk-" + Address);
        text.AsSpan(0, Math.Min(text.Length, id.Length)).CopyTo(id);
        return id;
    }

    public void Dispose()
    {
        Harness.Dispose();
        Function.WriteBar8(IfcvfLayout.CommonBar, IfcvfLayout.CommonOffset + VirtioPci.DeviceStatus, 0);
        Vf.Dispose();
        Memory.Dispose();
    }
}
