using System.Text.RegularExpressions;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.Daemon;

/// <summary>A user-facing refusal (bad name, unknown device, limit reached): becomes one error line.</summary>
public sealed class RegistryException(string message) : Exception(message);

/// <summary>
/// Everything the daemon owns: management devices (VFs) and the vDPA devices on them, by name.
/// Thread-safe: every operation runs under one lock (control path only).
/// </summary>
public sealed partial class DeviceRegistry(DaemonLog? log = null) : IDisposable
{
    /// <summary>Software VFs one daemon will hold at most.</summary>
    public const int MaxSoftwareVfs = 64;

    private readonly Lock _lock = new();
    private readonly List<ManagementDevice> _mgmt = [];
    private readonly DaemonLog _log = log ?? DaemonLog.Stderr;
    private bool _disposed;

    /// <summary>Raised (under the registry lock) after a vDPA device is created.</summary>
    public event Action<IVdpaDevice>? DeviceAdded;

    /// <summary>Raised (under the registry lock) before a vDPA device is removed: consumers detach here.</summary>
    public event Action<IVdpaDevice>? DeviceRemoving;

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")]
    private static partial Regex DeviceNamePattern();

    public static bool IsValidDeviceName(string name) => DeviceNamePattern().IsMatch(name);

    public IReadOnlyList<ManagementDevice> ManagementDevices
    {
        get { lock (_lock) { return _mgmt.ToArray(); } }
    }

    public IReadOnlyList<IVdpaDevice> Devices
    {
        get
        {
            lock (_lock)
            {
                return _mgmt.Where(m => m.Device is not null).Select(m => m.Device!).ToArray();
            }
        }
    }

    /// <summary>Finds a vDPA device by name (consumers bind to it), or null.</summary>
    public IVdpaDevice? FindDevice(string name)
    {
        lock (_lock)
        {
            return _mgmt.FirstOrDefault(m => m.Device?.Name == name)?.Device;
        }
    }

    /// <summary>The management device holding a vDPA device, or null.</summary>
    public ManagementDevice? FindDeviceOwner(string name)
    {
        lock (_lock)
        {
            return _mgmt.FirstOrDefault(m => m.Device?.Name == name);
        }
    }

    /// <summary>Finds a management device by `bus/dev` (or just `dev` when unambiguous).</summary>
    public ManagementDevice? FindManagementDevice(string name)
    {
        lock (_lock)
        {
            var exact = _mgmt.FirstOrDefault(m => m.Name == name);
            if (exact is not null)
            {
                return exact;
            }
            var byDev = _mgmt.Where(m => m.DevName == name).ToArray();
            return byDev.Length == 1 ? byDev[0] : null;
        }
    }

