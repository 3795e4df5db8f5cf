using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.IfcvfModel.Datapath;

namespace IfcVdpa.IfcvfModel.Backends;

/// <summary>Where a software VF's "wire" goes. The engine switches on this (no virtual call per packet).</summary>
public enum NetBackendKind
{
    /// <summary>A queue pair's TX comes back on the same pair's RX.</summary>
    Loopback,

    /// <summary>Two VFs back to back: one's TX is the other's RX.</summary>
    Pair,

    /// <summary>A Linux TAP interface.</summary>
    Tap,

    /// <summary>Everything sent is appended to a pcap file; nothing is received.</summary>
    Pcap,
}

/// <summary>
/// A network backend for <see cref="VirtioNetEngine"/>: <see cref="Loopback"/>, <see cref="Pair"/>,
/// <see cref="Tap"/>, <see cref="Pcap"/> or <see cref="Parse"/> ("loopback", "tap:NAME", "pcap:FILE").
/// One backend serves one engine. Disposing it closes the TAP / pcap file (the engine does it too).
/// </summary>
public sealed class NetBackend : IDisposable
{
    private NetBackend(NetBackendKind kind) => Kind = kind;

    public NetBackendKind Kind { get; }

    /// <summary>Loopback only: deliver a frame back only if its destination MAC is the VF's, broadcast or multicast.</summary>
    public bool FilterDestinationMac { get; private init; }

    /// <summary>Pair only: frames this side sent, waiting for the peer's worker.</summary>
    internal FrameRing? Outbound { get; private set; }

    /// <summary>Pair only: the other side.</summary>
    internal NetBackend? Peer { get; private set; }

    /// <summary>The engine using this backend (a pair wakes its peer's engine in event mode).</summary>
    internal VirtioNetEngine? Owner { get; set; }

    internal TapDevice? TapDevice { get; private init; }

    internal PcapWriter? PcapWriter { get; private init; }

    /// <summary>Whether the link is up as the VF should report it (VIRTIO_NET_S_LINK_UP).</summary>
    public bool LinkUp => Kind != NetBackendKind.Pair || (Peer is { } p && !p._disposed);

    private bool _disposed;

    public static NetBackend Loopback(bool filterDestinationMac = false) =>
        new(NetBackendKind.Loopback) { FilterDestinationMac = filterDestinationMac };

    /// <summary>Two connected backends for two VFs wired back to back.</summary>
    public static (NetBackend A, NetBackend B) Pair(int slots = 512)
    {
        var a = new NetBackend(NetBackendKind.Pair) { Outbound = new FrameRing(slots) };
        var b = new NetBackend(NetBackendKind.Pair) { Outbound = new FrameRing(slots) };
        a.Peer = b;
        b.Peer = a;
        return (a, b);
    }

    /// <summary>A TAP interface (created if absent) with a virtio-net header on each frame. Needs CAP_NET_ADMIN.</summary>
    public static NetBackend Tap(string name) =>
        new(NetBackendKind.Tap) { TapDevice = TapDevice.Open(name, vnetHeader: true) };

    /// <summary>A pcap file (Ethernet link type) of every frame the VF sends.</summary>
    public static NetBackend Pcap(string path) => new(NetBackendKind.Pcap) { PcapWriter = new PcapWriter(path) };

    /// <summary>Parses "loopback", "loopback:filter", "tap:NAME" or "pcap:FILE" (a pair needs <see cref="Pair"/>).</summary>
    public static NetBackend Parse(string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (spec == "loopback")
        {
            return Loopback();
        }
        if (spec == "loopback:filter")
        {
            return Loopback(filterDestinationMac: true);
        }
        if (spec.StartsWith("tap:", StringComparison.Ordinal) && spec.Length > 4)
        {
            return Tap(spec[4..]);
        }
        if (spec.StartsWith("pcap:", StringComparison.Ordinal) && spec.Length > 5)
        {
            return Pcap(spec[5..]);
        }
        throw new ArgumentException($"unknown backend '{spec}' (loopback, loopback:filter, tap:NAME, pcap:FILE)");
    }

    /// <summary>The TAP interface name (tap backends).</summary>
    public string? TapName => TapDevice?.Name;

    public override string ToString() => Kind switch
    {
        NetBackendKind.Tap => $"tap:{TapDevice!.Name}",
        NetBackendKind.Pcap => $"pcap:{PcapWriter!.Path}",
        NetBackendKind.Loopback => FilterDestinationMac ? "loopback:filter" : "loopback",
        _ => "pair",
    };

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        TapDevice?.Dispose();
        PcapWriter?.Dispose();
    }
}

