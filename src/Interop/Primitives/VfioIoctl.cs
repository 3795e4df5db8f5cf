using System.Text;
using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// Typed wrappers of the VFIO ioctls (linux/vfio.h) and of pread/pwrite on a VFIO device fd. Each
/// wrapper fills argsz itself and throws an <see cref="IOException"/> whose HResult is the errno, so
/// callers can turn EACCES/EBUSY/ENOENT into an explanation. Safety contract: the descriptors passed in
/// stay open for the call; every buffer is a managed span or a stack struct owned by the wrapper.
/// </summary>
public static unsafe class VfioIoctl
{
    /// <summary>open(path, O_RDWR|O_CLOEXEC); the error keeps its errno.</summary>
    public static SafeFd Open(string path)
    {
        int fd = Libc.open(path, Libc.O_RDWR | Libc.O_CLOEXEC);
        if (fd < 0)
        {
            throw Errno.Exception($"open({path})");
        }
        return new SafeFd(fd);
    }

    public static int GetApiVersion(SafeFd container) => Check(Libc.ioctl(container.Fd, VfioAbi.VFIO_GET_API_VERSION, null), "VFIO_GET_API_VERSION");

    /// <summary>VFIO_CHECK_EXTENSION: true when the container supports that IOMMU type.</summary>
    public static bool CheckExtension(SafeFd container, int extension) =>
        Check(Libc.ioctl(container.Fd, VfioAbi.VFIO_CHECK_EXTENSION, (void*)extension), "VFIO_CHECK_EXTENSION") > 0;

    public static void SetIommu(SafeFd container, int type) =>
        Check(Libc.ioctl(container.Fd, VfioAbi.VFIO_SET_IOMMU, (void*)type), $"VFIO_SET_IOMMU({type})");

    public static uint GetGroupStatus(SafeFd group)
    {
        var s = new VfioGroupStatus { Argsz = (uint)sizeof(VfioGroupStatus) };
        Check(Libc.ioctl(group.Fd, VfioAbi.VFIO_GROUP_GET_STATUS, &s), "VFIO_GROUP_GET_STATUS");
        return s.Flags;
    }

    public static void SetContainer(SafeFd group, SafeFd container)
    {
        int fd = container.Fd;
        Check(Libc.ioctl(group.Fd, VfioAbi.VFIO_GROUP_SET_CONTAINER, &fd), "VFIO_GROUP_SET_CONTAINER");
    }

    public static void UnsetContainer(SafeFd group) =>
        Check(Libc.ioctl(group.Fd, VfioAbi.VFIO_GROUP_UNSET_CONTAINER, null), "VFIO_GROUP_UNSET_CONTAINER");

    /// <summary>VFIO_GROUP_GET_DEVICE_FD with the device's name (its PCI address).</summary>
    public static SafeFd GetDeviceFd(SafeFd group, string name)
    {
        int len = Encoding.UTF8.GetByteCount(name);
        Span<byte> z = len < 128 ? stackalloc byte[len + 1] : new byte[len + 1];
        Encoding.UTF8.GetBytes(name, z);
        z[len] = 0;
        fixed (byte* p = z)
        {
            int fd = Libc.ioctl(group.Fd, VfioAbi.VFIO_GROUP_GET_DEVICE_FD, p);
            if (fd < 0)
            {
                throw Errno.Exception($"VFIO_GROUP_GET_DEVICE_FD({name})");
            }
            return new SafeFd(fd);
        }
    }

    public static VfioDeviceInfo GetDeviceInfo(SafeFd device)
    {
        var i = new VfioDeviceInfo { Argsz = (uint)sizeof(VfioDeviceInfo) };
        Check(Libc.ioctl(device.Fd, VfioAbi.VFIO_DEVICE_GET_INFO, &i), "VFIO_DEVICE_GET_INFO");
        return i;
    }

