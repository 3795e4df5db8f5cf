using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath.Net;
using IfcVdpa.Pci;

namespace IfcVdpa.IfcvfModel.Datapath;

// ================================================================================================
// The software IFC VF's datapath: the virtqueue core (VirtqueueEngine) with the virtio-net personality
// (Net/) and a backend (Backends/).
//
//   var backend = NetBackend.Loopback();              // or Tap("tap0"), Pcap("x.pcap"), Parse("tap:x")
//   using var engine = new VirtioNetEngine(backend, new EngineOptions { Mode = EngineMode.Poll, CpuAffinity = 1 });
//   vf.AttachEngine(engine);                           // while the VF is reset
//   ... the driver brings the VF up, packets flow, interrupts go to its MSI-X sinks ...
//   var c = vf.GetQueueCounters(1);                    // packets, bytes, kicks, interrupts, errors, drops
//
//   var (a, b) = NetBackend.Pair();                    // two VFs back to back: one engine on each side
//
// Queues: RX = 2k, TX = 2k+1, control = last (with VIRTIO_NET_F_CTRL_VQ). Split rings per VIRTIO 1.2
// §2.7 (NEXT/WRITE/INDIRECT, free-running indices, EVENT_IDX, NO_NOTIFY/NO_INTERRUPT) and packed rings
// per §2.8 (when the VF offers VIRTIO_F_RING_PACKED), chains completed in avail order. A TX chain is
// gathered into one staging buffer (header + frame), then handed to the backend's port; loopback
// scatters it straight into the RX chain(s) of the same pair (MRG_RXBUF: several chains, num_buffers
// set). Used entries are written as packets complete; the used index (or packed descriptors' flags),
// avail_event and the interrupt are published once per burst. While the driver has dirty logging on
// (BAR4 LM block), pages of RX buffers the device wrote are marked in the bitmap. Loopback costs two
// copies per packet (TX gather into staging, scatter into RX); see bench/Micro.
// ================================================================================================

/// <summary>The virtio-net datapath of one software IFC VF. See the file header for the API.</summary>
public sealed class VirtioNetEngine : IVirtqueueEngine, IQueueStatsSource, IDisposable
{
    /// <summary>Largest frame a TX chain may carry, after the 12-byte header (64 KiB, as with GSO).</summary>
    public const int MaxFrame = NetPersonality.MaxFrame;

    /// <summary>Most data segments in one packet (one chain for TX, all chains of an RX packet): Linux's UIO_MAXIOV.</summary>
    public const int MaxSegments = NetPersonality.MaxSegments;

    private readonly VirtqueueEngine _core;
    private readonly NetPersonality _net;

    public VirtioNetEngine(NetBackend backend, EngineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        var factory = new PersonalityFactory(backend);
        _core = new VirtqueueEngine(options, factory.Create);
        _net = factory.Created ?? throw new InvalidOperationException("the engine did not build its personality");
        Backend = backend;
    }

    public NetBackend Backend { get; }

    public EngineMode Mode => _core.Mode;

    /// <summary>Queue pairs the driver activated (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; 1 until then).</summary>
    public int ActivePairs => _net.ActivePairs;

    /// <summary>Frames from a pair peer or TAP dropped because no RX queue was running.</summary>
    public long InboundDrops => _net.InboundDrops;

    public void StartQueue(IVirtqueueDevice device, in QueueStart start) => _core.StartQueue(device, start);

    public RingIndices StopQueue(int queue) => _core.StopQueue(queue);

    public RingIndices PeekQueue(int queue) => _core.PeekQueue(queue);

    public void Notify(int queue) => _core.Notify(queue);

    public QueueCounters GetQueueCounters(int queue) => _core.GetQueueCounters(queue);

    /// <summary>
    /// Queues an Ethernet frame (no virtio-net header) that the worker sends out through the backend from
    /// queue pair 0, as if the driver had transmitted it (SEND_RARP after a migration). Any thread; false
    /// when it is not a frame or too many wait.
    /// </summary>
    public bool InjectFrame(ReadOnlySpan<byte> frame) => _net.Inject(frame);

    /// <summary>The carrier of the backend's network side (a TAP); false when it has none. Any thread.</summary>
    public bool SetWireCarrier(bool up) => _net.SetCarrier(up);

    /// <summary>Wakes a sleeping event-mode worker.</summary>
    public void Wake() => _core.Wake();

    /// <summary>One round over every queue (Manual mode: the owner's thread). Returns the chains and frames handled.</summary>
    public int PollOnce() => _core.PollOnce();

    public void Dispose() => _core.Dispose();

    /// <summary>Builds the net personality specialised for the backend's port type (the backend names the type).</summary>
    private sealed class PersonalityFactory(NetBackend backend)
    {
        public NetPersonality? Created { get; private set; }

        public IDevicePersonality Create(VirtqueueEngine core) => Created = backend.Bind(new PortUser(core, backend));

        private sealed class PortUser(VirtqueueEngine core, NetBackend backend) : INetPortUser<NetPersonality>
        {
            public NetPersonality Use<TPort>(TPort port) where TPort : struct, INetPort => new NetPersonality<TPort>(core, backend, port);
        }
    }
}
