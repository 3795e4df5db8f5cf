using IfcVdpa.Interop.Native;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;

namespace IfcVdpa.Vfio;

/// <summary>Where VFIO and sysfs live (parameters so tests can point them at fake trees).</summary>
public sealed record VfioOptions
{
    public string SysRoot { get; init; } = "/sys";

    /// <summary>Directory of the VFIO character devices (container "vfio" and one node per group).</summary>
    public string VfioDir { get; init; } = "/dev/vfio";

    /// <summary>Set Memory Space + Bus Master in the command register on open (pci_enable_device + pci_set_master).</summary>
    public bool EnableBusMaster { get; init; } = true;

    /// <summary>mmap the BARs whose region allows it (false: every BAR access is a pread/pwrite on the device fd).</summary>
    public bool UseMmap { get; init; } = true;
}

/// <summary>
/// A real PCI function driven through VFIO (type1 IOMMU): one container, the function's group and its
/// device fd. Config space goes through the config region (pread/pwrite); a BAR whose region allows
/// mmap is mapped and accessed with single volatile loads/stores, any other BAR through pread/pwrite
/// at the region offset. MSI-X vectors are VFIO eventfds: an <see cref="EventFdSink"/>'s own eventfd is
/// handed to the kernel (the interrupt writes it with no hop); any other sink gets an internal eventfd
/// served by one waiter thread. DMA maps go to the container's IOMMU domain (IOVA chosen by the caller).
/// </summary>
public sealed partial class VfioPciFunction : IPciFunction
{
    private const ulong PageSize = 4096;

    private readonly SafeFd _container;
    private readonly SafeFd _group;
    private readonly SafeFd _device;
    private readonly long _configOffset;
    private readonly BarAccess?[] _bars = new BarAccess?[6];
    private readonly Lock _dmaLock = new();
    private readonly Dictionary<(ulong Iova, ulong Size), MemorySlice> _dma = [];
    private int _disposed;

    private sealed class BarAccess(ulong size, long regionOffset, uint regionFlags, MappedMemory? map)
    {
        public ulong Size { get; } = size;
        public long RegionOffset { get; } = regionOffset;
        public uint RegionFlags { get; } = regionFlags;
        public MappedMemory? Map { get; } = map;
    }

    private VfioPciFunction(string address, int group, SafeFd container, SafeFd groupFd, SafeFd device, int iommuType, VfioOptions options)
    {
        Address = address;
        IommuGroup = group;
        IommuType = iommuType;
        _container = container;
        _group = groupFd;
        _device = device;
        var info = VfioIoctl.GetDeviceInfo(device);
        if ((info.Flags & VfioAbi.VFIO_DEVICE_FLAGS_PCI) == 0 || info.NumRegions <= VfioAbi.VFIO_PCI_CONFIG_REGION_INDEX)
        {
            throw new VfioException($"{address}: the VFIO device is not a vfio-pci device (flags 0x{info.Flags:x}, {info.NumRegions} regions)");
        }
        CanReset = (info.Flags & VfioAbi.VFIO_DEVICE_FLAGS_RESET) != 0;
        var cfg = VfioIoctl.GetRegionInfo(device, VfioAbi.VFIO_PCI_CONFIG_REGION_INDEX);
        _configOffset = (long)cfg.Offset;
        ConfigSize = cfg.Size >= 4096 ? 4096 : 256;
        try
        {
            var bars = new List<PciBar>();
            for (int i = 0; i < 6; i++)
            {
                var r = VfioIoctl.GetRegionInfo(device, VfioAbi.VFIO_PCI_BAR0_REGION_INDEX + i);
                uint reg = ReadConfig32(PciConfig.Bar0 + (4 * i));
                if (r.Size == 0 || (reg & 1) != 0)
                {
                    continue; // absent, the upper half of a 64-bit BAR, or an I/O BAR
                }
                bool is64 = (reg & 0x6) == PciConfig.BarMem64;
                ulong addr = reg & ~0xFul;
                if (is64 && i < 5)
                {
                    addr |= (ulong)ReadConfig32(PciConfig.Bar0 + (4 * (i + 1))) << 32;
                }
                MappedMemory? map = null;
                if (options.UseMmap && (r.Flags & VfioAbi.VFIO_REGION_INFO_FLAG_MMAP) != 0 && r.Size % PageSize == 0)
                {
                    try
                    {
                        map = MappedMemory.MapFd(device.Fd, r.Size, r.Offset);
                    }
                    catch (IOException)
                    {
                        map = null; // the region refuses mmap after all (sparse areas): pread/pwrite it
                    }
                }
                _bars[i] = new BarAccess(r.Size, (long)r.Offset, r.Flags, map);
                bars.Add(new PciBar(i, r.Size, is64, (reg & PciConfig.BarPrefetch) != 0, addr));
                if (is64)
                {
                    i++;
                }
            }
            Bars = bars;
            var msix = VfioIoctl.GetIrqInfo(device, VfioAbi.VFIO_PCI_MSIX_IRQ_INDEX);
            MsixVectorCount = (msix.Flags & VfioAbi.VFIO_IRQ_INFO_EVENTFD) != 0 ? (int)msix.Count : 0;
            if (options.EnableBusMaster)
            {
                ushort cmd = ReadConfig16(PciConfig.Command);
                WriteConfig16(PciConfig.Command, (ushort)(cmd | PciConfig.CommandMemory | PciConfig.CommandBusMaster));
            }
        }
        catch
        {
            foreach (var b in _bars)
            {
                b?.Map?.Dispose(); // the fds are closed by Open
            }
            throw;
        }
    }

