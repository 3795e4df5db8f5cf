using System.Buffers.Binary;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.Datapath.Tests;

/// <summary>
/// The software IFC block VF end to end through the driver: identity, config space, requests on the
/// virtio-blk personality against a real image file, and hostile requests (IOERR without touching the
/// image, or NEEDS_RESET for a chain that cannot be answered) with a bystander device unharmed.
/// </summary>
public sealed partial class BlkTests : IDisposable
{
    private const long ImageBytes = 4 << 20; // 8192 sectors
    private static readonly ulong Features =
        VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM) |
        VirtioFeature.Bit(VirtioFeature.F_RING_INDIRECT_DESC) | VirtioFeature.Bit(VirtioBlk.F_FLUSH) |
        VirtioFeature.Bit(VirtioBlk.F_DISCARD) | VirtioFeature.Bit(VirtioBlk.F_WRITE_ZEROES) | VirtioFeature.Bit(VirtioBlk.F_BLK_SIZE);

    private readonly string _dir = Directory.CreateTempSubdirectory("blktest").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string NewImage(long bytes = ImageBytes, byte fill = 0)
    {
        string path = Path.Combine(_dir, $"img{Guid.NewGuid():N}.raw");
        var b = new byte[bytes];
        if (fill != 0)
        {
            Array.Fill(b, fill);
        }
        File.WriteAllBytes(path, b);
        return path;
    }

    private static TestNic Disk(string image, int queues = 1, bool readOnly = false, uint blkSize = 512, EngineOptions? engine = null)
    {
        var backend = BlkBackend.File(image, readOnly);
        var cfg = new VirtioBlkConfig { Capacity = (ulong)backend.Capacity / 512, NumQueues = (ushort)queues, BlkSize = blkSize };
        return new TestNic(backend, SoftIfcVfOptions.ForBlock(cfg, readOnly), engine);
    }

    private readonly record struct Req(ushort Head, ulong Status, ulong Data, int DataLen);

    /// <summary>Builds a request: header (readable), OUT data or IN buffer in <paramref name="pieces"/> buffers, status byte (writable).</summary>
    private static Req Add(TestNic d, int q, uint type, ulong sector, byte[]? outData = null, int inLen = 0, int pieces = 1, bool indirect = false)
    {
        var tq = d.Queues[q];
        var hdr = new byte[VirtioBlk.HeaderSize];
        BinaryPrimitives.WriteUInt32LittleEndian(hdr, type);
        BinaryPrimitives.WriteUInt64LittleEndian(hdr.AsSpan(8), sector);
        var segs = new List<(ulong, uint, bool)> { (Put(d, hdr), (uint)hdr.Length, false) };
        if (outData is not null)
        {
            foreach (var (off, len) in Split(outData.Length, pieces))
            {
                segs.Add((Put(d, outData.AsSpan(off, len)), (uint)len, false));
            }
        }
        ulong data = 0;
        if (inLen > 0)
        {
            data = d.Alloc((ulong)inLen, 512);
            foreach (var (off, len) in Split(inLen, pieces))
            {
                segs.Add((data + (ulong)off, (uint)len, true));
            }
        }
        ulong status = d.Alloc(1, 1);
        d.Mem(status, 1)[0] = 0xEE;
        segs.Add((status, 1, true));
        ushort head = indirect ? tq.AddIndirect(segs) : tq.AddChain(segs);
        d.Kick(q);
        return new Req(head, status, data, inLen);
    }

    private static ulong Put(TestNic d, ReadOnlySpan<byte> bytes)
    {
        ulong at = d.Alloc((ulong)Math.Max(1, bytes.Length), 16);
        bytes.CopyTo(d.Mem(at, bytes.Length));
        return at;
    }

    private static IEnumerable<(int Off, int Len)> Split(int total, int pieces)
    {
        int each = Math.Max(1, total / pieces);
        for (int off = 0; off < total; off += each)
        {
            yield return (off, Math.Min(each, total - off));
        }
    }

    /// <summary>Waits for the request's used entry; returns the status byte and the used length.</summary>
    private static (byte Status, uint Len) Complete(TestNic d, int q, Req r)
    {
        var tq = d.Queues[q];
        uint id = 0, len = 0;
        Assert.True(d.WaitFor(() => tq.TryTakeUsed(out id, out len)), "request not completed");
        Assert.Equal(r.Head, (ushort)id);
        tq.FreeChain(r.Head);
        return (d.Mem(r.Status, 1)[0], len);
    }

    private static byte[] Pattern(int len, int seed)
    {
        var b = new byte[len];
        for (int i = 0; i < len; i++)
        {
            b[i] = (byte)((i * 31) + seed + (i >> 9));
        }
        return b;
    }

    [Fact]
    public void BlockVfHasTheBlockIdentityConfigAndLayout()
    {
        string img = NewImage();
        using var d = Disk(img, queues: 2, blkSize: 4096);
        var fn = d.Adapter.Function;
        Assert.Equal(0x1AF4, fn.ReadConfig16(PciConfig.VendorId));
        Assert.Equal(0x1042, fn.ReadConfig16(PciConfig.DeviceId));
        Assert.Equal(0x8086, fn.ReadConfig16(PciConfig.SubsystemVendorId));
        Assert.Equal(0x0002, fn.ReadConfig16(PciConfig.SubsystemId));
        Assert.Equal(0x01, fn.ReadConfig8(PciConfig.ClassCode + 1)); // mass storage
        Assert.Equal(VirtioBlk.DeviceId, d.Adapter.GetDeviceId());
        Assert.Equal(2, d.Adapter.NumVqs);
        Assert.Equal((uint)VirtioBlkConfig.Size, d.Adapter.GetConfigSize());
        var raw = new byte[VirtioBlkConfig.Size];
        d.Adapter.GetConfig(0, raw);
        var cfg = VirtioBlkConfig.Parse(raw);
        Assert.Equal((ulong)ImageBytes / 512, cfg.Capacity);
        Assert.Equal(4096u, cfg.BlkSize);
        Assert.Equal(2, cfg.NumQueues);
        Assert.Equal(254u, cfg.SegMax);
        Assert.True(cfg.MaxDiscardSectors > 0 && cfg.MaxWriteZeroesSectors > 0);
        ulong f = d.Adapter.GetDeviceFeatures();
        foreach (int bit in new[] { VirtioBlk.F_FLUSH, VirtioBlk.F_MQ, VirtioBlk.F_BLK_SIZE, VirtioBlk.F_SEG_MAX, VirtioBlk.F_SIZE_MAX, VirtioBlk.F_TOPOLOGY, VirtioBlk.F_GEOMETRY, VirtioBlk.F_DISCARD, VirtioBlk.F_WRITE_ZEROES })
        {
            Assert.True(VirtioFeature.Has(f, bit), $"feature {bit} missing");
        }
        Assert.False(VirtioFeature.Has(f, VirtioBlk.F_RO));
        Assert.Equal(LmLayout.PerQueueBlocks, d.Hw.Options.LmLayout);
        // Nothing of the config is writable.
        d.Adapter.SetConfig(0, new byte[] { 1, 2, 3, 4 });
        d.Adapter.GetConfig(0, raw);
        Assert.Equal((ulong)ImageBytes / 512, VirtioBlkConfig.Parse(raw).Capacity);

        using var t = new TestNic(BlkBackend.Memory(1 << 20), SoftIfcVfOptions.ForBlock(new VirtioBlkConfig { Capacity = 2048 }) with { Transitional = true });
        Assert.Equal(0x1001, t.Adapter.Function.ReadConfig16(PciConfig.DeviceId));
        Assert.Equal(0x0002, t.Adapter.Function.ReadConfig16(PciConfig.SubsystemId));
    }

    [Fact]
    public void PairBlocksLayoutIsRefusedForABlockVf()
    {
        var o = SoftIfcVfOptions.ForBlock(new VirtioBlkConfig { Capacity = 8 }) with { LmLayout = LmLayout.PairBlocks };
        Assert.Throws<ArgumentException>(() => o.Validate());
    }

    [Theory]
    [InlineData(1, false)]
    [InlineData(16, false)]
    [InlineData(33, true)]
    public void WritesReachTheImageAndReadBack(int pieces, bool indirect)
    {
        string img = NewImage();
        using var d = Disk(img);
        d.Start(Features, queues: 1);
        var data = Pattern(64 * 1024, pieces);
        var w = Add(d, 0, VirtioBlk.T_OUT, 100, outData: data, pieces: pieces, indirect: indirect);
        Assert.Equal((VirtioBlk.S_OK, 1u), Complete(d, 0, w));
        var f = Add(d, 0, VirtioBlk.T_FLUSH, 0);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, f).Status);
        var onDisk = File.ReadAllBytes(img);
        Assert.Equal(data, onDisk.AsSpan(100 * 512, data.Length).ToArray());
        Assert.All(onDisk.AsSpan(0, 100 * 512).ToArray(), b => Assert.Equal(0, b));
        Assert.All(onDisk.AsSpan((100 * 512) + data.Length).ToArray(), b => Assert.Equal(0, b));

        var r = Add(d, 0, VirtioBlk.T_IN, 100, inLen: data.Length, pieces: pieces, indirect: indirect);
        var (st, len) = Complete(d, 0, r);
        Assert.Equal(VirtioBlk.S_OK, st);
        Assert.Equal((uint)data.Length + 1, len);
        Assert.Equal(data, d.Mem(r.Data, data.Length).ToArray());
        var c = d.Vf.GetQueueCounters(0);
        Assert.Equal(3, c.Packets);
        Assert.Equal(2 * data.Length, c.Bytes);
        Assert.Empty(d.Logs);
    }

    [Fact]
    public void HeaderAndDataMayShareBuffers()
    {
        string img = NewImage();
        using var d = Disk(img);
        d.Start(Features, queues: 1);
        var tq = d.Queues[0];
        // One readable buffer: header + 1024 bytes of data; one writable byte: status.
        var buf = new byte[VirtioBlk.HeaderSize + 1024];
        BinaryPrimitives.WriteUInt32LittleEndian(buf, VirtioBlk.T_OUT);
        BinaryPrimitives.WriteUInt64LittleEndian(buf.AsSpan(8), 7);
        Pattern(1024, 9).CopyTo(buf, VirtioBlk.HeaderSize);
        ulong st = d.Alloc(1, 1);
        ushort head = tq.AddChain([(Put(d, buf), (uint)buf.Length, false), (st, 1, true)]);
        d.Kick(0);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, new Req(head, st, 0, 0)).Status);
        Assert.Equal(Pattern(1024, 9), File.ReadAllBytes(img).AsSpan(7 * 512, 1024).ToArray());
        // IN: data and status in one writable buffer.
        ulong both = d.Alloc(1025, 512);
        head = tq.AddChain([(Put(d, Header(VirtioBlk.T_IN, 7)), 16, false), (both, 1025, true)]);
        d.Kick(0);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, new Req(head, both + 1024, both, 1024)).Status);
        Assert.Equal(Pattern(1024, 9), d.Mem(both, 1024).ToArray());
    }

    private static byte[] Header(uint type, ulong sector)
    {
        var hdr = new byte[VirtioBlk.HeaderSize];
        BinaryPrimitives.WriteUInt32LittleEndian(hdr, type);
        BinaryPrimitives.WriteUInt64LittleEndian(hdr.AsSpan(8), sector);
        return hdr;
    }

    [Fact]
    public void GetIdReturnsTheSerial()
    {
        using var d = new TestNic(BlkBackend.Memory(1 << 20), SoftIfcVfOptions.ForBlock(new VirtioBlkConfig { Capacity = 2048 }, address: "sim:07.0"));
        d.Start(Features, queues: 1);
        var r = Add(d, 0, VirtioBlk.T_GET_ID, 0, inLen: VirtioBlk.IdBytes);
        var (st, len) = Complete(d, 0, r);
        Assert.Equal(VirtioBlk.S_OK, st);
        Assert.Equal(21u, len);
        Assert.Equal("ifcvf-blk-sim:07.0", System.Text.Encoding.ASCII.GetString(d.Mem(r.Data, 20)).TrimEnd('\0'));
    }

    private static byte[] DwzSegment(ulong sector, uint num, uint flags)
    {
        var s = new byte[VirtioBlk.DiscardSegmentSize];
        BinaryPrimitives.WriteUInt64LittleEndian(s, sector);
        BinaryPrimitives.WriteUInt32LittleEndian(s.AsSpan(8), num);
        BinaryPrimitives.WriteUInt32LittleEndian(s.AsSpan(12), flags);
        return s;
    }

    [Fact]
    public void WriteZeroesAndDiscard()
    {
        string img = NewImage(fill: 0x5A);
        using var d = Disk(img);
        d.Start(Features, queues: 1);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_WRITE_ZEROES, 0, outData: DwzSegment(8, 16, 0))).Status);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_WRITE_ZEROES, 0, outData: DwzSegment(40, 8, VirtioBlk.DiscardFlagUnmap))).Status);
        var onDisk = File.ReadAllBytes(img);
        Assert.All(onDisk.AsSpan(8 * 512, 16 * 512).ToArray(), b => Assert.Equal(0, b));
        Assert.All(onDisk.AsSpan(40 * 512, 8 * 512).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(0x5A, onDisk[(8 * 512) - 1]);
        Assert.Equal(0x5A, onDisk[24 * 512]);
        Assert.Equal(0x5A, onDisk[48 * 512]);
        Assert.Equal(ImageBytes, onDisk.Length);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_DISCARD, 0, outData: DwzSegment(100, 8, 0))).Status);
        // Discard takes no flags; write-zeroes only UNMAP.
        Assert.Equal(VirtioBlk.S_UNSUPP, Complete(d, 0, Add(d, 0, VirtioBlk.T_DISCARD, 0, outData: DwzSegment(100, 8, 1))).Status);
        Assert.Equal(VirtioBlk.S_UNSUPP, Complete(d, 0, Add(d, 0, VirtioBlk.T_WRITE_ZEROES, 0, outData: DwzSegment(100, 8, 2))).Status);
        // Beyond the image, a lying segment list, too many segments (max_*_seg is 1).
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_WRITE_ZEROES, 0, outData: DwzSegment(8190, 4, 0))).Status);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_WRITE_ZEROES, 0, outData: DwzSegment(8, 16, 0)[..12])).Status);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_WRITE_ZEROES, 0, outData: [.. DwzSegment(8, 1, 0), .. DwzSegment(9, 1, 0)])).Status);
        Assert.Equal(0x5A, File.ReadAllBytes(img)[8190 * 512]);
    }

    [Fact]
    public void CommandsNotNegotiatedAreUnsupported()
    {
        string img = NewImage(fill: 0x5A);
        using var d = Disk(img);
        d.Start(VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM), queues: 1);
        Assert.Equal(VirtioBlk.S_UNSUPP, Complete(d, 0, Add(d, 0, VirtioBlk.T_WRITE_ZEROES, 0, outData: DwzSegment(8, 16, 0))).Status);
        Assert.Equal(VirtioBlk.S_UNSUPP, Complete(d, 0, Add(d, 0, VirtioBlk.T_DISCARD, 0, outData: DwzSegment(8, 16, 0))).Status);
        Assert.Equal(VirtioBlk.S_UNSUPP, Complete(d, 0, Add(d, 0, 77, 0, inLen: 512)).Status);
        Assert.Equal(0x5A, File.ReadAllBytes(img)[8 * 512]);
        Assert.Equal(3, d.Vf.GetQueueCounters(0).Drops);
        Assert.Single(d.Logs); // the first refusal on the queue is logged, the others counted
    }

    /// <summary>dev add's block provisioning on a software VF: the device itself enforces the smaller capacity and read-only.</summary>
    [Fact]
    public void ProvisionedCapacityAndReadOnlyAreEnforcedByTheDevice()
    {
        string img = NewImage(fill: 0x5a);
        var backend = BlkBackend.File(img);
        var built = new VirtioBlkConfig { Capacity = (ulong)backend.Capacity / 512, NumQueues = 2 };
        using var d = new TestNic(backend, SoftIfcVfOptions.ForBlock(built), beforeProbe: vf =>
        {
            Assert.Throws<ArgumentException>(() => vf.ProvisionBlock(built with { Capacity = built.Capacity + 8 }, false));
            Assert.Throws<ArgumentException>(() => vf.ProvisionBlock(built with { NumQueues = 3 }, false));
            Assert.Throws<ArgumentException>(() => vf.ProvisionBlock(built with { BlkSize = 256 }, false));
            vf.ProvisionBlock(built with { Capacity = 4096, BlkSize = 4096, NumQueues = 1 }, readOnly: true);
        });
        ulong f = d.Adapter.GetDeviceFeatures();
        Assert.Equal(1, d.Adapter.NumVqs); // common config num_queues: the provisioned count, not the built 2
        Assert.True(VirtioFeature.Has(f, VirtioBlk.F_RO));
        Assert.False(VirtioFeature.Has(f, VirtioBlk.F_MQ));
        Span<byte> raw = stackalloc byte[VirtioBlkConfig.Size];
        d.Adapter.GetConfig(0, raw);
        var seen = VirtioBlkConfig.Parse(raw);
        Assert.Equal((4096UL, 4096u, (ushort)1), (seen.Capacity, seen.BlkSize, seen.NumQueues));
        d.Start(Features | VirtioFeature.Bit(VirtioBlk.F_RO), queues: 1);
        Assert.Throws<InvalidOperationException>(() => d.Vf.ProvisionBlock(null, false)); // not while a driver runs
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 0, outData: new byte[4096])).Status);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_IN, 4096, inLen: 4096)).Status); // past the provisioned capacity
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_IN, 1, inLen: 4096)).Status); // not aligned to blk_size 4096
        var ok = Add(d, 0, VirtioBlk.T_IN, 4088, inLen: 4096);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, ok).Status);
        Assert.All(d.Mem(ok.Data, 4096).ToArray(), b => Assert.Equal(0x5a, b));
        Assert.All(File.ReadAllBytes(img), b => Assert.Equal(0x5a, b));
        d.Adapter.Reset();
        d.Vf.ProvisionBlock(null, false);
        Assert.False(VirtioFeature.Has(d.Vf.DeviceFeatures, VirtioBlk.F_RO));
        Assert.True(VirtioFeature.Has(d.Vf.DeviceFeatures, VirtioBlk.F_MQ));
        Assert.Equal(built.Capacity, d.Vf.BlkConfig!.Capacity);
    }

    [Fact]
    public void ReadOnlyDeviceRefusesWrites()
    {
        string img = NewImage(fill: 0x33);
        using var d = Disk(img, readOnly: true);
        Assert.True(VirtioFeature.Has(d.Adapter.GetDeviceFeatures(), VirtioBlk.F_RO));
        d.Start(Features | VirtioFeature.Bit(VirtioBlk.F_RO), queues: 1);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 0, outData: new byte[4096])).Status);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_WRITE_ZEROES, 0, outData: DwzSegment(0, 8, 0))).Status);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_DISCARD, 0, outData: DwzSegment(0, 8, 0))).Status);
        var r = Add(d, 0, VirtioBlk.T_IN, 0, inLen: 4096);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, r).Status);
        Assert.All(d.Mem(r.Data, 4096).ToArray(), b => Assert.Equal(0x33, b));
        Assert.All(File.ReadAllBytes(img), b => Assert.Equal(0x33, b));
        Assert.Contains(d.Logs, l => l.Contains("read-only", StringComparison.Ordinal));
    }

    /// <summary>Requests the device answers IOERR without touching the image (no write outside it, nothing written at all).</summary>
    [Theory]
    [InlineData(VirtioBlk.T_OUT, 8191UL, 1024, 0, "beyond the capacity")] // the last sector + one past the end
    [InlineData(VirtioBlk.T_OUT, 8192UL, 512, 0, "beyond the capacity")]
    [InlineData(VirtioBlk.T_OUT, ulong.MaxValue - 1, 1024, 0, "beyond the capacity")] // sector arithmetic overflows
    [InlineData(VirtioBlk.T_OUT, 1UL << 55, 512, 0, "beyond the capacity")] // sector * 512 overflows 64 bits
    [InlineData(VirtioBlk.T_OUT, 0UL, 700, 0, "whole number of 512-byte sectors")]
    [InlineData(VirtioBlk.T_IN, 8191UL, 0, 1024, "beyond the capacity")]
    [InlineData(VirtioBlk.T_IN, 0UL, 0, 511, "whole number of 512-byte sectors")]
    [InlineData(VirtioBlk.T_IN, ulong.MaxValue, 0, 512, "beyond the capacity")]
    public void BadRangesAreIoErrors(uint type, ulong sector, int outLen, int inLen, string reason)
    {
        string img = NewImage(fill: 0x77);
        using var d = Disk(img);
        d.Start(Features, queues: 1);
        var r = Add(d, 0, type, sector, outData: outLen > 0 ? Pattern(outLen, 3) : null, inLen: inLen);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, r).Status);
        Assert.False(d.NeedsReset);
        var onDisk = File.ReadAllBytes(img);
        Assert.Equal(ImageBytes, onDisk.Length);
        Assert.All(onDisk, b => Assert.Equal(0x77, b));
        Assert.Contains(reason, Assert.Single(d.Logs), StringComparison.Ordinal);
        // The queue keeps working.
        var ok = Add(d, 0, VirtioBlk.T_IN, 0, inLen: 512);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, ok).Status);
    }

    [Fact]
    public void UnalignedToBlkSizeIsAnIoError()
    {
        string img = NewImage(fill: 0x11);
        using var d = Disk(img, blkSize: 4096);
        d.Start(Features, queues: 1);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 1, outData: new byte[4096])).Status);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 8, outData: new byte[512])).Status);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 8, outData: new byte[4096])).Status);
        var onDisk = File.ReadAllBytes(img);
        Assert.All(onDisk.AsSpan(0, 8 * 512).ToArray(), b => Assert.Equal(0x11, b));
        Assert.All(onDisk.AsSpan(8 * 512, 4096).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void ShortHeaderIsAnIoError()
    {
        string img = NewImage(fill: 0x22);
        using var d = Disk(img);
        d.Start(Features, queues: 1);
        var tq = d.Queues[0];
        ulong st = d.Alloc(1, 1);
        // A header descriptor that says 8 bytes: the request cannot be read, but it can be answered.
        ushort head = tq.AddChain([(Put(d, Header(VirtioBlk.T_OUT, 0)), 8, false), (st, 1, true)]);
        d.Kick(0);
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, new Req(head, st, 0, 0)).Status);
        Assert.All(File.ReadAllBytes(img), b => Assert.Equal(0x22, b));
        Assert.Contains("header of 8 bytes", Assert.Single(d.Logs), StringComparison.Ordinal);
    }

    /// <summary>A chain that cannot be answered is a ring error: NEEDS_RESET, image untouched, bystander fine, device recovers.</summary>
    private void RingErrorCase(Action<TestNic> hostile, string reason)
    {
        string img = NewImage(fill: 0x44);
        string other = NewImage();
        using var bystander = Disk(other);
        bystander.Start(Features, queues: 1);
        using var d = Disk(img);
        d.Start(Features, queues: 1);
        hostile(d);
        Assert.True(d.WaitFor(() => d.NeedsReset), "no NEEDS_RESET");
        Assert.Contains(reason, d.Vf.NeedsResetReason, StringComparison.Ordinal);
        Assert.Contains("vq 0", d.Vf.NeedsResetReason, StringComparison.Ordinal);
        Assert.False(d.Vf.IsQueueRunning(0));
        Assert.Equal(1, d.ConfigIrqs);
        Assert.Equal(1, d.Vf.GetQueueCounters(0).Errors);
        Assert.All(File.ReadAllBytes(img), b => Assert.Equal(0x44, b));
        SpecAsserts.AssertCounted(d, reason);
        // The bystander works.
        var data = Pattern(4096, 5);
        Assert.Equal(VirtioBlk.S_OK, Complete(bystander, 0, Add(bystander, 0, VirtioBlk.T_OUT, 0, outData: data)).Status);
        Assert.Equal(data, File.ReadAllBytes(other).AsSpan(0, 4096).ToArray());
        Assert.Empty(bystander.Logs);
        // After a reset the device serves requests again.
        d.Start(Features, queues: 1);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 0, outData: data)).Status);
        Assert.Equal(data, File.ReadAllBytes(img).AsSpan(0, 4096).ToArray());
    }

    [Fact]
    public void StatusByteInAReadOnlyDescriptorIsARingError() => RingErrorCase(d =>
    {
        var tq = d.Queues[0];
        tq.AddChain([(Put(d, Header(VirtioBlk.T_OUT, 0)), 16, false), (Put(d, new byte[512]), 512, false), (d.Alloc(1, 1), 1, false)]);
        d.Kick(0);
    }, "without a device-writable status byte");

    [Fact]
    public void ReadableAfterWritableIsARingError() => RingErrorCase(d =>
    {
        var tq = d.Queues[0];
        tq.AddChain([(Put(d, Header(VirtioBlk.T_OUT, 0)), 16, false), (d.Alloc(1, 1), 1, true), (Put(d, new byte[512]), 512, false)]);
        d.Kick(0);
    }, "device-readable descriptor after a device-writable one");

    [Fact]
    public void ChainLoopIsARingError() => RingErrorCase(d =>
    {
        var tq = d.Queues[0];
        ushort a = tq.TakeFree(), b = tq.TakeFree();
        tq.WriteDesc(a, Put(d, Header(VirtioBlk.T_OUT, 0)), 16, VIRTQ_DESC_F_NEXT, b);
        tq.WriteDesc(b, Put(d, new byte[512]), 512, VIRTQ_DESC_F_NEXT, a);
        tq.PushAvail(a);
        d.Kick(0);
    }, "loop");

    [Fact]
    public void DataBufferOutsideTheMapIsARingError() => RingErrorCase(d =>
    {
        var tq = d.Queues[0];
        tq.AddChain([(Put(d, Header(VirtioBlk.T_IN, 0)), 16, false), (0x1000, 4096, true), (d.Alloc(1, 1), 1, true)]);
        d.Kick(0);
    }, "outside the DMA map");

    [Fact]
    public void AvailIndexFarAheadIsARingError() => RingErrorCase(d =>
    {
        d.Queues[0].SetAvailIdxRaw(1000);
        d.Kick(0);
    }, "ahead of used idx");

    [Fact]
    public void QueuesRunOnTheirOwnThreadsAndKeepTheirRingState()
    {
        string img = NewImage();
        using var d = Disk(img, queues: 2, engine: new EngineOptions { Mode = EngineMode.Event });
        d.Start(Features | VirtioFeature.Bit(VirtioBlk.F_MQ));
        for (int i = 0; i < 8; i++)
        {
            int q = i % 2;
            var data = Pattern(8192, i);
            Assert.Equal(VirtioBlk.S_OK, Complete(d, q, Add(d, q, VirtioBlk.T_OUT, (ulong)(i * 16), outData: data, pieces: 4)).Status);
        }
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 1, Add(d, 1, VirtioBlk.T_FLUSH, 0)).Status);
        var onDisk = File.ReadAllBytes(img);
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(Pattern(8192, i), onDisk.AsSpan(i * 16 * 512, 8192).ToArray());
        }
        Assert.Equal(2u, d.Vf.MqRegister); // queues in use, not pairs
        // One LM slot per queue: queue 0 did 4 requests, queue 1 five.
        for (int q = 0; q < 2; q++)
        {
            d.Adapter.SetVqReady(q, false);
        }
        Assert.Equal(4u | (4u << 16), d.Vf.ReadBar32(4, 0x20));
        Assert.Equal(5u | (5u << 16), d.Vf.ReadBar32(4, 0x60));
        Assert.Equal(TestNic.StateOf(false, 4, 4), d.Adapter.GetVqState(0));
        Assert.Equal(TestNic.StateOf(false, 5, 5), d.Adapter.GetVqState(1));
    }

    [Fact]
    public void EachDoorbellWakesItsQueueRunnerRequestAfterRequest()
    {
        // Event mode: a doorbell wakes its queue's runner itself (not through the worker). One request at a time
        // means the runner has gone to sleep (or is just going) before every doorbell: each must still be seen,
        // on both queues, and every doorbell is counted once.
        using var d = new TestNic(BlkBackend.Parse("mem:1M"), SoftIfcVfOptions.ForBlock(new VirtioBlkConfig { Capacity = 2048, NumQueues = 2 }),
            new EngineOptions { Mode = EngineMode.Event });
        d.Start(Features | VirtioFeature.Bit(VirtioBlk.F_MQ));
        const int PerQueue = 300;
        for (int i = 0; i < 2 * PerQueue; i++)
        {
            int q = i % 2;
            var r = Add(d, q, VirtioBlk.T_IN, (ulong)(i % 2048), inLen: 512);
            Assert.Equal(VirtioBlk.S_OK, Complete(d, q, r).Status);
        }
        for (int q = 0; q < 2; q++)
        {
            var c = d.Blk.GetQueueCounters(q);
            Assert.Equal(PerQueue, c.Packets);
            Assert.Equal(PerQueue, c.Kicks);
            Assert.Equal(0, c.Errors);
            Assert.Equal(0, c.Drops);
        }
        Assert.Equal(0, d.Blk.MissedDoorbells); // every request was found through its doorbell, none by the runner's timeout
    }

    [Fact]
    public void MemoryBackendServesRequests()
    {
        using var d = new TestNic(BlkBackend.Parse("mem:1M"), SoftIfcVfOptions.ForBlock(new VirtioBlkConfig { Capacity = 2048 }), new EngineOptions { Mode = EngineMode.Event });
        d.Start(Features, queues: 1);
        var data = Pattern(128 * 1024, 1);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, Add(d, 0, VirtioBlk.T_OUT, 1024, outData: data, pieces: 32)).Status);
        var r = Add(d, 0, VirtioBlk.T_IN, 1024, inLen: data.Length, pieces: 7);
        Assert.Equal(VirtioBlk.S_OK, Complete(d, 0, r).Status);
        Assert.Equal(data, d.Mem(r.Data, data.Length).ToArray());
        Assert.Equal(VirtioBlk.S_IOERR, Complete(d, 0, Add(d, 0, VirtioBlk.T_IN, 2047, inLen: 1024)).Status);
    }

    [Theory]
    [InlineData("mem:0")]
    [InlineData("mem:1000")]
    [InlineData("mem:x")]
    [InlineData("disk:/x")]
    [InlineData("file:/nonexistent/dir/img")]
    public void BadBackendSpecsAreRefused(string spec)
    {
        var e = Record.Exception(() => BlkBackend.Parse(spec).Dispose());
        Assert.True(e is ArgumentException or IOException, e?.ToString());
    }

    [Fact]
    public void BackendSmallerThanTheOfferedCapacityIsRefused()
    {
        using var vf = new SoftIfcVf(SoftIfcVfOptions.ForBlock(new VirtioBlkConfig { Capacity = 4096 }));
        using var engine = new IfcvfModel.Datapath.Blk.VirtioBlkEngine(BlkBackend.Memory(1 << 20), new EngineOptions { Mode = EngineMode.Manual });
        vf.AttachEngine(engine);
        var e = Record.Exception(() => engine.StartQueue(vf, new QueueStart(0, 64, 0, 0, 0, default, 0)));
        Assert.IsType<ArgumentException>(e);
        Assert.Contains("holds only", e.Message, StringComparison.Ordinal);
    }
}
