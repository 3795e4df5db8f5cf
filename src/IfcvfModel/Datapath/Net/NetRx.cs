using System.Buffers.Binary;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath.Net;

/// <summary>
/// RX placement: one frame (12-byte header + data) into an RX queue, split or packed: one chain, or
/// several with MRG_RXBUF (num_buffers set). No buffers (or too small without MRG_RXBUF): dropped,
/// counted, nothing consumed. Buffers the device writes are marked in the dirty log while it is on.
/// </summary>
internal sealed class NetRx(VirtqueueEngine engine)
{
    private readonly ulong[] _segAddr = new ulong[NetPersonality.MaxSegments];
    private readonly uint[] _segLen = new uint[NetPersonality.MaxSegments];
    private readonly Chain[] _chains = new Chain[NetPersonality.MaxSegments];
    private readonly int[] _chainSegEnd = new int[NetPersonality.MaxSegments];
    private readonly byte[] _hdr = new byte[VirtioNetHeader.Size];
    private bool _guestCsum;
    private bool _guestTso;
    private bool _mergeable;
    private DirtyLog _log;
    private bool _logging;

    public void Configure(ulong features)
    {
        _guestCsum = VirtioFeature.Has(features, VirtioFeature.NET_F_GUEST_CSUM);
        _guestTso = VirtioFeature.Has(features, VirtioFeature.NET_F_GUEST_TSO4) || VirtioFeature.Has(features, VirtioFeature.NET_F_GUEST_TSO6);
        _mergeable = VirtioFeature.Has(features, VirtioFeature.NET_F_MRG_RXBUF);
    }

    /// <summary>
    /// Worker, at the start of each round: reads the dirty-log switch once for the frames the round places
    /// (one device call per round, not per frame). Logging switched on during a round takes effect from the
    /// next one; the front-end's first pass copies all of guest memory anyway, and a vhost-user front-end
    /// only reads the bitmap after the switch was acknowledged.
    /// </summary>
    public void BeginRound() => _logging = DirtyLog.TryOpen(engine.Device, engine.Dma, out _log);

    /// <summary>
    /// Places one frame (header + Ethernet frame; only read: it may be a guest's TX buffer), with the header
    /// the driver may see. False: dropped or a ring error.
    /// </summary>
    public bool Deliver(Virtqueue rx, scoped ref RingView rv, ReadOnlySpan<byte> frame)
    {
        var dma = engine.Dma;
        int total = frame.Length;
        if (total < VirtioNetHeader.Size)
        {
            rx.Drops++;
            return false;
        }
        var start = AvailRing.Mark(rx);
        int segs = 0;
        int chains = 0;
        long cap = 0;
        while (cap < total)
        {
            if (!AvailRing.HasChain(rx, ref rv, out string? fault))
            {
                AvailRing.Rewind(rx, start);
                if (fault is null)
                {
                    rx.Drops++;
                }
                else
                {
                    engine.Fail(rx, fault, SpecRule.AvailAhead);
                }
                return false;
            }
            var collect = new SegmentCollector(dma, _segAddr, _segLen, segs, default);
            var err = AvailRing.Take(rx, dma, ref rv, ref collect, out var chain);
            if (err != ChainError.None)
            {
                AvailRing.Rewind(rx, start);
                engine.Fail(rx, err);
                return false;
            }
            segs = collect.Segs;
            _chains[chains] = chain;
            _chainSegEnd[chains] = segs;
            chains++;
            cap += collect.Capacity;
            if (!_mergeable || chains == NetPersonality.MaxSegments)
            {
                break;
            }
        }
        if (cap < total)
        {
            AvailRing.Rewind(rx, start);
            rx.Drops++;
            return false;
        }
        return Scatter(rx, ref rv, frame, chains);
    }

    /// <summary>
    /// Writes the frame into the collected chains, with the header the driver may see (offload fields only
    /// when it negotiated them, num_buffers always), and completes them. The usual first buffer holds the
    /// whole header: the frame is copied in one piece and the header fields are rewritten where they landed.
    /// A header split over buffers is built in a side buffer first.
    /// </summary>
    private bool Scatter(Virtqueue rx, scoped ref RingView rv, ReadOnlySpan<byte> frame, int chains)
    {
        int total = frame.Length;
        var dma = engine.Dma;
        bool hdrBuilt = false;
        int off = 0;
        int seg = 0;
        for (int ch = 0; ch < chains; ch++)
        {
            uint written = 0;
            int end = _chainSegEnd[ch];
            for (; seg < end && off < total; seg++)
            {
                int take = (int)Math.Min(_segLen[seg], (uint)(total - off));
                if (!dma.TryTranslate(_segAddr[seg], (uint)take, true, out var dst))
                {
                    engine.Fail(rx, "RX buffer unmapped while in use");
                    return false;
                }
                if (off >= VirtioNetHeader.Size)
                {
                    frame.Slice(off, take).CopyTo(dst);
                }
                else if (off == 0 && take >= VirtioNetHeader.Size)
                {
                    frame[..take].CopyTo(dst);
                    RewriteHeader(dst, chains);
                }
                else
                {
                    var hdr = _hdr.AsSpan();
                    if (!hdrBuilt)
                    {
                        frame[..VirtioNetHeader.Size].CopyTo(hdr);
                        RewriteHeader(hdr, chains);
                        hdrBuilt = true;
                    }
                    int h = Math.Min(VirtioNetHeader.Size - off, take);
                    hdr.Slice(off, h).CopyTo(dst);
                    frame.Slice(off + h, take - h).CopyTo(dst[h..]);
                }
                if (_logging)
                {
                    rx.DirtyPages += _log.Mark(_segAddr[seg], (uint)take);
                }
                off += take;
                written += (uint)take;
            }
            seg = end;
            UsedRing.Put(rx, ref rv, _chains[ch], written);
        }
        rx.Packets++;
        rx.Bytes += total - VirtioNetHeader.Size;
        return true;
    }

    /// <summary>The header as the driver sees it, in place: offload fields cleared unless negotiated, num_buffers set.</summary>
    private void RewriteHeader(Span<byte> hdr, int chains)
    {
        if (!_guestCsum)
        {
            hdr[VirtioNetHeader.Flags] = 0;
            BinaryPrimitives.WriteUInt32LittleEndian(hdr[VirtioNetHeader.CsumStart..], 0);
        }
        if (!_guestTso)
        {
            hdr[VirtioNetHeader.GsoType] = VirtioNetHeader.GSO_NONE;
            BinaryPrimitives.WriteUInt32LittleEndian(hdr[VirtioNetHeader.HdrLen..], 0);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(hdr[VirtioNetHeader.NumBuffers..], (ushort)chains);
    }
}