    /// <summary>
    /// Opens a function that is bound to vfio-pci. Every usual failure is explained: no such function,
    /// no IOMMU group, bound to another driver, no /dev/vfio/vfio, no permission, group not viable,
    /// group busy, no type1 IOMMU.
    /// </summary>
    public static VfioPciFunction Open(string address, VfioOptions? options = null)
    {
        options ??= new VfioOptions();
        var sysfs = new PciSysfs(options.SysRoot);
        string bdf = PciSysfs.NormalizeAddress(address);
        var info = sysfs.Get(bdf);
        if (info.IommuGroup is not int group)
        {
            throw new VfioException($"{bdf} has no IOMMU group: the IOMMU is off or absent. Enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on)");
        }
        if (info.Driver != PciSysfs.VfioDriver)
        {
            throw new VfioException(info.Driver is null
                ? $"{bdf} is not bound to any driver; bind it to vfio-pci first: ifcvf pci bind {bdf}"
                : $"{bdf} is bound to {info.Driver}, not vfio-pci; bind it first: ifcvf pci bind {bdf}");
        }
        string containerPath = Path.Combine(options.VfioDir, "vfio");
        SafeFd container = OpenNode(containerPath, bdf, group,
            enoent: $"{containerPath} does not exist: the vfio module is not loaded (modprobe vfio-pci) or /dev is not populated");
        SafeFd? groupFd = null;
        SafeFd? device = null;
        try
        {
            int api = VfioIoctl.GetApiVersion(container);
            if (api != VfioAbi.VFIO_API_VERSION)
            {
                throw new VfioException($"{containerPath}: VFIO API version {api}, expected {VfioAbi.VFIO_API_VERSION}");
            }
            int type = VfioIoctl.CheckExtension(container, VfioAbi.VFIO_TYPE1v2_IOMMU) ? VfioAbi.VFIO_TYPE1v2_IOMMU
                : VfioIoctl.CheckExtension(container, VfioAbi.VFIO_TYPE1_IOMMU) ? VfioAbi.VFIO_TYPE1_IOMMU
                : throw new VfioException("the kernel offers no type1 IOMMU for VFIO (modprobe vfio_iommu_type1)");
            string groupPath = Path.Combine(options.VfioDir, group.ToString(System.Globalization.CultureInfo.InvariantCulture));
            groupFd = OpenNode(groupPath, bdf, group,
                enoent: $"{groupPath} does not exist although {bdf} is in IOMMU group {group} (is vfio-pci bound and /dev populated?)");
            uint status = VfioIoctl.GetGroupStatus(groupFd);
            if ((status & VfioAbi.VFIO_GROUP_FLAGS_VIABLE) == 0)
            {
                var members = sysfs.GroupMembers(group)
                    .Select(m => $"{m} ({SafeDriver(sysfs, m) ?? "no driver"})");
                throw new VfioException($"IOMMU group {group} is not viable: every function in it must be bound to vfio-pci or to no driver; members: {string.Join(", ", members)}");
            }
            VfioIoctl.SetContainer(groupFd, container);
            try
            {
                VfioIoctl.SetIommu(container, type);
            }
            catch (IOException e) when (e.HResult == Errnos.EPERM)
            {
                throw new VfioException($"{bdf}: the type1 IOMMU refused group {group} (EPERM): the platform lacks interrupt remapping; if you accept the risk load vfio_iommu_type1 with allow_unsafe_interrupts=1", e);
            }
            try
            {
                device = VfioIoctl.GetDeviceFd(groupFd, bdf);
            }
            catch (IOException e)
            {
                throw new VfioException($"{bdf}: cannot get its VFIO device fd: {e.Message}", e);
            }
            return new VfioPciFunction(bdf, group, container, groupFd, device, type, options);
        }
        catch (Exception e) when (e is VfioException or IOException or ArgumentException)
        {
            device?.Dispose();
            groupFd?.Dispose();
            container.Dispose();
            if (e is VfioException)
            {
                throw;
            }
            throw new VfioException($"{bdf}: VFIO setup failed: {e.Message}", e);
        }
    }

