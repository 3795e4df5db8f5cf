using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Virtio;

namespace IfcVdpa.Cli;

/// <summary>Builds a software IFC block VF on a block backend and probes it (serve --class blk, sim add class blk).</summary>
public static class BlkServe
{
    /// <summary>The VF's config for a backend: capacity from the backend (rounded down to blk_size), queues, blk_size.</summary>
    public static VirtioBlkConfig ConfigFor(BlkBackend backend, int queues, uint blkSize)
    {
        try
        {
            return SoftVf.BlockConfigFor(backend, queues, blkSize);
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
    }

    /// <summary>Opens the backend, builds the block VF (engine attached) and probes it as vdpa0.</summary>
    public static (SoftVf Vf, IfcvfAdapter Adapter, string Describe) Create(string backendSpec, int queues, bool readOnly, uint blkSize,
        EngineMode mode, int? cpu, Action<string> log, string address = "sim:00.0", string name = "vdpa0", bool strict = false)
    {
        BlkBackend backend;
        try
        {
            backend = BlkBackend.Parse(backendSpec, readOnly);
        }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
        {
            throw new CliException($"backend {backendSpec}: {e.Message}");
        }
        SoftVf sw;
        try
        {
            var options = SoftIfcVfOptions.ForBlock(ConfigFor(backend, queues, blkSize), readOnly, address) with { Strict = strict, Log = log };
            options.Validate();
            sw = SoftVf.CreateBlock(options, backend, new EngineOptions { Mode = mode, CpuAffinity = cpu, Log = log });
        }
        catch (ArgumentException e)
        {
            backend.Dispose();
            throw new CliException(e.Message);
        }
        try
        {
            var adapter = IfcvfAdapter.Probe(sw.Function, new IfcvfAdapterOptions { Name = name });
            return (sw, adapter, $"{sw.Function.Address}, block VF, {queues} queue(s), backend {backend.Description} ({backend.Capacity} bytes){(readOnly ? ", read-only" : "")}, {mode} mode");
        }
        catch
        {
            sw.Dispose();
            throw;
        }
    }
}
