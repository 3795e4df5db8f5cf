using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;

namespace IfcVdpa.IfcvfModel.Datapath.Blk;

// ================================================================================================
// The software IFC block VF's datapath: the virtqueue core (VirtqueueEngine) with the virtio-blk
// personality (BlkPersonality) and a block backend (Backends/Blk).
//
//   var backend = BlkBackend.Parse("file:/var/lib/disk.img");       // or "mem:64M", "file:PATH,direct"
//   var vf = new SoftIfcVf(SoftIfcVfOptions.ForBlock(new VirtioBlkConfig { Capacity = backend.Capacity / 512 }));
//   using var engine = new VirtioBlkEngine(backend, new EngineOptions { Mode = EngineMode.Event });
//   vf.AttachEngine(engine);
//
// Queues: request queues 0..N-1 (VIRTIO_BLK_F_MQ when N > 1). Each queue has its own I/O thread
// that takes requests in avail order, does the I/O synchronously into guest memory and completes it
// before it takes the next; a doorbell wakes its queue's thread directly (BlkPersonality.OnKick), the
// core's worker only wakes a thread whose queue starts and turns ring errors into
// NEEDS_RESET. Split and packed rings, EVENT_IDX, indirect descriptors come from the core.
// ================================================================================================

/// <summary>The virtio-blk datapath of one software IFC block VF. See the file header for the API.</summary>
public sealed class VirtioBlkEngine : IVirtqueueEngine, IQueueStatsSource, IDisposable
{
    private readonly VirtqueueEngine _core;

    public VirtioBlkEngine(BlkBackend backend, EngineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        Backend = backend;
        _factory = new PersonalityFactory(backend);
        _core = new VirtqueueEngine(options, _factory.Create);
    }

    private readonly PersonalityFactory _factory;

    /// <summary>
    /// vhost-user inflight tracking: sets (or clears, null) the region of request queue <paramref name="queue"/>
    /// (one queue's part of the front-end's inflight buffer, VhostInflight layout, split rings). Only while the
    /// queue is stopped (before the device starts, or after a reset).
    /// </summary>
    /// <exception cref="InvalidOperationException">The queue is running, or no device is attached.</exception>
    public void SetInflight(int queue, MemorySlice? region) =>
        (_factory.Created ?? throw new InvalidOperationException("no block device attached")).SetInflight(queue, region);

    public BlkBackend Backend { get; }

    /// <summary>
    /// Times a queue runner (Event mode) found requests only when its sleep timed out, 200 ms later: a doorbell
    /// that did not wake it. 0 while the wake-up protocol holds; a diagnostic for tests and metrics.
    /// </summary>
    public long MissedDoorbells => _factory.Created?.MissedDoorbells ?? 0;

    public EngineMode Mode => _core.Mode;

    public void StartQueue(IVirtqueueDevice device, in QueueStart start) => _core.StartQueue(device, start);

    public RingIndices StopQueue(int queue) => _core.StopQueue(queue);

    public RingIndices PeekQueue(int queue) => _core.PeekQueue(queue);

    public void Notify(int queue) => _core.Notify(queue);

    /// <summary>Per queue: requests (packets), data bytes, kicks, interrupts, ring errors, requests answered with an error (drops).</summary>
    public QueueCounters GetQueueCounters(int queue) => _core.GetQueueCounters(queue);

    /// <summary>One round (Manual mode: every queue's requests run on the caller's thread).</summary>
    public int PollOnce() => _core.PollOnce();

    public void Dispose() => _core.Dispose();

    /// <summary>Builds the personality specialised for the backend's store type.</summary>
    private sealed class PersonalityFactory(BlkBackend backend)
    {
        public BlkPersonality? Created { get; private set; }

        public IDevicePersonality Create(VirtqueueEngine core) => Created = backend.Bind(new StoreUser(core, backend));

        private sealed class StoreUser(VirtqueueEngine core, BlkBackend backend) : IBlkStoreUser<BlkPersonality>
        {
            public BlkPersonality Use<TStore>(TStore store) where TStore : struct, IBlkStore => new BlkPersonality<TStore>(core, backend, store);
        }
    }
}
