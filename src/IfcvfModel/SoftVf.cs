using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;

namespace IfcVdpa.IfcvfModel;

/// <summary>
/// A software IFC VF with its datapath engine attached: the unit `serve`, `demo` and the daemon's `sim add`
/// build, written once. <see cref="Function"/> is what a driver probes; disposing detaches the engine, then
/// disposes it and the function (the engine owns the backend).
/// </summary>
public sealed class SoftVf : IDisposable
{
    private SoftVf(SoftIfcVf function, VirtioNetEngine engine)
    {
        Function = function;
        Engine = engine;
    }

    public SoftIfcVf Function { get; }

    public VirtioNetEngine Engine { get; }

    /// <summary>Builds the VF and its engine over <paramref name="backend"/> (disposed here if building fails).</summary>
    public static SoftVf Create(SoftIfcVfOptions options, NetBackend backend, EngineOptions engine)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(backend);
        VirtioNetEngine? e = null;
        SoftIfcVf? vf = null;
        try
        {
            e = new VirtioNetEngine(backend, engine);
            vf = new SoftIfcVf(options);
            vf.AttachEngine(e);
            return new SoftVf(vf, e);
        }
        catch
        {
            vf?.Dispose();
            if (e is null)
            {
                backend.Dispose();
            }
            else
            {
                e.Dispose();
            }
            throw;
        }
    }

    /// <summary>Stops the datapath (the engine is detached: no queue runs any more); the function stays.</summary>
    public void StopDatapath() => Function.AttachEngine(null);

    public void Dispose()
    {
        StopDatapath();
        Engine.Dispose();
        Function.Dispose();
    }
}
