using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.IfcvfModel.Datapath.Blk;

namespace IfcVdpa.IfcvfModel;

/// <summary>
/// A software IFC VF with its datapath engine attached: the unit `serve`, `demo` and the daemon's `sim add`
/// build, written once. <see cref="Function"/> is what a driver probes; disposing detaches the engine, then
/// disposes it and the function (the engine owns the backend). A net VF runs a <see cref="VirtioNetEngine"/>
/// (<see cref="Create"/>), a block VF a <see cref="VirtioBlkEngine"/> (<see cref="CreateBlock"/>).
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
