using System.Buffers.Binary;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.Bench.Micro;

/// <summary>
/// Per-packet cost of the engine, device side only. The driver side is reduced to two index stores per
/// operation: descriptors and avail entries are laid out once (ring[i] = i) and recycled, so each
/// operation just makes the next <see cref="Packets"/> TX chains and RX buffers available and runs one
/// <see cref="VirtioNetEngine.PollOnce"/> (Manual mode, this thread).
/// TxOnly: descriptor walk + gather copy + used-ring write/publish (the RX queue is not running, frames
/// are dropped). TxToRx: the same plus the loopback copy into RX buffers and their publication.
/// Burst 1 publishes (and decides interrupts) per packet; burst 32 once per 32 packets.
/// </summary>
[MemoryDiagnoser]
public class DatapathBenchmarks
{
    private const ulong Iova = 0x4000_0000;
    private const ushort Size = 256;
    private const int Packets = 32;

    private MappedMemory _mem = null!;
    private SoftIfcVf _vf = null!;
    private IfcvfAdapter _adapter = null!;
    private VirtioNetEngine _engine = null!;
    private ushort _txAvail;
    private ushort _rxAvail;
    private ulong _txAvailAddr;
    private ulong _rxAvailAddr;

    [Params(64, 1518)]
    public int FrameSize { get; set; }

    [Params(1, 32)]
    public int Burst { get; set; }

    [Params(false, true)]
    public bool Loopback { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _mem = MappedMemory.Allocate(16 << 20);
        _vf = new SoftIfcVf(new SoftIfcVfOptions { ControlQueue = false, MaxQueueSize = Size });
        _engine = new VirtioNetEngine(NetBackend.Loopback(), new EngineOptions { Mode = EngineMode.Manual, Burst = Burst });
        _vf.AttachEngine(_engine);
        _vf.DmaMap(Iova, _mem.All, writable: true);
        _adapter = IfcvfAdapter.Probe(_vf);
        ulong next = Iova;
        ulong Alloc(ulong n)
        {
            ulong a = next;
            next += (n + 4095) & ~4095UL;
            return a;
        }
        var queues = new List<(int Q, bool Enabled, ulong Desc, ulong Avail, ulong Used)>();
        for (int q = 0; q < 2; q++)
        {
            ulong desc = Alloc((ulong)DescTableBytes(Size));
            ulong avail = Alloc((ulong)AvailBytes(Size));
            ulong used = Alloc((ulong)UsedBytes(Size));
            bool rx = q == 0;
            for (int i = 0; i < Size; i++)
            {
                ulong buf = Alloc(2048);
                var d = Span(desc + (ulong)(i * DescSize), DescSize);
                BinaryPrimitives.WriteUInt64LittleEndian(d, buf);
                BinaryPrimitives.WriteUInt32LittleEndian(d[8..], rx ? 2048u : (uint)(VirtioNetHeader.Size + FrameSize));
                BinaryPrimitives.WriteUInt16LittleEndian(d[12..], rx ? VIRTQ_DESC_F_WRITE : (ushort)0);
                BinaryPrimitives.WriteUInt16LittleEndian(Span(avail + (ulong)(AvailRing + (2 * i)), 2), (ushort)i);
                if (!rx)
                {
                    Span(buf + VirtioNetHeader.Size, FrameSize).Fill(0x5a);
                }
            }
            if (rx)
            {
                _rxAvailAddr = avail;
            }
            else
            {
                _txAvailAddr = avail;
            }
            queues.Add((q, !rx || Loopback, desc, avail, used));
        }
        // The production bring-up: the driver's vDPA ops (features, per queue size/addresses/ready, DRIVER_OK).
        const byte Ack = VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER;
        _adapter.Reset();
        _adapter.SetStatus(Ack);
        _adapter.SetDriverFeatures(VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM) |
            VirtioFeature.Bit(VirtioFeature.F_RING_EVENT_IDX));
        _adapter.SetStatus(Ack | VirtioStatus.FEATURES_OK);
        foreach (var (q, enabled, desc, avail, used) in queues)
        {
            if (enabled)
            {
                _adapter.SetVqNum(q, Size);
                _adapter.SetVqAddress(q, desc, avail, used);
                _adapter.SetVqReady(q, true);
            }
        }
        _adapter.SetStatus(Ack | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
    }

    private Span<byte> Span(ulong iova, int len) => _mem.Span(iova - Iova, len);

    [Benchmark(OperationsPerInvoke = Packets)]
    public int PerPacket()
    {
        _txAvail += Packets;
        _rxAvail += Packets;
        SharedIndex.Store16(Span(_rxAvailAddr, 4), AvailIdx, _rxAvail);
        SharedIndex.Store16(Span(_txAvailAddr, 4), AvailIdx, _txAvail);
        int done = 0;
        while (done < Packets)
        {
            done += _engine.PollOnce();
        }
        return done;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _adapter.Dispose();
        _engine.Dispose();
        _vf.Dispose();
        _mem.Dispose();
    }
}

public static class Program
{
    /// <summary>
    /// <c>profile FRAME BURST LOOPBACK SECONDS</c>: runs <see cref="DatapathBenchmarks.PerPacket"/> in a loop for
    /// <c>perf record</c> (with DOTNET_PerfMapEnabled=1) and prints ns/packet; anything else goes to BenchmarkDotNet.
    /// </summary>
    public static void Main(string[] args)
    {
        if (args.Length == 5 && args[0] == "profile")
        {
            var b = new DatapathBenchmarks
            {
                FrameSize = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture),
                Burst = int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture),
                Loopback = bool.Parse(args[3]),
            };
            double seconds = double.Parse(args[4], System.Globalization.CultureInfo.InvariantCulture);
            b.Setup();
            for (int i = 0; i < 200_000; i++)
            {
                b.PerPacket(); // warm-up: tiered JIT reaches its optimised code
            }
            var sw = System.Diagnostics.Stopwatch.StartNew();
            long ops = 0;
            while (sw.Elapsed.TotalSeconds < seconds)
            {
                for (int i = 0; i < 10_000; i++)
                {
                    b.PerPacket();
                }
                ops += 10_000;
            }
            Console.WriteLine($"{sw.Elapsed.TotalNanoseconds / (ops * 32):F1} ns/packet");
            b.Cleanup();
            return;
        }
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
    }
}
