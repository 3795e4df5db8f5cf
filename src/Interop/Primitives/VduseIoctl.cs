using System.Text;
using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>One IOVA region the VDUSE kernel module reported (VDUSE_IOTLB_GET_FD): [Start, Last] is at
/// <see cref="Offset"/> of <see cref="Fd"/> (owned by the caller), with the access the kernel grants.</summary>
public sealed record VduseIotlbRegion(SafeFd Fd, ulong Offset, ulong Start, ulong Last, byte Perm);

/// <summary>A virtqueue as the kernel's vDPA bus driver set it up (VDUSE_VQ_GET_INFO).</summary>
public readonly record struct VduseVqInfoView(
    uint Index, uint Num, ulong DescAddr, ulong DriverAddr, ulong DeviceAddr, bool Ready,
    ushort SplitAvailIndex, ushort PackedAvailCounter, ushort PackedAvailIdx, ushort PackedUsedCounter, ushort PackedUsedIdx);

/// <summary>
/// Typed wrappers of the VDUSE ioctls (linux/vduse.h) and of read/write on a VDUSE device fd. Errors are
/// <see cref="IOException"/>s whose HResult is the errno (callers explain ENOENT, EPERM, EEXIST, EBUSY), except
/// on the interrupt path, which returns the errno (it runs on the datapath worker and must not throw).
/// Safety contract: the descriptors passed in stay open for the call; every buffer is a managed span or a
/// stack struct owned by the wrapper; nothing the kernel returns is dereferenced here.
/// </summary>
public static unsafe class VduseIoctl
{
    /// <summary>Size of struct vduse_dev_request (read from the device fd) and of struct vduse_dev_response.</summary>
    public const int MessageSize = 152;

    public static SafeFd Open(string path, bool nonBlocking = false)
    {
        int fd = Libc.open(path, Libc.O_RDWR | Libc.O_CLOEXEC | (nonBlocking ? Libc.O_NONBLOCK : 0));
        if (fd < 0)
        {
            throw Errno.Exception($"open({path})");
        }
        return new SafeFd(fd);
    }

    public static ulong GetApiVersion(SafeFd control)
    {
        ulong v = 0;
        Check(Libc.ioctl(control.Fd, VduseAbi.VDUSE_GET_API_VERSION, &v), "VDUSE_GET_API_VERSION");
        return v;
    }

    public static void SetApiVersion(SafeFd control, ulong version) =>
        Check(Libc.ioctl(control.Fd, VduseAbi.VDUSE_SET_API_VERSION, &version), $"VDUSE_SET_API_VERSION({version})");

    /// <summary>VDUSE_CREATE_DEV: the device appears as /dev/vduse/<paramref name="name"/>.</summary>
    public static void CreateDevice(SafeFd control, string name, uint vendorId, uint deviceId, ulong features,
        uint vqNum, uint vqAlign, ReadOnlySpan<byte> config)
    {
        int head = sizeof(VduseDevConfig);
        var buf = new byte[head + config.Length];
        fixed (byte* p = buf)
        {
            var c = (VduseDevConfig*)p;
            WriteName(new Span<byte>(c->Name, VduseAbi.VDUSE_NAME_MAX), name);
            c->VendorId = vendorId;
            c->DeviceId = deviceId;
            c->Features = features;
            c->VqNum = vqNum;
            c->VqAlign = vqAlign;
            c->ConfigSize = (uint)config.Length;
            config.CopyTo(buf.AsSpan(head));
            Check(Libc.ioctl(control.Fd, VduseAbi.VDUSE_CREATE_DEV, p), $"VDUSE_CREATE_DEV({name})");
        }
    }

    public static void DestroyDevice(SafeFd control, string name)
    {
        byte* n = stackalloc byte[VduseAbi.VDUSE_NAME_MAX];
        WriteName(new Span<byte>(n, VduseAbi.VDUSE_NAME_MAX), name);
        Check(Libc.ioctl(control.Fd, VduseAbi.VDUSE_DESTROY_DEV, n), $"VDUSE_DESTROY_DEV({name})");
    }

    public static void SetupVq(SafeFd dev, uint index, ushort maxSize)
    {
        var c = new VduseVqConfig { Index = index, MaxSize = maxSize };
        Check(Libc.ioctl(dev.Fd, VduseAbi.VDUSE_VQ_SETUP, &c), $"VDUSE_VQ_SETUP({index})");
    }

    public static VduseVqInfoView GetVqInfo(SafeFd dev, uint index)
    {
        var i = new VduseVqInfo { Index = index };
        Check(Libc.ioctl(dev.Fd, VduseAbi.VDUSE_VQ_GET_INFO, &i), $"VDUSE_VQ_GET_INFO({index})");
        return new VduseVqInfoView(i.Index, i.Num, i.DescAddr, i.DriverAddr, i.DeviceAddr, i.Ready != 0,
            i.State0, i.State0, i.State1, i.State2, i.State3);
    }

