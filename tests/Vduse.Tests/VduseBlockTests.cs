using System.Buffers.Binary;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;
using S = IfcVdpa.Virtio.VirtioStatus;

namespace IfcVdpa.Vduse.Tests;

/// <summary>
/// The IFC block VF through the VDUSE consumer without a kernel: what VDUSE_CREATE_DEV declares for it (device
/// id 2, its config space, the provisioned queue count), and requests the kernel's virtio_blk would send
/// reaching the image through the session (kick eventfd in, VDUSE_VQ_INJECT_IRQ out). The kernel proof is
/// tests/Peers.Tests/VduseGuestTests (ext4 on /dev/vdX).
/// </summary>
public sealed class VduseBlockTests : IDisposable
{
    private const ulong RegionBase = 0x10_0000;
    private const ushort QueueSize = 256;
    private readonly string _image = Path.Combine(Path.GetTempPath(), $"vduse-blk-{Guid.NewGuid():N}.img");
    private readonly List<string> _log = [];
    private readonly FakeKernel _k = new();
    private readonly MappedMemory _mem;
    private SoftVf? _vf;
    private IfcvfAdapter? _dev;
    private VduseSession? _s;
    private uint _id;
    private ushort _avail;

    public VduseBlockTests()
    {
        using (var f = File.Create(_image))
        {
            f.SetLength(1 << 20);
        }
        _mem = _k.AddRegion(RegionBase, 0x10_0000);
    }

    /// <summary>A block VF with <paramref name="builtQueues"/> queues, provisioned to <paramref name="queues"/> (and read-only) before the driver probes it.</summary>
    private VduseDeviceSpec Build(int builtQueues, int queues, bool readOnly = false)
    {
        _vf = SoftVf.CreateBlock(BlkBackend.File(_image), builtQueues, readOnly: false, 512, "sim:00:01.0", new EngineOptions { Mode = EngineMode.Event });
        var built = _vf.Function.Options.Block!;
        if (queues != builtQueues || readOnly)
        {
            _vf.Function.ProvisionBlock(built with { NumQueues = (ushort)queues }, readOnly);
        }
        _dev = IfcvfAdapter.Probe(_vf.Function);
        var spec = VduseDeviceSpec.From(_dev, "vdblk0");
        for (uint q = 0; q < spec.VqNum; q++)
        {
            ulong b = RegionBase + (q * 0x1_0000);
            _k.Queues[q] = new VduseVqInfoView(q, QueueSize, b, b + 0x1000, b + 0x2000, true, 0, 0, 0, 0, 0);
        }
        _s = new VduseSession(_dev, _k, spec, l => { lock (_log) { _log.Add(l); } });
        return spec;
    }

    private (bool Ok, byte[] Reply) Send(VduseRequestType type, params byte[] union)
    {
        var m = new byte[VduseMessages.Size];
        uint id = ++_id;
        VduseMessages.EncodeRequest(m, type, id, union);
        var r = new byte[VduseMessages.Size];
        Assert.True(_s!.Handle(m, r));
        Assert.Equal(id, BitConverter.ToUInt32(r, 0));
        return (BitConverter.ToUInt32(r, 4) == VduseMessages.ResultOk, r);
    }

    private bool SetStatus(byte s) => Send(VduseRequestType.SetStatus, s).Ok;

