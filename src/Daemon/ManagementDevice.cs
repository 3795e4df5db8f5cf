using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.Pci;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.Daemon;

/// <summary>
/// `vdpa dev add` provisioning attributes: the net ones (mac, mtu, max_vqp), device_features, and the block
/// ones (capacity in 512-byte sectors, blk_size, read-only, number of request queues).
/// </summary>
public sealed record VdpaProvisioning(
    string Name, ReadOnlyMemory<byte>? Mac = null, ushort? Mtu = null, ushort? MaxVqPairs = null, ulong? DeviceFeatures = null,
    ulong? Capacity = null, uint? BlkSize = null, bool ReadOnly = false, ushort? Queues = null)
{
    /// <summary>Whether any block attribute is given.</summary>
    public bool HasBlockAttributes => Capacity is not null || BlkSize is not null || ReadOnly || Queues is not null;
}

/// <summary>
/// One VF as a vDPA management device (Linux ifcvf's mgmtdev): a software VF on the `sim` bus or a
/// VFIO function on the `pci` bus. It holds at most one vDPA device (IFCVF: one device per VF).
/// </summary>
public sealed class ManagementDevice : IDisposable
{
    private readonly bool _ownsFunction;
    private readonly IDisposable? _datapath;
    private IfcvfAdapter? _device;

    public ManagementDevice(string busName, string devName, IPciFunction function, bool ownsFunction, bool acceptGenericVirtioNet = false, IDisposable? datapath = null)
    {
        _datapath = datapath;
        ArgumentNullException.ThrowIfNull(function);
        BusName = busName;
        DevName = devName;
        Function = function;
        _ownsFunction = ownsFunction;
        AcceptGenericVirtioNet = acceptGenericVirtioNet;
        // What the mgmtdev reports (supported features, max vqs) comes from the hardware, read without
        // touching any state: identity check + capability walk + device_feature.
        (SupportedFeatures, MaxSupportedVqs) = IfcvfAdapter.DescribeFunction(function, acceptGenericVirtioNet);
        DeviceClass = IfcvfAdapter.ClassOf(function);
    }

    /// <summary>Net or block (from the VF's PCI IDs).</summary>
    public IfcDeviceClass DeviceClass { get; }

    /// <summary>The class as `vdpa mgmtdev show` prints it in supported_classes: `net` or `block`.</summary>
    public string ClassName => DeviceClass == IfcDeviceClass.Block ? "block" : "net";

    /// <summary>What a block VF's backend is (`file:PATH`, `mem:64M`), for mgmtdev show; null for net VFs.</summary>
    public string? BlockBackend { get; init; }

    /// <summary>`sim` or `pci`.</summary>
    public string BusName { get; }

    /// <summary>The CPU the software VF's datapath worker is pinned to (`sim add ... cpu`), or null.</summary>
    public int? DatapathCpu { get; init; }

    /// <summary>`ifcvf0` or `0000:00:05.0`.</summary>
    public string DevName { get; }

    /// <summary>`bus/dev`, as `vdpa mgmtdev show` prints it.</summary>
    public string Name => $"{BusName}/{DevName}";

    public IPciFunction Function { get; }

    public bool AcceptGenericVirtioNet { get; }

    public ulong SupportedFeatures { get; }

    public int MaxSupportedVqs { get; }

    /// <summary>The vDPA device on this VF, if one was added.</summary>
    public IVdpaDevice? Device => _device;

    /// <summary>dev add: probes the VF into a vDPA device with the provisioning applied.</summary>
    public IVdpaDevice AddDevice(VdpaProvisioning p)
    {
        ArgumentNullException.ThrowIfNull(p);
        if (_device is not null)
        {
            throw new VdpaException($"{Name} already has vDPA device {_device.Name} (one device per VF)");
        }
        bool provisioned = ProvisionBlock(p);
        try
        {
            _device = IfcvfAdapter.Probe(Function, new IfcvfAdapterOptions
            {
                Name = p.Name,
                AcceptGenericVirtioNet = AcceptGenericVirtioNet,
                Mac = p.Mac,
                Mtu = p.Mtu,
                MaxVqPairs = p.MaxVqPairs,
                DeviceFeatures = p.DeviceFeatures,
            });
        }
        catch
        {
            if (provisioned)
            {
                ((SoftIfcVf)Function).ProvisionBlock(null, false);
            }
            throw;
        }
        return _device;
    }

    /// <summary>
    /// Block provisioning: a software block VF takes it into its config (the simulator's management side,
    /// like vdpa_sim_blk); a net VF refuses it, and so does a VFIO block VF, whose config its firmware fixes.
    /// </summary>
    private bool ProvisionBlock(VdpaProvisioning p)
    {
        if (!p.HasBlockAttributes)
        {
            return false;
        }
        if (DeviceClass != IfcDeviceClass.Block)
        {
            throw new VdpaException($"{Name} is a net VF: capacity, blk_size, readonly and queues are block attributes");
        }
        if (Function is not SoftIfcVf { BlkConfig: not null } sw || sw.Options.Block is not { } built)
        {
            throw new VdpaException($"{Name}: its block config is fixed by the hardware; capacity, blk_size, readonly and queues can be provisioned on software VFs only");
        }
        uint blkSize = p.BlkSize ?? built.BlkSize;
        ulong perBlock = blkSize / VirtioBlk.SectorSize;
        ulong capacity = p.Capacity ?? built.Capacity / perBlock * perBlock; // a larger blk_size rounds the backend's capacity down
        if (p.Capacity is ulong c && c % perBlock != 0)
        {
            throw new VdpaException($"capacity {c} sectors is not a whole number of {blkSize}-byte blocks");
        }
        if (capacity == 0)
        {
            throw new VdpaException($"capacity must be at least one {blkSize}-byte block");
        }
        var config = built with { Capacity = capacity, BlkSize = blkSize, NumQueues = p.Queues ?? built.NumQueues, Cylinders = 0 };
        try
        {
            sw.ProvisionBlock(config, p.ReadOnly);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            throw new VdpaException($"{Name}: {e.Message}");
        }
        return true;
    }

    /// <summary>dev del: the adapter quiesces interrupts, resets the VF (its datapath stops) and drops its DMA maps.</summary>
    public void DeleteDevice()
    {
        var d = _device;
        if (d is null)
        {
            return;
        }
        _device = null;
        try
        {
            d.Dispose();
        }
        finally
        {
            if (Function is SoftIfcVf { IsBlock: true } sw && sw.Status == 0)
            {
                sw.ProvisionBlock(null, false); // back to the built config for the next dev add
            }
        }
    }

    public void Dispose()
    {
        try
        {
            DeleteDevice();
        }
        finally
        {
            if (_ownsFunction)
            {
                Function.Dispose();
            }
            _datapath?.Dispose(); // after the function: its queues are stopped by then
        }
    }
}