/// <summary>
/// A single-producer single-consumer ring of frames (preallocated slots) between two workers.
/// Each slot holds a 12-byte virtio-net header followed by the frame.
/// </summary>
internal sealed class FrameRing
{
    public const int SlotSize = 16384;
    private readonly byte[] _data;
    private readonly int[] _lengths;
    private readonly int _mask;
    private readonly ushort[] _pairs;
    private Indices _idx;

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Explicit, Size = 256)]
    private struct Indices
    {
        [System.Runtime.InteropServices.FieldOffset(0)]
        public long Head; // written by the producer

        [System.Runtime.InteropServices.FieldOffset(128)]
        public long Tail; // written by the consumer
    }

    public FrameRing(int slots)
    {
        if (slots < 2 || (slots & (slots - 1)) != 0)
        {
            throw new ArgumentException("slots must be a power of two >= 2");
        }
        _data = new byte[slots * SlotSize];
        _lengths = new int[slots];
        _pairs = new ushort[slots];
        _mask = slots - 1;
    }

    /// <summary>Producer: copies a frame (header included) in. False if full or too large.</summary>
    public bool TryPush(ReadOnlySpan<byte> frame, int pair)
    {
        long head = _idx.Head;
        if (frame.Length > SlotSize || head - Volatile.Read(ref _idx.Tail) > _mask)
        {
            return false;
        }
        int slot = (int)(head & _mask);
        frame.CopyTo(_data.AsSpan(slot * SlotSize, SlotSize));
        _lengths[slot] = frame.Length;
        _pairs[slot] = (ushort)pair;
        Volatile.Write(ref _idx.Head, head + 1);
        return true;
    }

    /// <summary>Consumer: the oldest frame, if any (valid until <see cref="Pop"/>).</summary>
    public bool TryPeek(out Span<byte> frame, out int pair)
    {
        long tail = _idx.Tail;
        if (tail == Volatile.Read(ref _idx.Head))
        {
            frame = default;
            pair = 0;
            return false;
        }
        int slot = (int)(tail & _mask);
        frame = _data.AsSpan(slot * SlotSize, _lengths[slot]);
        pair = _pairs[slot];
        return true;
    }

    public void Pop() => Volatile.Write(ref _idx.Tail, _idx.Tail + 1);
}

/// <summary>A pcap (libpcap 2.4, microsecond, LINKTYPE_ETHERNET) writer; frames without the virtio-net header.</summary>
internal sealed class PcapWriter : IDisposable
{
    private readonly FileStream _file;
    private readonly byte[] _record = new byte[16];

    public PcapWriter(string path)
    {
        Path = path;
        _file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read, 1 << 16);
        Span<byte> h = stackalloc byte[24];
        BinaryPrimitives.WriteUInt32LittleEndian(h, 0xa1b2c3d4);
        BinaryPrimitives.WriteUInt16LittleEndian(h[4..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(h[6..], 4);
        BinaryPrimitives.WriteUInt32LittleEndian(h[16..], 65535); // snaplen
        BinaryPrimitives.WriteUInt32LittleEndian(h[20..], 1); // LINKTYPE_ETHERNET
        _file.Write(h);
        _file.Flush();
    }

    public string Path { get; }

    public long Frames { get; private set; }

    public void Write(ReadOnlySpan<byte> frame)
    {
        long us = (DateTime.UtcNow.Ticks - DateTime.UnixEpoch.Ticks) / 10;
        int incl = Math.Min(frame.Length, 65535);
        BinaryPrimitives.WriteUInt32LittleEndian(_record, (uint)(us / 1_000_000));
        BinaryPrimitives.WriteUInt32LittleEndian(_record.AsSpan(4), (uint)(us % 1_000_000));
        BinaryPrimitives.WriteUInt32LittleEndian(_record.AsSpan(8), (uint)incl);
        BinaryPrimitives.WriteUInt32LittleEndian(_record.AsSpan(12), (uint)frame.Length);
        _file.Write(_record);
        _file.Write(frame[..incl]);
        Frames++;
    }

    /// <summary>Pushes buffered records to the file (the worker calls it when idle).</summary>
    public void Flush() => _file.Flush();

    public void Dispose() => _file.Dispose();
}