    private void BringUp()
    {
        Assert.True(SetStatus(S.ACKNOWLEDGE));
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER));
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK));
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK));
    }

    private int LogCount(string fragment)
    {
        lock (_log)
        {
            return _log.Count(l => l.Contains(fragment, StringComparison.Ordinal));
        }
    }

    private Span<byte> At(ulong iova, int len) => _mem.Span(iova - RegionBase, len);

    private void Desc(int i, ulong addr, uint len, ushort flags, ushort next)
    {
        var d = At(RegionBase + ((ulong)i * 16), 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    /// <summary>
    /// One request on queue 0 as virtio_blk builds it (header, data, status in three descriptors), kicked
    /// through the eventfd the session gave the kernel; returns the status byte once the used ring has it.
    /// </summary>
    private byte Request(uint type, ulong sector, byte[]? outData, int inLen)
    {
        const ulong hdr = RegionBase + 0x8000, data = RegionBase + 0x9000, status = RegionBase + 0xF000;
        var h = At(hdr, 16);
        h.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h[8..], sector);
        At(status, 1)[0] = 0xff;
        Desc(0, hdr, 16, 1, 1);
        if (outData is not null)
        {
            outData.CopyTo(At(data, outData.Length));
            Desc(1, data, (uint)outData.Length, 1, 2);
        }
        else
        {
            At(data, inLen).Clear();
            Desc(1, data, (uint)inLen, 1 | 2, 2);
        }
        Desc(2, status, 1, 2, 0);
        ulong avail = RegionBase + 0x1000, used = RegionBase + 0x2000;
        BinaryPrimitives.WriteUInt16LittleEndian(At(avail + 4 + ((ulong)(_avail % QueueSize) * 2), 2), 0);
        _avail++;
        Thread.MemoryBarrier();
        BinaryPrimitives.WriteUInt16LittleEndian(At(avail + 2, 2), _avail);
        int kickFd;
        lock (_k.KickFds)
        {
            kickFd = _k.KickFds.Last(k => k.Index == 0).Fd;
        }
        using (var kick = EventFd.Adopt(SafeFd.Dup(kickFd)))
        {
            kick.Signal();
        }
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (BinaryPrimitives.ReadUInt16LittleEndian(At(used + 2, 2)) != _avail)
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for the used ring");
            Thread.Yield();
        }
        return At(status, 1)[0];
    }

    private byte[] ReadBack(int len) => At(RegionBase + 0x9000, len).ToArray();

    [Fact]
    public void SpecDeclaresTheBlockDeviceWithItsConfigAndTheProvisionedQueues()
    {
        var spec = Build(builtQueues: 4, queues: 2);
        Assert.Equal(VirtioBlk.DeviceId, spec.DeviceId);
        Assert.Equal(2, spec.VqNum); // the config's num_queues, not the VF's 4
        Assert.Equal(2, _dev!.NumVqs); // the model's common config offers the provisioned count too
        Assert.Equal(VirtioBlkConfig.Size, spec.Config.Length);
        var cfg = VirtioBlkConfig.Parse(spec.Config);
        Assert.Equal((ulong)(1 << 20) / 512, cfg.Capacity);
        Assert.Equal(2, cfg.NumQueues);
        Assert.True(Has(spec.Features, VirtioBlk.F_MQ));
        Assert.True(Has(spec.Features, F_ACCESS_PLATFORM));
        Assert.False(Has(spec.Features, VirtioBlk.F_CONFIG_WCE));
        Assert.False(Has(spec.Features, VirtioBlk.F_RO));
        Assert.Empty(spec.Dropped);
    }

    [Fact]
    public void ReadOnlySingleQueueDeviceOffersRoAndOneQueue()
    {
        var spec = Build(builtQueues: 2, queues: 1, readOnly: true);
        Assert.Equal(1, spec.VqNum);
        Assert.True(Has(spec.Features, VirtioBlk.F_RO));
        Assert.False(Has(spec.Features, VirtioBlk.F_MQ));
    }

    [Fact]
    public void WritesAndReadsReachTheImageThroughTheSession()
    {
        Build(builtQueues: 2, queues: 2);
        _k.DriverFeatures = Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(VirtioBlk.F_MQ) | Bit(VirtioBlk.F_FLUSH) | Bit(VirtioBlk.F_BLK_SIZE);
        _k.Queues[1] = _k.Queues[1] with { Ready = false }; // one CPU: virtio_blk readies one of the two queues
        BringUp();
        Assert.True(_s!.Running);
        Assert.Contains("1 queues", _log.Last(l => l.Contains("running", StringComparison.Ordinal)), StringComparison.Ordinal);

        var data = new byte[4096];
        new Random(16).NextBytes(data);
        Assert.Equal(VirtioBlk.S_OK, Request(VirtioBlk.T_OUT, 8, data, 0));
        Assert.Equal(VirtioBlk.S_OK, Request(VirtioBlk.T_FLUSH, 0, null, 0));
        var image = File.ReadAllBytes(_image);
        Assert.Equal(data, image.AsSpan(8 * 512, 4096).ToArray());
        Assert.All(image.AsSpan(0, 8 * 512).ToArray(), b => Assert.Equal(0, b));

        Assert.Equal(VirtioBlk.S_OK, Request(VirtioBlk.T_IN, 8, null, 4096));
        Assert.Equal(data, ReadBack(4096));
        // past the capacity: IOERR, nothing written outside the image
        Assert.Equal(VirtioBlk.S_IOERR, Request(VirtioBlk.T_OUT, (1 << 20) / 512, data, 0));
        Assert.Equal(1 << 20, new FileInfo(_image).Length);
        Assert.True(_k.Irqs >= 4);

        Assert.True(SetStatus(0));
        Assert.False(_s.Running);
        Assert.Equal(0, _dev!.DmaMapCount);
    }

    [Fact]
    public void ReadOnlyDeviceRefusesWritesThroughTheSession()
    {
        Build(builtQueues: 1, queues: 1, readOnly: true);
        _k.DriverFeatures = Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(VirtioBlk.F_RO);
        BringUp();
        Assert.Equal(VirtioBlk.S_IOERR, Request(VirtioBlk.T_OUT, 0, [.. Enumerable.Repeat((byte)0x77, 512)], 0));
        Assert.All(File.ReadAllBytes(_image), b => Assert.Equal(0, b));
        Assert.Equal(VirtioBlk.S_OK, Request(VirtioBlk.T_IN, 0, null, 512));
    }

    [Fact]
    public void KernelRequestsForQueuesTheBlockDeviceDoesNotDeclareAreRefused()
    {
        Build(builtQueues: 4, queues: 2);
        _k.DriverFeatures = Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(VirtioBlk.F_MQ);
        BringUp();
        var beyond = new byte[4];
        BitConverter.TryWriteBytes(beyond, 2u); // the VF has 4 queues, the device declared 2
        Assert.False(Send(VduseRequestType.GetVqState, beyond).Ok);
        Assert.Equal(1, LogCount("GET_VQ_STATE for vq 2 (device has 2)"));
        Assert.True(Send(VduseRequestType.GetVqState, 1, 0, 0, 0).Ok);
        // a driver acking a feature the block device did not offer (CONFIG_WCE) is refused at FEATURES_OK
        Assert.True(SetStatus(0));
        _k.DriverFeatures |= Bit(VirtioBlk.F_CONFIG_WCE);
        Assert.True(SetStatus(S.ACKNOWLEDGE | S.DRIVER));
        Assert.False(SetStatus(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK));
        Assert.Equal(1, LogCount("not offered"));
    }

    [Fact]
    public void BlockQueueCountComesFromTheConfigAndABadOneIsRefused()
    {
        var cfg = new byte[VirtioBlkConfig.Size];
        BinaryPrimitives.WriteUInt16LittleEndian(cfg.AsSpan(VirtioBlkConfig.NumQueuesOff), 3);
        ulong mq = Bit(F_VERSION_1) | Bit(VirtioBlk.F_MQ);
        Assert.Equal(3, VduseFeatures.QueueCount(VduseFeatures.DeviceIdBlock, 4, mq, cfg));
        Assert.Equal(1, VduseFeatures.QueueCount(VduseFeatures.DeviceIdBlock, 4, Bit(F_VERSION_1), cfg)); // no MQ: one queue
        Assert.Contains("num_queues 3 does not fit the device's 2", Assert.Throws<ArgumentException>(
            () => VduseFeatures.QueueCount(VduseFeatures.DeviceIdBlock, 2, mq, cfg)).Message, StringComparison.Ordinal);
        BinaryPrimitives.WriteUInt16LittleEndian(cfg.AsSpan(VirtioBlkConfig.NumQueuesOff), 0);
        Assert.Throws<ArgumentException>(() => VduseFeatures.QueueCount(VduseFeatures.DeviceIdBlock, 4, mq, cfg));
        Assert.Contains("no num_queues", Assert.Throws<ArgumentException>(
            () => VduseFeatures.QueueCount(VduseFeatures.DeviceIdBlock, 4, mq, cfg.AsSpan(0, 20))).Message, StringComparison.Ordinal);
        Assert.Equal(2, VduseFeatures.QueueCount(VduseFeatures.DeviceIdNet, 3, Bit(F_VERSION_1), []));
    }

    [Fact]
    public void DeviceWhoseConfigDisagreesWithItsQueuesIsRefusedBeforeTheKernelSeesIt()
    {
        var lying = new LyingBlockDevice();
        var e = Assert.Throws<VdpaException>(() => VduseDeviceSpec.From(lying, "vdblk9"));
        Assert.Contains("num_queues 8 does not fit the device's 2", e.Message, StringComparison.Ordinal);
        lying.ConfigSize = 4;
        e = Assert.Throws<VdpaException>(() => VduseDeviceSpec.From(lying, "vdblk9"));
        Assert.Contains("holds no capacity", e.Message, StringComparison.Ordinal);
    }

    public void Dispose()
    {
        _s?.Dispose();
        _dev?.Dispose();
        _vf?.Dispose();
        _k.Dispose();
        File.Delete(_image);
    }
}

