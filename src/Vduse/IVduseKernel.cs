using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Vduse;

/// <summary>
/// The ioctls of one VDUSE device fd (/dev/vduse/NAME) that the session uses. <see cref="VduseKernelFd"/> is
/// the real one; tests give the session a kernel of their own. Everything it returns is the kernel's word:
/// the session validates it before use.
/// </summary>
public interface IVduseKernel
{
    /// <summary>VDUSE_DEV_GET_FEATURES: what the driver acked.</summary>
    ulong GetDriverFeatures();

    /// <summary>VDUSE_VQ_GET_INFO.</summary>
    VduseVqInfoView GetVqInfo(uint index);

    /// <summary>VDUSE_VQ_SETUP_KICKFD (-1 de-assigns).</summary>
    void SetupKickFd(uint index, int eventFd);

    /// <summary>VDUSE_VQ_INJECT_IRQ: 0 or the errno. Called on the datapath worker: must not throw.</summary>
    int InjectVqIrq(uint index);

    /// <summary>VDUSE_DEV_INJECT_CONFIG_IRQ: 0 or the errno.</summary>
    int InjectConfigIrq();

    /// <summary>VDUSE_DEV_SET_CONFIG.</summary>
    void SetConfig(uint offset, ReadOnlySpan<byte> data);

    /// <summary>VDUSE_IOTLB_GET_FD: the first region overlapping [start, last] (with a new fd the caller owns), or null.</summary>
    VduseIotlbRegion? GetIotlbFd(ulong start, ulong last);
}

/// <summary><see cref="IVduseKernel"/> on a real /dev/vduse/NAME descriptor.</summary>
public sealed class VduseKernelFd(SafeFd fd) : IVduseKernel
{
    public SafeFd Fd { get; } = fd;

    public ulong GetDriverFeatures() => VduseIoctl.GetDriverFeatures(Fd);

    public VduseVqInfoView GetVqInfo(uint index) => VduseIoctl.GetVqInfo(Fd, index);

    public void SetupKickFd(uint index, int eventFd) => VduseIoctl.SetupKickFd(Fd, index, eventFd);

    public int InjectVqIrq(uint index) => VduseIoctl.InjectVqIrq(Fd, index);

    public int InjectConfigIrq() => VduseIoctl.InjectConfigIrq(Fd);

    public void SetConfig(uint offset, ReadOnlySpan<byte> data) => VduseIoctl.SetConfig(Fd, offset, data);

    public VduseIotlbRegion? GetIotlbFd(ulong start, ulong last) => VduseIoctl.GetIotlbFd(Fd, start, last);
}
