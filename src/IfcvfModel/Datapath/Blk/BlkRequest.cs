using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using IfcVdpa.IfcvfModel.Backends.Blk;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioBlk;

namespace IfcVdpa.IfcvfModel.Datapath.Blk;

/// <summary>
/// Collects a request chain's buffers (VIRTIO 1.2 §5.2.6): device-readable ones first (the 16-byte header,
/// then OUT data or discard segments), then device-writable ones (IN data, GET_ID serial, and the status
/// byte, which is the last byte of the writable part). Buffers may split or merge those parts any way
/// (ANY_LAYOUT is implied by VERSION_1): the request is read as two byte streams. Each buffer is checked
/// against the DMA map with its direction; a readable buffer after a writable one, a buffer outside the
/// map, or more buffers than the device takes is a ring error.
/// </summary>
internal ref struct BlkChainVisitor(IovaMap dma, BlkSegments segs) : IChainVisitor
{
    private bool _sawWritable;
    public int Count;
    /// <summary>Index of the first recorded writable buffer (readable ones all come before it).</summary>
    public int FirstWritable = -1;
    public long Readable;
    public long Writable;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ChainError Visit(ulong addr, uint len, bool writable)
    {
        if (len > int.MaxValue)
        {
            return ChainError.LengthOverflow;
        }
        if (writable)
        {
            _sawWritable = true;
        }
        else if (_sawWritable)
        {
            return ChainError.ReadAfterWrite;
        }
        if (len == 0)
        {
            return ChainError.None;
        }
        if (Count >= segs.Addr.Length)
        {
            return ChainError.TooManySegments;
        }
        if (!dma.TryTranslate(addr, len, writable, out _))
        {
            return ChainError.BadAddress;
        }
        if (writable && FirstWritable < 0)
        {
            FirstWritable = Count;
        }
        segs.Addr[Count] = addr;
        segs.Len[Count] = len;
        Count++;
        if (writable)
        {
            Writable += len;
        }
        else
        {
            Readable += len;
        }
        return Readable > uint.MaxValue || Writable > uint.MaxValue ? ChainError.LengthOverflow : ChainError.None;
    }
}

/// <summary>A queue thread's segment arrays (allocated once per queue).</summary>
internal sealed class BlkSegments(int max)
{
    public readonly ulong[] Addr = new ulong[max];
    public readonly uint[] Len = new uint[max];
}

/// <summary>What a request came to: the status byte and the bytes written into the chain (used length), or a ring error.</summary>
internal readonly record struct BlkOutcome(byte Status, uint Written, long DataBytes, string? Problem)
{
    /// <summary>A chain that cannot be answered at all (no status byte): a ring error.</summary>
    public string? RingFault { get; init; }
}

/// <summary>
/// Executes one request against a store (generic over the store's struct type: no virtual call). Every
/// sector range is checked against the capacity before any I/O, with overflow-safe arithmetic; unaligned
/// or out-of-range requests, and writes to a read-only device, are answered IOERR without touching the
/// image; an unknown type or an unnegotiated command UNSUPP.
/// </summary>
internal static class BlkRequest
{
    /// <summary>Most discard / write-zeroes segments one request may carry (the config's max_*_seg is at most this).</summary>
    public const int MaxDwzSegments = 16;

    /// <summary>The serial GET_ID returns for a device (20 bytes, zero-padded).</summary>
    public static byte[] SerialFor(string address)
    {
        var id = new byte[IdBytes];
        var text = System.Text.Encoding.ASCII.GetBytes("ifcvf-blk-" + address);
        text.AsSpan(0, Math.Min(text.Length, IdBytes)).CopyTo(id);
        return id;
    }

