using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.IfcvfModel.Datapath;

namespace IfcVdpa.Daemon;

/// <summary>sim add class blk: software IFC block VFs on a file or memory backend.</summary>
public sealed partial class DeviceRegistry
{
    /// <summary>Request queues a software block VF may have.</summary>
    public const int MaxBlockQueues = 16;

    /// <summary>
    /// sim add class blk backend file:PATH|mem:SIZE [queues N] [readonly]: one software IFC block VF named
    /// sim/ifcvfN (lowest free N), its capacity from the backend, <paramref name="queues"/> request queues,
    /// its I/O on one thread per queue. <paramref name="cpu"/> pins its datapath worker (null: not pinned).
    /// </summary>
    public ManagementDevice AddSoftwareBlockVf(string backend, int queues = 1, bool readOnly = false, uint blkSize = 512, int? cpu = null, bool strict = false)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (queues is < 1 or > MaxBlockQueues)
        {
            throw new RegistryException($"queues must be 1..{MaxBlockQueues} request queues, not {queues}");
        }
        if (!backend.StartsWith("file:", StringComparison.Ordinal) && !backend.StartsWith("mem:", StringComparison.Ordinal))
        {
            throw new RegistryException($"a block VF needs backend file:PATH[,direct] or mem:SIZE, not \"{backend}\"");
        }
        if (cpu is int c)
        {
            try
            {
                CpuList.EnsureAllowed([c]);
            }
            catch (ArgumentException e)
            {
                throw new RegistryException($"cpu: {e.Message}");
            }
        }
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_mgmt.Count(x => x.BusName == "sim") + 1 > MaxSoftwareVfs)
            {
                throw new RegistryException($"{MaxSoftwareVfs} software VFs exist already");
            }
            int n = 0;
            while (_mgmt.Any(x => x.BusName == "sim" && x.DevName == $"ifcvf{n}"))
            {
                n++;
            }
            string address = $"sim:00:{n + 1:x2}.0";
            BlkBackend store;
            try
            {
                store = BlkBackend.Parse(backend, readOnly);
            }
            catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
            {
                throw new RegistryException($"backend \"{backend}\": {e.Message}");
            }
            string describe = store.Description;
            SoftVf sw;
            try
            {
                sw = SoftVf.CreateBlock(store, queues, readOnly, blkSize, address,
                    new EngineOptions { Mode = EngineMode.Event, CpuAffinity = cpu, Log = m => _log.Warn(m, ("vf", address)) },
                    strict, m => _log.Warn(m, ("vf", address)));
            }
            catch (ArgumentException e)
            {
                throw new RegistryException(e.Message);
            }
            ManagementDevice md;
            try
            {
                md = new ManagementDevice("sim", $"ifcvf{n}", sw.Function, ownsFunction: false, datapath: sw) { DatapathCpu = cpu, BlockBackend = describe };
            }
            catch
            {
                sw.Dispose();
                throw;
            }
            _mgmt.Add(md);
            _log.Info("software block VF added", ("mgmtdev", md.Name), ("address", address), ("backend", describe),
                ("capacity", sw.Function.BlkConfig!.Capacity), ("queues", queues), ("read_only", readOnly), ("strict", strict));
            return md;
        }
    }
}
