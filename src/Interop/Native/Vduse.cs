using System.Runtime.InteropServices;

namespace IfcVdpa.Interop.Native;

/// <summary>
/// The VDUSE user ABI (include/uapi/linux/vduse.h, API version 0: kernels 5.15+, net devices 6.7+).
/// ioctl numbers are <c>_IOC(dir, 0x81, nr, size)</c>; the struct sizes are part of the numbers.
/// Public so tests can check numbers and sizes against the header.
/// </summary>
public static class VduseAbi
{
    public const uint VDUSE_BASE = 0x81;
    public const ulong VDUSE_API_VERSION = 0;
    public const int VDUSE_NAME_MAX = 256;

    private const uint IocWrite = 1, IocRead = 2;

    private static uint Ioc(uint dir, uint nr, int size) => (dir << 30) | ((uint)size << 16) | (VDUSE_BASE << 8) | nr;

    // /dev/vduse/control
    public static readonly uint VDUSE_GET_API_VERSION = Ioc(IocRead, 0x00, sizeof(ulong));
    public static readonly uint VDUSE_SET_API_VERSION = Ioc(IocWrite, 0x01, sizeof(ulong));
    public static readonly uint VDUSE_CREATE_DEV = Ioc(IocWrite, 0x02, Marshal.SizeOf<VduseDevConfig>());
    public static readonly uint VDUSE_DESTROY_DEV = Ioc(IocWrite, 0x03, VDUSE_NAME_MAX);

    // /dev/vduse/$NAME
    public static readonly uint VDUSE_IOTLB_GET_FD = Ioc(IocRead | IocWrite, 0x10, Marshal.SizeOf<VduseIotlbEntry>());
    public static readonly uint VDUSE_DEV_GET_FEATURES = Ioc(IocRead, 0x11, sizeof(ulong));
    public static readonly uint VDUSE_DEV_SET_CONFIG = Ioc(IocWrite, 0x12, 8);
    public static readonly uint VDUSE_DEV_INJECT_CONFIG_IRQ = Ioc(0, 0x13, 0);
    public static readonly uint VDUSE_VQ_SETUP = Ioc(IocWrite, 0x14, Marshal.SizeOf<VduseVqConfig>());
    public static readonly uint VDUSE_VQ_GET_INFO = Ioc(IocRead | IocWrite, 0x15, Marshal.SizeOf<VduseVqInfo>());
    public static readonly uint VDUSE_VQ_SETUP_KICKFD = Ioc(IocWrite, 0x16, Marshal.SizeOf<VduseVqEventFd>());
    public static readonly uint VDUSE_VQ_INJECT_IRQ = Ioc(IocWrite, 0x17, sizeof(uint));

    public const byte VDUSE_ACCESS_RO = 0x1;
    public const byte VDUSE_ACCESS_WO = 0x2;
    public const byte VDUSE_ACCESS_RW = 0x3;
    public const int VDUSE_EVENTFD_DEASSIGN = -1;
}

/// <summary>struct vduse_dev_config without its trailing config[] (336 bytes; the config bytes follow it in one buffer).</summary>
[StructLayout(LayoutKind.Sequential, Size = 336)]
public unsafe struct VduseDevConfig
{
    public fixed byte Name[VduseAbi.VDUSE_NAME_MAX];
    public uint VendorId;
    public uint DeviceId;
    public ulong Features;
    public uint VqNum;
    public uint VqAlign;
    public fixed uint Reserved[13]; // ngroups, nas (API 1) and reserved[11]: zero for API 0
    public uint ConfigSize;
}

/// <summary>struct vduse_iotlb_entry: one IOVA region [Start, Last] at file offset Offset of the returned fd.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VduseIotlbEntry
{
    public ulong Offset;
    public ulong Start;
    public ulong Last;
    public byte Perm;
}

/// <summary>struct vduse_vq_config (VDUSE_VQ_SETUP).</summary>
[StructLayout(LayoutKind.Sequential, Size = 32)]
public struct VduseVqConfig
{
    public uint Index;
    public ushort MaxSize;
    public ushort Reserved1;
    public uint Group;
}

/// <summary>struct vduse_vq_info (VDUSE_VQ_GET_INFO); the union holds the split avail index or the packed state.</summary>
[StructLayout(LayoutKind.Explicit, Size = 48)]
public struct VduseVqInfo
{
    [FieldOffset(0)] public uint Index;
    [FieldOffset(4)] public uint Num;
    [FieldOffset(8)] public ulong DescAddr;
    [FieldOffset(16)] public ulong DriverAddr;
    [FieldOffset(24)] public ulong DeviceAddr;
    /// <summary>split.avail_index, or packed.last_avail_counter.</summary>
    [FieldOffset(32)] public ushort State0;
    /// <summary>packed.last_avail_idx.</summary>
    [FieldOffset(34)] public ushort State1;
    /// <summary>packed.last_used_counter.</summary>
    [FieldOffset(36)] public ushort State2;
    /// <summary>packed.last_used_idx.</summary>
    [FieldOffset(38)] public ushort State3;
    [FieldOffset(40)] public byte Ready;
}

/// <summary>struct vduse_vq_eventfd (VDUSE_VQ_SETUP_KICKFD).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VduseVqEventFd
{
    public uint Index;
    public int Fd;
}
