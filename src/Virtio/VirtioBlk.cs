using System.Buffers.Binary;

namespace IfcVdpa.Virtio;

/// <summary>
/// virtio-blk (VIRTIO 1.2 §5.2, include/uapi/linux/virtio_blk.h): feature bits, request types, status
/// values, the request header and the discard / write-zeroes segment. Sectors are always 512 bytes,
/// whatever blk_size says.
/// </summary>
public static class VirtioBlk
{
    /// <summary>VIRTIO_ID_BLOCK.</summary>
    public const uint DeviceId = 2;

    public const int SectorSize = 512;
    public const int SectorShift = 9;

    // Feature bits.
    public const int F_SIZE_MAX = 1;
    public const int F_SEG_MAX = 2;
    public const int F_GEOMETRY = 4;
    public const int F_RO = 5;
    public const int F_BLK_SIZE = 6;
    public const int F_FLUSH = 9;
    public const int F_TOPOLOGY = 10;
    public const int F_CONFIG_WCE = 11;
    public const int F_MQ = 12;
    public const int F_DISCARD = 13;
    public const int F_WRITE_ZEROES = 14;

    // Request types.
    public const uint T_IN = 0;
    public const uint T_OUT = 1;
    public const uint T_FLUSH = 4;
    public const uint T_GET_ID = 8;
    public const uint T_DISCARD = 11;
    public const uint T_WRITE_ZEROES = 13;

    // Status byte (the last byte of the device-writable part of a request).
    public const byte S_OK = 0;
    public const byte S_IOERR = 1;
    public const byte S_UNSUPP = 2;

    /// <summary>struct virtio_blk_outhdr: type u32, ioprio u32, sector u64.</summary>
    public const int HeaderSize = 16;

    /// <summary>The serial GET_ID returns (VIRTIO_BLK_ID_BYTES).</summary>
    public const int IdBytes = 20;

    /// <summary>struct virtio_blk_discard_write_zeroes: sector u64, num_sectors u32, flags u32 (bit 0 unmap).</summary>
    public const int DiscardSegmentSize = 16;

    public const uint DiscardFlagUnmap = 1;

    private static readonly (int Bit, string Name)[] s_names =
    [
        (F_SIZE_MAX, "SIZE_MAX"), (F_SEG_MAX, "SEG_MAX"), (F_GEOMETRY, "GEOMETRY"), (F_RO, "RO"),
        (F_BLK_SIZE, "BLK_SIZE"), (F_FLUSH, "FLUSH"), (F_TOPOLOGY, "TOPOLOGY"), (F_CONFIG_WCE, "CONFIG_WCE"),
        (F_MQ, "MQ"), (F_DISCARD, "DISCARD"), (F_WRITE_ZEROES, "WRITE_ZEROES"),
    ];

    /// <summary>Names of the set bits, block-specific bits (0..23) as virtio-blk names them, the rest as transport bits.</summary>
    public static IEnumerable<string> FeatureNames(ulong features)
    {
        for (int bit = 0; bit < 64; bit++)
        {
            if (!VirtioFeature.Has(features, bit))
            {
                continue;
            }
            if (bit < 24)
            {
                string? n = null;
                foreach (var (b, name) in s_names)
                {
                    if (b == bit)
                    {
                        n = name;
                    }
                }
                yield return n ?? $"bit{bit}";
            }
            else
            {
                foreach (var name in VirtioFeature.Names(1UL << bit))
                {
                    yield return name;
                }
            }
        }
    }
}

/// <summary>
/// struct virtio_blk_config as this project's block devices offer it (fields up to write_zeroes_may_unmap,
/// 60 bytes). <see cref="Write"/> lays it out; <see cref="Parse"/> reads one back (a driver's view).
/// </summary>
public sealed record VirtioBlkConfig
{
    public const int CapacityOff = 0;
    public const int SizeMaxOff = 8;
    public const int SegMaxOff = 12;
    public const int CylindersOff = 16;
    public const int HeadsOff = 18;
    public const int SectorsOff = 19;
    public const int BlkSizeOff = 20;
    public const int PhysicalBlockExpOff = 24;
    public const int AlignmentOffsetOff = 25;
    public const int MinIoSizeOff = 26;
    public const int OptIoSizeOff = 28;
    public const int WritebackOff = 32;
    public const int NumQueuesOff = 34;
    public const int MaxDiscardSectorsOff = 36;
    public const int MaxDiscardSegOff = 40;
    public const int DiscardSectorAlignmentOff = 44;
    public const int MaxWriteZeroesSectorsOff = 48;
    public const int MaxWriteZeroesSegOff = 52;
    public const int WriteZeroesMayUnmapOff = 56;

    /// <summary>Bytes of the config this project lays out.</summary>
    public const int Size = 60;

    /// <summary>Capacity in 512-byte sectors.</summary>
    public ulong Capacity { get; init; }

    public uint SizeMax { get; init; } = 1u << 20;

    public uint SegMax { get; init; } = 254;

    public ushort Cylinders { get; init; }

    public byte Heads { get; init; } = 16;

    public byte Sectors { get; init; } = 63;

    /// <summary>Logical block size in bytes (512, 1024, 2048 or 4096).</summary>
    public uint BlkSize { get; init; } = 512;

    public byte PhysicalBlockExp { get; init; }

    public byte AlignmentOffset { get; init; }

    public ushort MinIoSize { get; init; } = 1;

    public uint OptIoSize { get; init; }

    public ushort NumQueues { get; init; } = 1;

    public uint MaxDiscardSectors { get; init; } = 1u << 22;

