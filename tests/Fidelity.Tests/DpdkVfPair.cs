using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;

namespace IfcVdpa.Fidelity.Tests;

/// <summary>
/// Two software IFC VFs wired back to back (pair backend), each with its own test memory DMA-mapped the way
/// ifcvf_vdpa.c maps guest memory, MSI-X enabled with counting sinks (vector 0 config, 1 + i vring i: what
/// ifcvf_vdpa.c asks VFIO for), and DPDK's base code driving both through <see cref="DpdkIfcHarness"/>.
/// Both VFs are strict (issue 17 part 3): a virtio rule DPDK's code broke would set NEEDS_RESET and stop the
/// traffic the tests check; <see cref="SpecLogs"/> has what the VFs reported.
/// </summary>
public sealed class DpdkVfPair : IDisposable
{
    public const int A = 0;
    public const int B = 1;

    public DpdkVfPair(int pairs, ushort queueSize = 256)
    {
        Pairs = pairs;
        var (a, b) = NetBackend.Pair();
        Vfs =
        [
            SoftVf.Create(new SoftIfcVfOptions { QueuePairs = pairs, Address = "sim:dpdk-a", Strict = true, Log = SpecLogs.Enqueue }, a, new EngineOptions { Mode = EngineMode.Event }),
            SoftVf.Create(new SoftIfcVfOptions { QueuePairs = pairs, Address = "sim:dpdk-b", Mac = new byte[] { 0x00, 0xe0, 0xed, 0, 0, 2 }, Strict = true, Log = SpecLogs.Enqueue }, b, new EngineOptions { Mode = EngineMode.Event }),
        ];
        Irqs = new long[2][];
        for (int d = 0; d < 2; d++)
        {
            Memory[d] = new GuestMemory();
            Vfs[d].Function.DmaMap(GuestMemory.IovaBase, Memory[d].All, writable: true);
            var counts = Irqs[d] = new long[Vfs[d].Function.MsixVectorCount];
            var sinks = new IMsixSink?[counts.Length];
            for (int v = 0; v < sinks.Length; v++)
            {
                int vector = v;
                sinks[v] = new CallbackSink(() => Interlocked.Increment(ref counts[vector]));
            }
            Vfs[d].Function.EnableMsix(sinks);
            Queues[d] = new GuestQueue[2 * pairs];
            for (int q = 0; q < 2 * pairs; q++)
            {
                Queues[d][q] = new GuestQueue(Memory[d], queueSize);
            }
        }
        Harness = new DpdkIfcHarness([Vfs[A].Function, Vfs[B].Function]);
    }

    public int Pairs { get; }

    /// <summary>What the two strict VFs logged (the first violation of each rule per VF).</summary>
    public System.Collections.Concurrent.ConcurrentQueue<string> SpecLogs { get; } = new();

    public SoftVf[] Vfs { get; }

    public GuestMemory[] Memory { get; } = new GuestMemory[2];

    public GuestQueue[][] Queues { get; } = new GuestQueue[2][];

    /// <summary>MSI-X messages per VF and vector.</summary>
    public long[][] Irqs { get; }

    public DpdkIfcHarness Harness { get; }