    public static BlkOutcome Execute<TStore>(ref TStore store, in BlkContext ctx, IovaMap dma, BlkSegments segs, BlkChainShape c, long readable, long writable, Span<byte> bounce)
        where TStore : struct, IBlkStore
    {
        if (writable == 0)
        {
            return new BlkOutcome(0, 0, 0, null) { RingFault = "block request without a device-writable status byte" };
        }
        Span<byte> hdr = stackalloc byte[HeaderSize];
        if (readable < HeaderSize)
        {
            return Answer(dma, segs, c, S_IOERR, 0, 0, $"request header of {readable} bytes (needs {HeaderSize})");
        }
        Gather(dma, segs, c, 0, hdr);
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(hdr);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(hdr[8..]);
        long payload = readable - HeaderSize;
        long dataIn = writable - 1; // the status byte is the writable part's last byte
        switch (type)
        {
            case T_IN:
            {
                if (CheckRange(ctx, sector, dataIn) is { } bad)
                {
                    return Answer(dma, segs, c, S_IOERR, 0, 0, $"read {bad}");
                }
                int err = ReadInto(ref store, dma, segs, c, (long)sector << SectorShift, dataIn, bounce);
                return err == 0
                    ? Answer(dma, segs, c, S_OK, (uint)writable, dataIn, null)
                    : Answer(dma, segs, c, S_IOERR, 1, 0, null, $"read of {dataIn} bytes at sector {sector}: errno {err}");
            }
            case T_OUT:
            {
                if (ctx.ReadOnly)
                {
                    return Answer(dma, segs, c, S_IOERR, 1, 0, "write to a read-only device");
                }
                if (CheckRange(ctx, sector, payload) is { } bad)
                {
                    return Answer(dma, segs, c, S_IOERR, 1, 0, $"write {bad}");
                }
                int err = WriteFrom(ref store, dma, segs, c, (long)sector << SectorShift, bounce);
                return err == 0
                    ? Answer(dma, segs, c, S_OK, 1, payload, null)
                    : Answer(dma, segs, c, S_IOERR, 1, 0, null, $"write of {payload} bytes at sector {sector}: errno {err}");
            }
            case T_FLUSH:
            {
                int err = store.Flush();
                return err == 0
                    ? Answer(dma, segs, c, S_OK, 1, 0, null)
                    : Answer(dma, segs, c, S_IOERR, 1, 0, null, $"flush: errno {err}");
            }
            case T_GET_ID:
            {
                int n = (int)Math.Min(dataIn, IdBytes);
                Scatter(dma, segs, c, ctx.Serial.AsSpan(0, n));
                return Answer(dma, segs, c, S_OK, (uint)n + 1, 0, null);
            }
            case T_DISCARD or T_WRITE_ZEROES:
                return DiscardOrZero(ref store, ctx, dma, segs, c, type, payload);
            default:
                return Answer(dma, segs, c, S_UNSUPP, 1, 0, $"unknown request type {type}");
        }
    }

    /// <summary>Why a data range is refused (null: it is fine): length, alignment, capacity.</summary>
    private static string? CheckRange(in BlkContext ctx, ulong sector, long bytes)
    {
        if (bytes % SectorSize != 0)
        {
            return $"of {bytes} bytes: not a whole number of 512-byte sectors";
        }
        ulong sectors = (ulong)bytes >> SectorShift;
        if (sector > ctx.CapacitySectors || sectors > ctx.CapacitySectors - sector)
        {
            return $"of {sectors} sectors at sector {sector}: beyond the capacity of {ctx.CapacitySectors} sectors";
        }
        ulong blockSectors = ctx.BlkSize >> SectorShift;
        if (blockSectors > 1 && (sector % blockSectors != 0 || sectors % blockSectors != 0))
        {
            return $"of {sectors} sectors at sector {sector}: not aligned to blk_size {ctx.BlkSize}";
        }
        return null;
    }

    private static BlkOutcome DiscardOrZero<TStore>(ref TStore store, in BlkContext ctx, IovaMap dma, BlkSegments segs, BlkChainShape c, uint type, long payload)
        where TStore : struct, IBlkStore
    {
        bool zeroes = type == T_WRITE_ZEROES;
        string what = zeroes ? "write-zeroes" : "discard";
        if (!VirtioFeature.Has(ctx.Features, zeroes ? F_WRITE_ZEROES : F_DISCARD))
        {
            return Answer(dma, segs, c, S_UNSUPP, 1, 0, $"{what} without VIRTIO_BLK_F_{(zeroes ? "WRITE_ZEROES" : "DISCARD")} negotiated");
        }
        if (ctx.ReadOnly)
        {
            return Answer(dma, segs, c, S_IOERR, 1, 0, $"{what} on a read-only device");
        }
        uint maxSeg = zeroes ? ctx.Config.MaxWriteZeroesSeg : ctx.Config.MaxDiscardSeg;
        uint maxSectors = zeroes ? ctx.Config.MaxWriteZeroesSectors : ctx.Config.MaxDiscardSectors;
        long n = payload / DiscardSegmentSize;
        if (payload == 0 || payload % DiscardSegmentSize != 0 || n > Math.Min(maxSeg, MaxDwzSegments))
        {
            return Answer(dma, segs, c, S_IOERR, 1, 0, $"{what} payload of {payload} bytes (needs 1..{Math.Min(maxSeg, MaxDwzSegments)} segments of {DiscardSegmentSize})");
        }
        Span<byte> all = stackalloc byte[MaxDwzSegments * DiscardSegmentSize];
        var list = all[..(int)payload];
        Gather(dma, segs, c, HeaderSize, list);
        for (int i = 0; i < n; i++)
        {
            var s = list.Slice(i * DiscardSegmentSize, DiscardSegmentSize);
            ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(s);
            uint num = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(s[12..]);
            if ((flags & ~(zeroes ? DiscardFlagUnmap : 0u)) != 0)
            {
                return Answer(dma, segs, c, S_UNSUPP, 1, 0, $"{what} flags 0x{flags:x}");
            }
            if (num > maxSectors)
            {
                return Answer(dma, segs, c, S_IOERR, 1, 0, $"{what} of {num} sectors (max {maxSectors})");
            }
            if (CheckRange(ctx, sector, (long)num << SectorShift) is { } bad)
            {
                return Answer(dma, segs, c, S_IOERR, 1, 0, $"{what} {bad}");
            }
        }
        for (int i = 0; i < n; i++)
        {
            var s = list.Slice(i * DiscardSegmentSize, DiscardSegmentSize);
            long off = (long)BinaryPrimitives.ReadUInt64LittleEndian(s) << SectorShift;
            long len = (long)BinaryPrimitives.ReadUInt32LittleEndian(s[8..]) << SectorShift;
            bool unmap = (BinaryPrimitives.ReadUInt32LittleEndian(s[12..]) & DiscardFlagUnmap) != 0;
            int err = zeroes ? store.WriteZeroes(off, len, unmap) : store.Discard(off, len);
            if (err != 0)
            {
                return Answer(dma, segs, c, S_IOERR, 1, 0, null, $"{what} of {len} bytes at {off}: errno {err}");
            }
        }
        return Answer(dma, segs, c, S_OK, 1, 0, null);
    }