    /// <summary>VDUSE_VQ_SETUP_KICKFD; <paramref name="eventFd"/> -1 de-assigns.</summary>
    public static void SetupKickFd(SafeFd dev, uint index, int eventFd)
    {
        var e = new VduseVqEventFd { Index = index, Fd = eventFd };
        Check(Libc.ioctl(dev.Fd, VduseAbi.VDUSE_VQ_SETUP_KICKFD, &e), $"VDUSE_VQ_SETUP_KICKFD({index})");
    }

    /// <summary>VDUSE_VQ_INJECT_IRQ: 0, or the errno (EINVAL before DRIVER_OK). Never throws, never allocates.</summary>
    public static int InjectVqIrq(SafeFd dev, uint index)
    {
        uint i = index;
        return Libc.ioctl(dev.Fd, VduseAbi.VDUSE_VQ_INJECT_IRQ, &i) < 0 ? Errno.Last : 0;
    }

    /// <summary>VDUSE_DEV_INJECT_CONFIG_IRQ: 0, or the errno (EINVAL before DRIVER_OK).</summary>
    public static int InjectConfigIrq(SafeFd dev) =>
        Libc.ioctl(dev.Fd, VduseAbi.VDUSE_DEV_INJECT_CONFIG_IRQ, null) < 0 ? Errno.Last : 0;

    /// <summary>VDUSE_DEV_SET_CONFIG: replaces config bytes [offset, offset + data.Length) in the kernel's copy.</summary>
    public static void SetConfig(SafeFd dev, uint offset, ReadOnlySpan<byte> data)
    {
        var buf = new byte[8 + data.Length];
        BitConverter.TryWriteBytes(buf.AsSpan(0, 4), offset);
        BitConverter.TryWriteBytes(buf.AsSpan(4, 4), (uint)data.Length);
        data.CopyTo(buf.AsSpan(8));
        fixed (byte* p = buf)
        {
            Check(Libc.ioctl(dev.Fd, VduseAbi.VDUSE_DEV_SET_CONFIG, p), $"VDUSE_DEV_SET_CONFIG({offset}, {data.Length})");
        }
    }

    /// <summary>VDUSE_DEV_GET_FEATURES: the features the driver wrote (meaningful once FEATURES_OK is set).</summary>
    public static ulong GetDriverFeatures(SafeFd dev)
    {
        ulong f = 0;
        Check(Libc.ioctl(dev.Fd, VduseAbi.VDUSE_DEV_GET_FEATURES, &f), "VDUSE_DEV_GET_FEATURES");
        return f;
    }

    /// <summary>
    /// VDUSE_IOTLB_GET_FD: the first region overlapping [start, last] with a new fd for it, or null when none
    /// does (EINVAL). The region's fields are the kernel's word: the caller validates them before mapping.
    /// </summary>
    public static VduseIotlbRegion? GetIotlbFd(SafeFd dev, ulong start, ulong last)
    {
        var e = new VduseIotlbEntry { Start = start, Last = last };
        int fd = Libc.ioctl(dev.Fd, VduseAbi.VDUSE_IOTLB_GET_FD, &e);
        if (fd < 0)
        {
            if (Errno.Last == 22)
            {
                return null;
            }
            throw Errno.Exception($"VDUSE_IOTLB_GET_FD(0x{start:x}-0x{last:x})");
        }
        return new VduseIotlbRegion(new SafeFd(fd), e.Offset, e.Start, e.Last, e.Perm);
    }

    /// <summary>Reads one request into <paramref name="buffer"/> (at least <see cref="MessageSize"/> bytes): the byte count, or -errno.</summary>
    public static int ReadMessage(SafeFd dev, Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            nint n = Libc.read(dev.Fd, p, (nuint)buffer.Length);
            return n < 0 ? -Errno.Last : (int)n;
        }
    }

    /// <summary>Writes one response: the byte count, or -errno.</summary>
    public static int WriteMessage(SafeFd dev, ReadOnlySpan<byte> message)
    {
        fixed (byte* p = message)
        {
            nint n = Libc.write(dev.Fd, p, (nuint)message.Length);
            return n < 0 ? -Errno.Last : (int)n;
        }
    }

    private static void WriteName(Span<byte> dest, string name)
    {
        dest.Clear();
        int n = Encoding.UTF8.GetByteCount(name);
        if (n == 0 || n >= dest.Length)
        {
            throw new ArgumentException($"VDUSE device name must be 1-{dest.Length - 1} bytes", nameof(name));
        }
        Encoding.UTF8.GetBytes(name, dest);
    }

    private static int Check(int r, string what) => r < 0 ? throw Errno.Exception(what) : r;
}