    public static VfioRegionInfo GetRegionInfo(SafeFd device, int index)
    {
        var r = new VfioRegionInfo { Argsz = (uint)sizeof(VfioRegionInfo), Index = (uint)index };
        Check(Libc.ioctl(device.Fd, VfioAbi.VFIO_DEVICE_GET_REGION_INFO, &r), $"VFIO_DEVICE_GET_REGION_INFO({index})");
        return r;
    }

    public static VfioIrqInfo GetIrqInfo(SafeFd device, int index)
    {
        var r = new VfioIrqInfo { Argsz = (uint)sizeof(VfioIrqInfo), Index = (uint)index };
        Check(Libc.ioctl(device.Fd, VfioAbi.VFIO_DEVICE_GET_IRQ_INFO, &r), $"VFIO_DEVICE_GET_IRQ_INFO({index})");
        return r;
    }

    /// <summary>
    /// VFIO_DEVICE_SET_IRQS with DATA_EVENTFD|ACTION_TRIGGER for vectors [start, start+fds.Length); an fd of
    /// -1 detaches that vector. An empty span with DATA_NONE disables the index (see <see cref="DisableIrqs"/>).
    /// </summary>
    public static void SetIrqEventFds(SafeFd device, int index, int start, ReadOnlySpan<int> fds)
    {
        int size = VfioAbi.IrqSetHeaderSize + (4 * fds.Length);
        Span<byte> buf = size <= 1024 ? stackalloc byte[size] : new byte[size];
        WriteIrqSetHeader(buf, (uint)size, VfioAbi.VFIO_IRQ_SET_DATA_EVENTFD | VfioAbi.VFIO_IRQ_SET_ACTION_TRIGGER, index, start, fds.Length);
        for (int i = 0; i < fds.Length; i++)
        {
            BitConverter.TryWriteBytes(buf[(VfioAbi.IrqSetHeaderSize + (4 * i))..], fds[i]);
        }
        fixed (byte* p = buf)
        {
            Check(Libc.ioctl(device.Fd, VfioAbi.VFIO_DEVICE_SET_IRQS, p), $"VFIO_DEVICE_SET_IRQS(index {index}, {fds.Length} eventfds)");
        }
    }

    /// <summary>VFIO_DEVICE_SET_IRQS DATA_NONE|ACTION_TRIGGER with count 0: disables the interrupt index.</summary>
    public static void DisableIrqs(SafeFd device, int index)
    {
        Span<byte> buf = stackalloc byte[VfioAbi.IrqSetHeaderSize];
        WriteIrqSetHeader(buf, (uint)buf.Length, VfioAbi.VFIO_IRQ_SET_DATA_NONE | VfioAbi.VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0);
        fixed (byte* p = buf)
        {
            Check(Libc.ioctl(device.Fd, VfioAbi.VFIO_DEVICE_SET_IRQS, p), $"VFIO_DEVICE_SET_IRQS(index {index}, disable)");
        }
    }

    private static void WriteIrqSetHeader(Span<byte> b, uint argsz, uint flags, int index, int start, int count)
    {
        BitConverter.TryWriteBytes(b, argsz);
        BitConverter.TryWriteBytes(b[4..], flags);
        BitConverter.TryWriteBytes(b[8..], (uint)index);
        BitConverter.TryWriteBytes(b[12..], (uint)start);
        BitConverter.TryWriteBytes(b[16..], (uint)count);
    }

    public static void Reset(SafeFd device) => Check(Libc.ioctl(device.Fd, VfioAbi.VFIO_DEVICE_RESET, null), "VFIO_DEVICE_RESET");