    /// <summary>Writes the status byte (the last byte of the last writable buffer) and builds the outcome.</summary>
    private static BlkOutcome Answer(IovaMap dma, BlkSegments segs, BlkChainShape c, byte status, uint written, long dataBytes, string? bad, string? ioError = null)
    {
        int last = c.Count - 1; // writable buffers come last, and the caller checked there is at least one
        ulong at = segs.Addr[last] + segs.Len[last] - 1;
        if (dma.TryTranslate(at, 1, true, out var b))
        {
            b[0] = status;
        }
        return new BlkOutcome(status, Math.Max(written, 1), dataBytes, bad ?? ioError);
    }

    /// <summary>Copies readable bytes from stream position <paramref name="skip"/> into <paramref name="dst"/>.</summary>
    private static void Gather(IovaMap dma, BlkSegments segs, BlkChainShape c, long skip, Span<byte> dst)
    {
        int got = 0;
        for (int i = 0; i < c.FirstWritable && got < dst.Length; i++)
        {
            if (!dma.TryTranslate(segs.Addr[i], segs.Len[i], false, out var s))
            {
                return;
            }
            if (skip >= s.Length)
            {
                skip -= s.Length;
                continue;
            }
            var part = s[(int)skip..];
            skip = 0;
            int n = Math.Min(part.Length, dst.Length - got);
            part[..n].CopyTo(dst[got..]);
            got += n;
        }
    }

    /// <summary>Copies <paramref name="src"/> to the start of the writable stream.</summary>
    private static void Scatter(IovaMap dma, BlkSegments segs, BlkChainShape c, ReadOnlySpan<byte> src)
    {
        int put = 0;
        for (int i = c.FirstWritable; i < c.Count && put < src.Length; i++)
        {
            if (!dma.TryTranslate(segs.Addr[i], segs.Len[i], true, out var s))
            {
                return; // checked when the chain was taken; only a concurrent unmap gets here
            }
            int n = Math.Min(s.Length, src.Length - put);
            src.Slice(put, n).CopyTo(s);
            put += n;
        }
    }

    /// <summary>IN: reads <paramref name="bytes"/> from the image into the writable buffers (the status byte excluded).</summary>
    private static int ReadInto<TStore>(ref TStore store, IovaMap dma, BlkSegments segs, BlkChainShape c, long offset, long bytes, Span<byte> bounce)
        where TStore : struct, IBlkStore
    {
        long left = bytes;
        for (int i = c.FirstWritable; i < c.Count && left > 0; i++)
        {
            if (!dma.TryTranslate(segs.Addr[i], segs.Len[i], true, out var s))
            {
                return 14; // EFAULT: checked when the chain was taken; only a concurrent unmap gets here
            }
            int n = (int)Math.Min(s.Length, left);
            int err = store.Read(s[..n], offset, bounce);
            if (err != 0)
            {
                return err;
            }
            offset += n;
            left -= n;
        }
        return 0;
    }

    /// <summary>OUT: writes the readable bytes after the header to the image.</summary>
    private static int WriteFrom<TStore>(ref TStore store, IovaMap dma, BlkSegments segs, BlkChainShape c, long offset, Span<byte> bounce)
        where TStore : struct, IBlkStore
    {
        long skip = HeaderSize;
        for (int i = 0; i < c.FirstWritable; i++)
        {
            if (!dma.TryTranslate(segs.Addr[i], segs.Len[i], false, out var s))
            {
                return 14; // EFAULT: checked when the chain was taken; only a concurrent unmap gets here
            }
            if (skip >= s.Length)
            {
                skip -= s.Length;
                continue;
            }
            var part = s[(int)skip..];
            skip = 0;
            int err = store.Write(part, offset, bounce);
            if (err != 0)
            {
                return err;
            }
            offset += part.Length;
        }
        return 0;
    }
}

/// <summary>A chain's recorded buffers: [0, FirstWritable) readable, [FirstWritable, Count) writable.</summary>
internal readonly record struct BlkChainShape(int Count, int FirstWritable);

/// <summary>What every request of a device run needs: capacity, blk_size, read-only, negotiated features, serial.</summary>
internal sealed record BlkContext(ulong CapacitySectors, uint BlkSize, bool ReadOnly, ulong Features, VirtioBlkConfig Config, byte[] Serial);
