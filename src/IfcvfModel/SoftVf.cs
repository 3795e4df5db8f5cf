using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.IfcvfModel.Datapath.Blk;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel;

/// <summary>
/// A software IFC VF with its datapath engine attached: the unit `serve`, `demo` and the daemon's `sim add`
/// build, written once. <see cref="Function"/> is what a driver probes; disposing detaches the engine, then
/// disposes it and the function (the engine owns the backend). A net VF runs a <see cref="VirtioNetEngine"/>
/// (<see cref="Create"/>), a block VF a <see cref="VirtioBlkEngine"/> (<c>CreateBlock</c>).
/// </summary>
public sealed class SoftVf : IDisposable
{
    private readonly IDisposable _engineOwner;

    private SoftVf(SoftIfcVf function, IVirtqueueEngine engine, IDisposable owner)
    {
        Function = function;
        Engine = engine;
        _engineOwner = owner;
    }

    public SoftIfcVf Function { get; }

    /// <summary>The datapath (a <see cref="VirtioNetEngine"/> or a <see cref="VirtioBlkEngine"/>).</summary>
    public IVirtqueueEngine Engine { get; }

    /// <summary>Builds the VF and its engine over <paramref name="backend"/> (disposed here if building fails).</summary>
    public static SoftVf Create(SoftIfcVfOptions options, NetBackend backend, EngineOptions engine)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(backend);
        var e = OwningBackend(backend, () => new VirtioNetEngine(backend, engine));
        return Build(options, e, e);
    }

    /// <summary>
    /// Builds a block VF (options from <see cref="SoftIfcVfOptions.ForBlock"/>) and its engine over
    /// <paramref name="backend"/> (disposed here if building fails).
    /// </summary>
    public static SoftVf CreateBlock(SoftIfcVfOptions options, BlkBackend backend, EngineOptions engine)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(backend);
        if (!options.IsBlock)
        {
            backend.Dispose();
            throw new ArgumentException("a block VF needs block options (SoftIfcVfOptions.ForBlock)");
        }
        var e = OwningBackend(backend, () => new VirtioBlkEngine(backend, engine));
        return Build(options, e, e);
    }

    /// <summary>Makes the engine that takes <paramref name="backend"/> over; disposes the backend if that throws.</summary>
    private static T OwningBackend<T>(IDisposable backend, Func<T> make)
    {
        try
        {
            return make();
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A block VF's config for a backend: capacity = the backend's size rounded down to
    /// <paramref name="blkSize"/>, <paramref name="queues"/> request queues.
    /// </summary>
    /// <exception cref="ArgumentException">The backend is smaller than one block.</exception>
    public static VirtioBlkConfig BlockConfigFor(BlkBackend backend, int queues, uint blkSize)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (blkSize is not (512 or 1024 or 2048 or 4096))
        {
            throw new ArgumentException($"blk_size must be 512, 1024, 2048 or 4096, not {blkSize}");
        }
        long bytes = backend.Capacity / blkSize * blkSize;
        if (bytes == 0)
        {
            throw new ArgumentException($"backend {backend.Description}: {backend.Capacity} bytes is smaller than one {blkSize}-byte block");
        }
        return new VirtioBlkConfig
        {
            Capacity = (ulong)bytes / VirtioBlk.SectorSize,
            NumQueues = (ushort)queues,
            BlkSize = blkSize,
            PhysicalBlockExp = 0,
            OptIoSize = 0,
        };
    }

    /// <summary>
    /// Builds a block VF over <paramref name="backend"/> with the config <see cref="BlockConfigFor"/> gives
    /// (the backend is disposed here if building fails).
    /// </summary>
    public static SoftVf CreateBlock(BlkBackend backend, int queues, bool readOnly, uint blkSize, string address, EngineOptions engine,
        bool strict = false, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        SoftIfcVfOptions options;
        try
        {
            options = SoftIfcVfOptions.ForBlock(BlockConfigFor(backend, queues, blkSize), readOnly, address) with { Strict = strict, Log = log };
            options.Validate();
        }
        catch
        {
            backend.Dispose();
            throw;
        }
        return CreateBlock(options, backend, engine);
    }

    private static SoftVf Build(SoftIfcVfOptions options, IVirtqueueEngine engine, IDisposable owner)
    {
        SoftIfcVf? vf = null;
        try
        {
            vf = new SoftIfcVf(options);
            vf.AttachEngine(engine);
            return new SoftVf(vf, engine, owner);
        }
        catch
        {
            vf?.Dispose();
            owner.Dispose();
            throw;
        }
    }

    /// <summary>Stops the datapath (the engine is detached: no queue runs any more); the function stays.</summary>
    public void StopDatapath() => Function.AttachEngine(null);

    public void Dispose()
    {
        StopDatapath();
        _engineOwner.Dispose();
        Function.Dispose();
    }
}