    private static string? SafeDriver(PciSysfs sysfs, string address)
    {
        try
        {
            return sysfs.GetDriver(address);
        }
        catch (ArgumentException)
        {
            return null;
        }
    }

    private static SafeFd OpenNode(string path, string bdf, int group, string enoent)
    {
        try
        {
            return VfioIoctl.Open(path);
        }
        catch (IOException e)
        {
            throw e.HResult switch
            {
                Errnos.ENOENT or Errnos.ENODEV => new VfioException(enoent, e),
                Errnos.EACCES or Errnos.EPERM => new VfioException($"permission denied opening {path}: run as root, or give your user the group node (chown USER /dev/vfio/{group}) and raise its locked-memory limit (ulimit -l) for DMA mappings", e),
                Errnos.EBUSY => new VfioException($"{path} is busy: IOMMU group {group} (holding {bdf}) is already open in another process (QEMU, DPDK or another ifcvf)", e),
                _ => new VfioException($"{bdf}: {e.Message}", e),
            };
        }
    }

    // ---- identity ---------------------------------------------------------------------------------

    public string Address { get; }

    public int IommuGroup { get; }

    /// <summary>VFIO_TYPE1_IOMMU (1) or VFIO_TYPE1v2_IOMMU (3).</summary>
    public int IommuType { get; }

    /// <summary>The device supports VFIO_DEVICE_RESET.</summary>
    public bool CanReset { get; }

    public int ConfigSize { get; }

    public IReadOnlyList<PciBar> Bars { get; }

    /// <summary>BARs accessed through mmap (the others go through pread/pwrite), for `dev show` and tests.</summary>
    public IEnumerable<int> MappedBars => Enumerable.Range(0, 6).Where(i => _bars[i]?.Map is not null);

    public int MsixVectorCount { get; }

    /// <summary>The VFIO device fd (for offering a doorbell page to a front-end by mmap offset).</summary>
    public SafeFd DeviceFd => _device;

    /// <summary>Region offset of a BAR in the device fd (for mmap by a peer).</summary>
    public long BarRegionOffset(int bar) => Bar(bar).RegionOffset;

    /// <summary>
    /// The device fd and region offset of <paramref name="bar"/> when a peer may mmap the whole BAR (see
    /// <see cref="PeerMappingRefusal"/>); null otherwise. The fd stays owned by this function.
    /// </summary>
    public PciBarMapping? GetBarMapping(int bar)
    {
        if ((uint)bar >= 6 || _bars[bar] is not { } b || _disposed != 0)
        {
            return null;
        }
        return PeerMappingRefusal(b.RegionFlags, b.Size, b.Map is not null) is null
            ? new PciBarMapping(_device, (ulong)b.RegionOffset, b.Size)
            : null;
    }