    /// <summary>
    /// What ifcvf_vdpa.c puts in hw->req_features: the features the front-end negotiated over vhost-user,
    /// including the vhost-only bits LOG_ALL (26) and PROTOCOL_FEATURES (30) that the device does not offer
    /// (ifcvf_config_features masks them with the device's features).
    /// </summary>
    public ulong RequestedFeatures =>
        VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.NET_F_MAC) |
        VirtioFeature.Bit(VirtioFeature.NET_F_STATUS) | VirtioFeature.Bit(VirtioFeature.NET_F_MRG_RXBUF) |
        VirtioFeature.Bit(VirtioFeature.NET_F_CTRL_VQ) | (Pairs > 1 ? VirtioFeature.Bit(VirtioFeature.NET_F_MQ) : 0) |
        VirtioFeature.Bit(VirtioFeature.F_LOG_ALL) | VirtioFeature.Bit(VirtioFeature.F_PROTOCOL_FEATURES);

    /// <summary>ifcvf_init_hw on both VFs.</summary>
    public void Probe()
    {
        for (int d = 0; d < 2; d++)
        {
            Assert.Equal(0, Harness.InitHw(d).Rc);
        }
    }

    /// <summary>
    /// The vrings as vdpa_ifcvf_start gives them to ifcvf_start_hw: the test's ring addresses, size, the
    /// ring position to restore (LM ring state) and which vrings are enabled; then ifcvf_start_hw.
    /// </summary>
    public void Start(int dev, Func<int, (ushort Avail, ushort Used)> position, Func<int, bool>? enabled = null, bool resetRings = true)
    {
        Harness.Configure(dev, RequestedFeatures, 2 * Pairs);
        for (int q = 0; q < 2 * Pairs; q++)
        {
            var g = Queues[dev][q];
            var (avail, used) = position(q);
            if (resetRings)
            {
                g.ResetAt(avail);
            }
            Harness.SetVring(dev, q, g.Size, g.Desc, g.Avail, g.Used, avail, used, enabled?.Invoke(q) ?? true);
        }
        Assert.Equal(0, Harness.StartHw(dev));
    }

    /// <summary>A test frame on pair <paramref name="pair"/>: virtio-net header (zero) + Ethernet frame with a marked payload.</summary>
    public static byte[] TxBuffer(int pair, int seq, int frameLength = 128)
    {
        var b = new byte[VirtioNetHeader.Size + frameLength];
        var f = b.AsSpan(VirtioNetHeader.Size);
        new byte[] { 0x00, 0xe0, 0xed, 0, 0, 2 }.CopyTo(f);
        new byte[] { 0x00, 0xe0, 0xed, 0, 0, 1 }.CopyTo(f[6..]);
        f[12] = 0x88;
        f[13] = 0xb5; // local experimental ethertype
        f[14] = (byte)pair;
        f[15] = (byte)seq;
        for (int i = 16; i < f.Length; i++)
        {
            f[i] = (byte)((i * 13) + seq + (pair * 31));
        }
        return b;
    }

    /// <summary>
    /// Moves <paramref name="count"/> frames from A's TX vring of <paramref name="pair"/> to B's RX vring of the
    /// same pair: B posts RX buffers and DPDK's ifcvf_notify_queue rings B's doorbell, A posts the frames and
    /// rings A's. Returns the frames B received (Ethernet frame, without the virtio-net header), in order.
    /// </summary>
    public List<byte[]> Transfer(int pair, int count)
    {
        var rx = Queues[B][2 * pair];
        var tx = Queues[A][(2 * pair) + 1];
        for (int i = 0; i < count; i++)
        {
            rx.Post([], writable: true);
        }
        Harness.NotifyQueue(B, 2 * pair);
        for (int i = 0; i < count; i++)
        {
            tx.Post(TxBuffer(pair, i), writable: false);
        }
        Harness.NotifyQueue(A, (2 * pair) + 1);
        Assert.True(tx.WaitUsed(tx.AvailIdx, TimeSpan.FromSeconds(10)), $"A's TX vring {(2 * pair) + 1} did not complete {count} frames");
        Assert.True(rx.WaitUsed(rx.AvailIdx, TimeSpan.FromSeconds(10)), $"B's RX vring {2 * pair} did not receive {count} frames");
        var got = new List<byte[]>();
        while (tx.TryTakeUsed(out _, out _))
        {
        }
        while (rx.TryTakeUsed(out ushort id, out uint len))
        {
            var all = rx.Read(rx.BufferOf(id), (int)len);
            Assert.Equal(1, all[VirtioNetHeader.NumBuffers]); // MRG_RXBUF: num_buffers
            got.Add(all[VirtioNetHeader.Size..]);
        }
        return got;
    }

    public void Dispose()
    {
        Harness.Dispose();
        foreach (var vf in Vfs)
        {
            // a test that failed half way leaves the device running; SoftVf detaches its engine only once reset
            vf.Function.WriteBar8(IfcvfLayout.CommonBar, IfcvfLayout.CommonOffset + VirtioPci.DeviceStatus, 0);
            vf.Dispose();
        }
        foreach (var m in Memory)
        {
            m?.Dispose();
        }
    }
}
