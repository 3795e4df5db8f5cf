using IfcVdpa.IfcvfModel;
using IfcVdpa.Vduse;

namespace IfcVdpa.Daemon;

/// <summary>
/// The VDUSE consumer in the daemon (`dev attach NAME vduse [VDUSENAME]`): the vDPA device joins the kernel's
/// vDPA bus, where `vdpa dev add name VDUSENAME mgmtdev vduse` binds it to virtio_vdpa or vhost_vdpa. Also
/// `sim link NAME up|down`, the software VF's link status (a link change reaches the kernel driver as a
/// config interrupt).
/// </summary>
public static class VduseConsumer
{
    public static void Attach(DeviceRegistry registry, string devName, string vduseName)
    {
        ArgumentNullException.ThrowIfNull(registry);
        if (!VduseDevice.IsValidName(vduseName))
        {
            throw new ControlException($"VDUSE name \"{vduseName}\" is not valid (1-63 of A-Z a-z 0-9 _ . -)");
        }
        registry.AttachConsumer(devName, "vduse", $"vduse {vduseName}",
            dev => VduseDevice.Create(dev, new VduseOptions { Name = vduseName, Log = m => registry.LogLine($"{devName}: {m}") }));
    }

    /// <summary>A VDUSE device still bound to the bus is not detached: the kernel driver would lose its device under it.</summary>
    public static void EnsureDetachable(DeviceRegistry registry, string devName)
    {
        ArgumentNullException.ThrowIfNull(registry);
        if (registry.ConsumerOf(devName) is { Handle: VduseDevice v } && v.OnBus)
        {
            throw new ControlException($"VDUSE device {v.Name} is bound to the kernel's vDPA bus: run `vdpa dev del {v.Name}` first");
        }
    }

    /// <summary>sim link NAME up|down.</summary>
    public static void SimLink(DeviceRegistry registry, ControlArgs a)
    {
        ArgumentNullException.ThrowIfNull(registry);
        ArgumentNullException.ThrowIfNull(a);
        string name = a.RequiredString("name");
        bool up = a.Bool("up") ?? throw new ControlException("sim link needs up (true or false)");
        a.EnsureNoUnknown();
        var md = registry.FindManagementDevice(name);
        if (md is null || md.BusName != "sim" || md.Function is not SoftIfcVf vf)
        {
            throw new ControlException($"software VF \"{name}\" not found");
        }
        vf.SetLinkUp(up);
        registry.LogLine($"{md.Name}: link {(up ? "up" : "down")}");
    }
}