    /// <summary>
    /// sim add: creates <paramref name="count"/> software IFC VFs named sim/ifcvfN (lowest free N), each
    /// with a PCI-like address sim:00:NN.0. MACs count up from <paramref name="baseMac"/> (default
    /// 00:e0:ed:00:00:N+1). <paramref name="cpus"/> pins each VF's datapath worker: the i-th VF added gets
    /// cpus[i % cpus.Count] (null: not pinned, the worker inherits the daemon's affinity). <paramref name="dirtyLog"/> false builds
    /// VFs whose LM block has no dirty log (a vhost consumer then migrates through its software relay).
    /// </summary>
    public IReadOnlyList<ManagementDevice> AddSoftwareVfs(int count, ReadOnlyMemory<byte>? baseMac, int queuePairs, int? msixVectors = null, string backend = "loopback",
        IReadOnlyList<int>? cpus = null, bool dirtyLog = true, bool strict = false)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (backend == "pair" && count % 2 != 0)
        {
            throw new RegistryException("backend pair wires VFs two by two: count must be even");
        }
        if ((backend.StartsWith("tap:", StringComparison.Ordinal) || backend.StartsWith("pcap:", StringComparison.Ordinal)) && count != 1)
        {
            throw new RegistryException($"backend {backend} serves one VF: use count 1");
        }
        if (count < 1 || count > MaxSoftwareVfs)
        {
            throw new RegistryException($"count must be 1..{MaxSoftwareVfs}, not {count}");
        }
        if (queuePairs is < 1 or > 32)
        {
            throw new RegistryException($"queues must be 1..32 queue pairs, not {queuePairs}");
        }
        if (baseMac is { } m && (m.Length != 6 || (m.Span[0] & 1) != 0 || !m.Span.ContainsAnyExcept((byte)0)))
        {
            throw new RegistryException("mac must be a unicast address like 00:e0:ed:00:00:01");
        }
        if (cpus is not null)
        {
            try
            {
                if (cpus.Count == 0)
                {
                    throw new ArgumentException("the CPU list is empty");
                }
                CpuList.EnsureAllowed(cpus);
            }
            catch (ArgumentException e)
            {
                throw new RegistryException($"cpu: {e.Message}");
            }
        }
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            int have = _mgmt.Count(x => x.BusName == "sim");
            if (have + count > MaxSoftwareVfs)
            {
                throw new RegistryException($"{have} software VFs exist; {count} more would exceed the limit of {MaxSoftwareVfs}");
            }
            var added = new List<ManagementDevice>();
            NetBackend? pairPeer = null;
            for (int i = 0; i < count; i++)
            {
                int n = 0;
                while (_mgmt.Any(x => x.BusName == "sim" && x.DevName == $"ifcvf{n}"))
                {
                    n++;
                }
                byte[] mac = baseMac is { } b ? AddToMac(b.Span, i) : [0x00, 0xe0, 0xed, 0x00, 0x00, (byte)(n + 1)];
                var options = new SoftIfcVfOptions
                {
                    Address = $"sim:00:{n + 1:x2}.0",
                    QueuePairs = queuePairs,
                    Mac = mac,
                    MsixVectors = msixVectors,
                    DirtyLog = dirtyLog,
                    Strict = strict,
                    Log = m => _log.Warn(m, ("vf", $"sim:00:{n + 1:x2}.0")),
                };
                NetBackend net;
                if (backend != "pair")
                {
                    net = ParseBackend(backend);
                }
                else if (pairPeer is null)
                {
                    (net, pairPeer) = NetBackend.Pair();
                }
                else
                {
                    (net, pairPeer) = (pairPeer, null);
                }
                int? cpu = CpuList.ForWorker(cpus, i);
                var sw = SoftVf.Create(options, net, new EngineOptions { Mode = EngineMode.Event, CpuAffinity = cpu, Log = m => _log.Warn(m, ("vf", options.Address)) });
                ManagementDevice md;
                try
                {
                    md = new ManagementDevice("sim", $"ifcvf{n}", sw.Function, ownsFunction: false, datapath: sw) { DatapathCpu = cpu };
                }
                catch
                {
                    sw.Dispose();
                    throw;
                }
                _mgmt.Add(md);
                added.Add(md);
                _log.Info("software VF added", ("mgmtdev", md.Name), ("address", options.Address), ("mac", MacAddress.Format(mac)), ("queue_pairs", queuePairs), ("strict", strict));
            }
            return added;
        }
    }

    private static NetBackend ParseBackend(string spec)
    {
        try
        {
            return NetBackend.Parse(spec);
        }
        catch (Exception e) when (e is ArgumentException or IOException)
        {
            throw new RegistryException($"backend \"{spec}\": {e.Message}");
        }
    }

    private static byte[] AddToMac(ReadOnlySpan<byte> mac, int add)
    {
        byte[] r = mac.ToArray();
        int low = (r[3] << 16) | (r[4] << 8) | r[5];
        low = (low + add) & 0xFFFFFF;
        r[3] = (byte)(low >> 16);
        r[4] = (byte)(low >> 8);
        r[5] = (byte)low;
        return r;
    }

    /// <summary>Adds an existing function (a VFIO VF) as a management device on the `pci` bus.</summary>
    public ManagementDevice AddPciFunction(IPciFunction function, bool ownsFunction, bool acceptGenericVirtioNet = false)
    {
        ArgumentNullException.ThrowIfNull(function);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_mgmt.Any(m => m.BusName == "pci" && m.DevName == function.Address))
            {
                throw new RegistryException($"pci/{function.Address} is already a management device");
            }
            var md = new ManagementDevice("pci", function.Address, function, ownsFunction, acceptGenericVirtioNet);
            _mgmt.Add(md);
            _log.Info("PCI function added", ("mgmtdev", md.Name));
            return md;
        }
    }

    /// <summary>sim del (or removal of a PCI function): deletes its vDPA device first, then the VF.</summary>
    public void RemoveManagementDevice(string name)
    {
        lock (_lock)
        {
            var md = FindManagementDevice(name) ?? throw new RegistryException($"management device \"{name}\" not found");
            if (md.Device is { } d)
            {
                DeleteDeviceLocked(md, d);
            }
            _mgmt.Remove(md);
            md.Dispose();
            _log.Info("management device removed", ("mgmtdev", md.Name));
        }
    }

    /// <summary>dev add.</summary>
    public IVdpaDevice AddDevice(string mgmtdev, VdpaProvisioning p)
    {
        ArgumentNullException.ThrowIfNull(p);
        if (!IsValidDeviceName(p.Name))
        {
            throw new RegistryException($"device name \"{p.Name}\" is invalid (1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit)");
        }
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_mgmt.Any(m => m.Device?.Name == p.Name))
            {
                throw new RegistryException($"vDPA device \"{p.Name}\" already exists");
            }
            var md = FindManagementDevice(mgmtdev) ?? throw new RegistryException($"management device \"{mgmtdev}\" not found");
            if (md.Device is { } existing)
            {
                throw new RegistryException($"{md.Name} already has vDPA device {existing.Name} (one device per VF)");
            }
            IVdpaDevice dev;
            try
            {
                dev = md.AddDevice(p);
            }
            catch (VdpaException e)
            {
                throw new RegistryException($"{md.Name}: {e.Message}");
            }
            _log.Info("vDPA device added", ("dev", dev.Name), ("mgmtdev", md.Name), ("features", $"0x{dev.GetDeviceFeatures():x}"));
            DeviceAdded?.Invoke(dev);
            return dev;
        }
    }

    /// <summary>dev del.</summary>
    public void DeleteDevice(string name)
    {
        lock (_lock)
        {
            var md = _mgmt.FirstOrDefault(m => m.Device?.Name == name) ?? throw new RegistryException($"vDPA device \"{name}\" not found");
            DeleteDeviceLocked(md, md.Device!);
        }
    }

    private void DeleteDeviceLocked(ManagementDevice md, IVdpaDevice d)
    {
        try
        {
            DetachConsumerLocked(d.Name);
            DeviceRemoving?.Invoke(d);
        }
#pragma warning disable CA1031 // a consumer failing to detach must not keep the device alive
        catch (Exception e)
#pragma warning restore CA1031
        {
            _log.Warn("consumer failed to detach", ("dev", d.Name), ("error", e.Message));
        }
        try
        {
            md.DeleteDevice();
        }
        catch (VdpaException e)
        {
            _log.Warn("device did not reset cleanly on removal", ("dev", d.Name), ("error", e.Message));
        }
        _log.Info("vDPA device deleted", ("dev", d.Name), ("mgmtdev", md.Name));
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            foreach (var name in _consumers.Keys.ToArray())
            {
                DetachConsumerLocked(name);
            }
            foreach (var md in _mgmt)
            {
                if (md.Device is { } d)
                {
                    DeleteDeviceLocked(md, d);
                }
                md.Dispose();
            }
            _mgmt.Clear();
        }
    }
}