    /// <summary>
    /// Why a peer may not mmap a BAR region as a whole, or null when it may: the region must carry
    /// VFIO_REGION_INFO_FLAG_MMAP and be whole pages. A region with capabilities may restrict mmap to
    /// sparse areas (VFIO_REGION_INFO_CAP_SPARSE_MMAP), which are not parsed here: such a region counts
    /// only when mapping it whole here succeeded (<paramref name="mappedWholeHere"/>), which proves the
    /// kernel allows every page of it.
    /// </summary>
    public static string? PeerMappingRefusal(uint regionFlags, ulong regionSize, bool mappedWholeHere)
    {
        if ((regionFlags & VfioAbi.VFIO_REGION_INFO_FLAG_MMAP) == 0)
        {
            return "VFIO does not allow mmap of the region";
        }
        if (regionSize == 0 || regionSize % PageSize != 0)
        {
            return $"the region is 0x{regionSize:x} bytes, not whole {PageSize}-byte pages";
        }
        if ((regionFlags & VfioAbi.VFIO_REGION_INFO_FLAG_CAPS) != 0 && !mappedWholeHere)
        {
            return "the region has capabilities (possibly sparse mmap areas) and could not be mapped whole";
        }
        return null;
    }

    /// <summary>VFIO_DEVICE_RESET (function-level or bus reset, as the kernel decides).</summary>
    public void Reset()
    {
        if (!CanReset)
        {
            throw new NotSupportedException($"{Address}: the function offers no VFIO reset");
        }
        VfioIoctl.Reset(_device);
    }

    // ---- config space -----------------------------------------------------------------------------

    public byte ReadConfig8(int offset)
    {
        Span<byte> b = stackalloc byte[1];
        ConfigRead(offset, b);
        return b[0];
    }

    public ushort ReadConfig16(int offset)
    {
        Span<byte> b = stackalloc byte[2];
        ConfigRead(offset, b);
        return (ushort)(b[0] | (b[1] << 8));
    }

