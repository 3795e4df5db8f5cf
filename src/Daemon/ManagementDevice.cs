using IfcVdpa.Ifcvf;
using IfcVdpa.Pci;
using IfcVdpa.Vdpa;

namespace IfcVdpa.Daemon;

/// <summary>`vdpa dev add` provisioning attributes.</summary>
public sealed record VdpaProvisioning(
    string Name, ReadOnlyMemory<byte>? Mac = null, ushort? Mtu = null, ushort? MaxVqPairs = null, ulong? DeviceFeatures = null);

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
    }

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
        _device = IfcvfAdapter.Probe(Function, new IfcvfAdapterOptions
        {
            Name = p.Name,
            AcceptGenericVirtioNet = AcceptGenericVirtioNet,
            Mac = p.Mac,
            Mtu = p.Mtu,
            MaxVqPairs = p.MaxVqPairs,
            DeviceFeatures = p.DeviceFeatures,
        });
        return _device;
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
        d.Dispose();
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