    public uint MaxDiscardSeg { get; init; } = 1;

    public uint DiscardSectorAlignment { get; init; } = 1;

    public uint MaxWriteZeroesSectors { get; init; } = 1u << 22;

    public uint MaxWriteZeroesSeg { get; init; } = 1;

    public bool WriteZeroesMayUnmap { get; init; } = true;

    /// <summary>The geometry a capacity gets when none is given: 16 heads, 63 sectors, cylinders to fit (at most 65535).</summary>
    public static ushort CylindersFor(ulong capacity, byte heads, byte sectors) =>
        (ushort)Math.Min(65535UL, capacity / ((ulong)heads * sectors));

    public void Validate()
    {
        if (BlkSize is not (512 or 1024 or 2048 or 4096))
        {
            throw new ArgumentException($"blk_size must be 512, 1024, 2048 or 4096, not {BlkSize}");
        }
        if (Capacity == 0 || Capacity > (ulong.MaxValue >> VirtioBlk.SectorShift))
        {
            throw new ArgumentException($"capacity {Capacity} sectors out of range");
        }
        if (Capacity * VirtioBlk.SectorSize % BlkSize != 0)
        {
            throw new ArgumentException($"capacity {Capacity * VirtioBlk.SectorSize} bytes is not a multiple of blk_size {BlkSize}");
        }
        if (NumQueues is < 1 or > 64)
        {
            throw new ArgumentException($"block queues must be 1..64, not {NumQueues}");
        }
        if (SegMax < 1 || SizeMax < 512)
        {
            throw new ArgumentException("seg_max must be at least 1 and size_max at least 512");
        }
    }

    /// <summary>Lays the config out in <paramref name="cfg"/> (at least <see cref="Size"/> bytes); <paramref name="writeback"/> is the cache mode byte.</summary>
    public void Write(Span<byte> cfg, byte writeback = 0)
    {
        cfg[..Size].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(cfg[CapacityOff..], Capacity);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[SizeMaxOff..], SizeMax);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[SegMaxOff..], SegMax);
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[CylindersOff..], Cylinders != 0 ? Cylinders : CylindersFor(Capacity, Heads, Sectors));
        cfg[HeadsOff] = Heads;
        cfg[SectorsOff] = Sectors;
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[BlkSizeOff..], BlkSize);
        cfg[PhysicalBlockExpOff] = PhysicalBlockExp;
        cfg[AlignmentOffsetOff] = AlignmentOffset;
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[MinIoSizeOff..], MinIoSize);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[OptIoSizeOff..], OptIoSize);
        cfg[WritebackOff] = writeback;
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[NumQueuesOff..], NumQueues);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[MaxDiscardSectorsOff..], MaxDiscardSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[MaxDiscardSegOff..], MaxDiscardSeg);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[DiscardSectorAlignmentOff..], DiscardSectorAlignment);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[MaxWriteZeroesSectorsOff..], MaxWriteZeroesSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(cfg[MaxWriteZeroesSegOff..], MaxWriteZeroesSeg);
        cfg[WriteZeroesMayUnmapOff] = WriteZeroesMayUnmap ? (byte)1 : (byte)0;
    }

    /// <summary>Reads a config laid out by a device (missing tail bytes read as zero).</summary>
    public static VirtioBlkConfig Parse(ReadOnlySpan<byte> raw)
    {
        Span<byte> cfg = stackalloc byte[Size];
        cfg.Clear();
        raw[..Math.Min(raw.Length, Size)].CopyTo(cfg);
        return new VirtioBlkConfig
        {
            Capacity = BinaryPrimitives.ReadUInt64LittleEndian(cfg),
            SizeMax = BinaryPrimitives.ReadUInt32LittleEndian(cfg[SizeMaxOff..]),
            SegMax = BinaryPrimitives.ReadUInt32LittleEndian(cfg[SegMaxOff..]),
            Cylinders = BinaryPrimitives.ReadUInt16LittleEndian(cfg[CylindersOff..]),
            Heads = cfg[HeadsOff],
            Sectors = cfg[SectorsOff],
            BlkSize = BinaryPrimitives.ReadUInt32LittleEndian(cfg[BlkSizeOff..]),
            PhysicalBlockExp = cfg[PhysicalBlockExpOff],
            AlignmentOffset = cfg[AlignmentOffsetOff],
            MinIoSize = BinaryPrimitives.ReadUInt16LittleEndian(cfg[MinIoSizeOff..]),
            OptIoSize = BinaryPrimitives.ReadUInt32LittleEndian(cfg[OptIoSizeOff..]),
            NumQueues = BinaryPrimitives.ReadUInt16LittleEndian(cfg[NumQueuesOff..]),
            MaxDiscardSectors = BinaryPrimitives.ReadUInt32LittleEndian(cfg[MaxDiscardSectorsOff..]),
            MaxDiscardSeg = BinaryPrimitives.ReadUInt32LittleEndian(cfg[MaxDiscardSegOff..]),
            DiscardSectorAlignment = BinaryPrimitives.ReadUInt32LittleEndian(cfg[DiscardSectorAlignmentOff..]),
            MaxWriteZeroesSectors = BinaryPrimitives.ReadUInt32LittleEndian(cfg[MaxWriteZeroesSectorsOff..]),
            MaxWriteZeroesSeg = BinaryPrimitives.ReadUInt32LittleEndian(cfg[MaxWriteZeroesSegOff..]),
            WriteZeroesMayUnmap = cfg[WriteZeroesMayUnmapOff] != 0,
        };
    }
}