    public uint ReadConfig32(int offset)
    {
        Span<byte> b = stackalloc byte[4];
        ConfigRead(offset, b);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    public void WriteConfig8(int offset, byte value) => ConfigWrite(offset, [value]);

    public void WriteConfig16(int offset, ushort value) => ConfigWrite(offset, [(byte)value, (byte)(value >> 8)]);

    public void WriteConfig32(int offset, uint value) =>
        ConfigWrite(offset, [(byte)value, (byte)(value >> 8), (byte)(value >> 16), (byte)(value >> 24)]);

    private void ConfigRead(int offset, Span<byte> b)
    {
        CheckConfig(offset, b.Length);
        VfioIoctl.PRead(_device, b, _configOffset + offset);
    }

    private void ConfigWrite(int offset, ReadOnlySpan<byte> b)
    {
        CheckConfig(offset, b.Length);
        VfioIoctl.PWrite(_device, b, _configOffset + offset);
    }

    private void CheckConfig(int offset, int size)
    {
        if (offset < 0 || offset + size > (ConfigSize == 0 ? 4096 : ConfigSize) || (offset & (size - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"{Address}: {size}-byte config access at 0x{offset:x} outside or misaligned in {ConfigSize}-byte config space");
        }
    }

    // ---- BARs -------------------------------------------------------------------------------------

    private BarAccess Bar(int bar) =>
        (uint)bar < 6 && _bars[bar] is { } b ? b : throw new ArgumentOutOfRangeException(nameof(bar), $"{Address}: BAR{bar} is not a memory BAR of this function");

    private long BarOffset(BarAccess b, ulong offset, int size)
    {
        if (offset > b.Size || (ulong)size > b.Size - offset || (offset & (ulong)(size - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"{Address}: {size}-byte BAR access at 0x{offset:x} outside or misaligned in a 0x{b.Size:x}-byte BAR");
        }
        return b.RegionOffset + (long)offset;
    }

    public byte ReadBar8(int bar, ulong offset)
    {
        var b = Bar(bar);
        if (b.Map is { } m)
        {
            return Mmio.Read8(m, offset);
        }
        Span<byte> v = stackalloc byte[1];
        VfioIoctl.PRead(_device, v, BarOffset(b, offset, 1));
        return v[0];
    }

    public ushort ReadBar16(int bar, ulong offset)
    {
        var b = Bar(bar);
        if (b.Map is { } m)
        {
            return Mmio.Read16(m, offset);
        }
        Span<byte> v = stackalloc byte[2];
        VfioIoctl.PRead(_device, v, BarOffset(b, offset, 2));
        return (ushort)(v[0] | (v[1] << 8));
    }

    public uint ReadBar32(int bar, ulong offset)
    {
        var b = Bar(bar);
        if (b.Map is { } m)
        {
            return Mmio.Read32(m, offset);
        }
        Span<byte> v = stackalloc byte[4];
        VfioIoctl.PRead(_device, v, BarOffset(b, offset, 4));
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(v);
    }

    public void WriteBar8(int bar, ulong offset, byte value)
    {
        var b = Bar(bar);
        if (b.Map is { } m)
        {
            Mmio.Write8(m, offset, value);
            return;
        }
        VfioIoctl.PWrite(_device, [value], BarOffset(b, offset, 1));
    }

    public void WriteBar16(int bar, ulong offset, ushort value)
    {
        var b = Bar(bar);
        if (b.Map is { } m)
        {
            Mmio.Write16(m, offset, value);
            return;
        }
        VfioIoctl.PWrite(_device, [(byte)value, (byte)(value >> 8)], BarOffset(b, offset, 2));
    }

    public void WriteBar32(int bar, ulong offset, uint value)
    {
        var b = Bar(bar);
        if (b.Map is { } m)
        {
            Mmio.Write32(m, offset, value);
            return;
        }
        VfioIoctl.PWrite(_device, [(byte)value, (byte)(value >> 8), (byte)(value >> 16), (byte)(value >> 24)], BarOffset(b, offset, 4));
    }

    // ---- DMA (type1) ------------------------------------------------------------------------------

    public void DmaMap(ulong iova, MemorySlice memory, bool writable)
    {
        ulong size = memory.Length;
        if (iova % PageSize != 0 || size % PageSize != 0 || memory.UserAddress % PageSize != 0 || iova + size < iova)
        {
            throw new ArgumentException($"{Address}: DMA map iova 0x{iova:x} size 0x{size:x} host 0x{memory.UserAddress:x} must be page-aligned");
        }
        lock (_dmaLock)
        {
            ObjectDisposedException.ThrowIf(_disposed != 0, this);
            foreach (var (k, _) in _dma)
            {
                if (iova < k.Iova + k.Size && k.Iova < iova + size)
                {
                    throw new ArgumentException($"{Address}: DMA map [0x{iova:x}, +0x{size:x}) overlaps [0x{k.Iova:x}, +0x{k.Size:x})");
                }
            }
            memory.Memory.Pin();
            try
            {
                VfioIoctl.MapDma(_container, iova, memory, writable);
            }
            catch (IOException e)
            {
                memory.Memory.Unpin();
                throw new VfioException($"{Address}: {e.Message}{(e.HResult is Errnos.ENOMEM or Errnos.EPERM ? " (the locked-memory limit, ulimit -l, may be too low)" : "")}", e);
            }
            _dma[(iova, size)] = memory;
        }
    }

    public void DmaUnmap(ulong iova, ulong size)
    {
        lock (_dmaLock)
        {
            ObjectDisposedException.ThrowIf(_disposed != 0, this);
            if (!_dma.Remove((iova, size), out var memory))
            {
                throw new ArgumentException($"no DMA mapping at IOVA 0x{iova:x} of 0x{size:x} bytes");
            }
            try
            {
                VfioIoctl.UnmapDma(_container, iova, size);
            }
            finally
            {
                memory.Memory.Unpin();
            }
        }
    }

    public int DmaMapCount
    {
        get { lock (_dmaLock) { return _dma.Count; } }
    }

    // ---- teardown ---------------------------------------------------------------------------------

    /// <summary>Disables MSI-X, removes every DMA mapping, unmaps the BARs and closes device, group and container.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        try
        {
            DisableMsix();
        }
        catch (IOException)
        {
            // the device fd is closed below, which releases the vectors anyway
        }
        lock (_dmaLock)
        {
            foreach (var (k, memory) in _dma)
            {
                try
                {
                    VfioIoctl.UnmapDma(_container, k.Iova, k.Size);
                }
                catch (IOException)
                {
                    // closing the container tears the domain down anyway (the kernel keeps the pages pinned until then)
                }
                finally
                {
                    memory.Memory.Unpin();
                }
            }
            _dma.Clear();
        }
        foreach (var b in _bars)
        {
            b?.Map?.Dispose();
        }
        _device.Dispose();
        _group.Dispose();
        _container.Dispose();
    }
}