    /// <summary>VFIO_IOMMU_MAP_DMA (type1): [iova, iova + memory.Length) → the slice's bytes of this process.</summary>
    public static void MapDma(SafeFd container, ulong iova, MemorySlice memory, bool writable)
    {
        ulong size = memory.Length;
        var m = new VfioDmaMap
        {
            Argsz = (uint)sizeof(VfioDmaMap),
            Flags = VfioAbi.VFIO_DMA_MAP_FLAG_READ | (writable ? VfioAbi.VFIO_DMA_MAP_FLAG_WRITE : 0),
            Vaddr = (ulong)memory.Address,
            Iova = iova,
            Size = size,
        };
        Check(Libc.ioctl(container.Fd, VfioAbi.VFIO_IOMMU_MAP_DMA, &m), $"VFIO_IOMMU_MAP_DMA(iova 0x{iova:x}, 0x{size:x} bytes)");
    }

    /// <summary>VFIO_IOMMU_UNMAP_DMA; returns the number of bytes the kernel reports unmapped.</summary>
    public static ulong UnmapDma(SafeFd container, ulong iova, ulong size)
    {
        var u = new VfioDmaUnmap { Argsz = (uint)sizeof(VfioDmaUnmap), Iova = iova, Size = size };
        Check(Libc.ioctl(container.Fd, VfioAbi.VFIO_IOMMU_UNMAP_DMA, &u), $"VFIO_IOMMU_UNMAP_DMA(iova 0x{iova:x}, 0x{size:x} bytes)");
        return u.Size;
    }

    /// <summary>pread of exactly <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>.</summary>
    public static void PRead(SafeFd fd, Span<byte> buffer, long offset)
    {
        fixed (byte* p = buffer)
        {
            nint n = Libc.pread(fd.Fd, p, (nuint)buffer.Length, offset);
            if (n != buffer.Length)
            {
                throw n < 0 ? Errno.Exception($"pread({buffer.Length} bytes at 0x{offset:x})")
                    : new IOException($"pread({buffer.Length} bytes at 0x{offset:x}) returned {n} bytes");
            }
        }
    }

    /// <summary>pwrite of exactly <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>.</summary>
    public static void PWrite(SafeFd fd, ReadOnlySpan<byte> buffer, long offset)
    {
        fixed (byte* p = buffer)
        {
            nint n = Libc.pwrite(fd.Fd, p, (nuint)buffer.Length, offset);
            if (n != buffer.Length)
            {
                throw n < 0 ? Errno.Exception($"pwrite({buffer.Length} bytes at 0x{offset:x})")
                    : new IOException($"pwrite({buffer.Length} bytes at 0x{offset:x}) wrote {n} bytes");
            }
        }
    }

    private static int Check(int r, string what) => r < 0 ? throw Errno.Exception(what) : r;
}

/// <summary>
/// Naturally sized, single-access (volatile) reads and writes of a mapped device region (a BAR mmapped
/// from a VFIO device fd). Safety contract: the region stays mapped while accessed; every access is
/// bounds-checked and must be aligned to its size (a device may fault on a split access).
/// </summary>
public static unsafe class Mmio
{
    public static byte Read8(MappedMemory m, ulong off) => Volatile.Read(ref *(byte*)At(m, off, 1));

    public static ushort Read16(MappedMemory m, ulong off) => Volatile.Read(ref *(ushort*)At(m, off, 2));

    public static uint Read32(MappedMemory m, ulong off) => Volatile.Read(ref *(uint*)At(m, off, 4));

    public static void Write8(MappedMemory m, ulong off, byte v) => Volatile.Write(ref *(byte*)At(m, off, 1), v);

    public static void Write16(MappedMemory m, ulong off, ushort v) => Volatile.Write(ref *(ushort*)At(m, off, 2), v);

    public static void Write32(MappedMemory m, ulong off, uint v) => Volatile.Write(ref *(uint*)At(m, off, 4), v);

    private static nint At(MappedMemory m, ulong off, uint size)
    {
        nint a = m.Address;
        ObjectDisposedException.ThrowIf(a == 0, m);
        if (off > m.Length || size > m.Length - off || (off & (size - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(off), $"{size}-byte MMIO access at 0x{off:x} outside or misaligned in a 0x{m.Length:x}-byte region");
        }
        return a + (nint)off;
    }
}