/// <summary>
/// A block device (as a VFIO VF's firmware could present it) whose config says 8 request queues with MQ while
/// it has 2: only the identity, features and config are read before VDUSE_CREATE_DEV; nothing else is called.
/// </summary>
internal sealed class LyingBlockDevice : IVdpaDevice
{
    public uint ConfigSize { get; set; } = VirtioBlkConfig.Size;

    public string Name => "lying-blk";

    public int NumVqs => 2;

    public uint GetDeviceId() => VirtioBlk.DeviceId;

    public uint GetVendorId() => 0x8086;

    public uint GetVqAlign() => 4096;

    public ulong GetDeviceFeatures() => Bit(F_VERSION_1) | Bit(VirtioBlk.F_MQ);

    public ushort GetVqNumMax() => 256;

    public uint GetConfigSize() => ConfigSize;

    public void GetConfig(uint offset, Span<byte> buffer)
    {
        var cfg = new byte[VirtioBlkConfig.Size];
        new VirtioBlkConfig { Capacity = 2048, NumQueues = 8 }.Write(cfg);
        cfg.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
    }

    private static NotSupportedException Unused() => new("not called before VDUSE_CREATE_DEV");

    public void SetDriverFeatures(ulong features) => throw Unused();
    public ulong GetDriverFeatures() => throw Unused();
    public byte GetStatus() => throw Unused();
    public void SetStatus(byte status) => throw Unused();
    public void Reset() => throw Unused();
    public void Suspend() => throw Unused();
    public void Resume() => throw Unused();
    public ushort GetVqNumMin() => throw Unused();
    public ushort GetVqSize(int qid) => throw Unused();
    public void SetVqNum(int qid, uint num) => throw Unused();
    public void SetVqAddress(int qid, ulong descArea, ulong driverArea, ulong deviceArea) => throw Unused();
    public void SetVqReady(int qid, bool ready) => throw Unused();
    public bool GetVqReady(int qid) => throw Unused();
    public void SetVqState(int qid, VdpaVqState state) => throw Unused();
    public VdpaVqState GetVqState(int qid) => throw Unused();
    public void SetVqCallback(int qid, VdpaCallback? callback) => throw Unused();
    public void KickVq(int qid) => throw Unused();
    public VdpaNotificationArea GetVqNotification(int qid) => throw Unused();
    public uint GetGeneration() => throw Unused();
    public void SetConfig(uint offset, ReadOnlySpan<byte> buffer) => throw Unused();
    public void SetConfigCallback(VdpaCallback? callback) => throw Unused();
    public void DmaMap(ulong iova, MemorySlice memory, bool writable) => throw Unused();
    public void DmaUnmap(ulong iova, ulong size) => throw Unused();
    public VdpaVqStats GetVqStats(int qid) => throw Unused();
}
