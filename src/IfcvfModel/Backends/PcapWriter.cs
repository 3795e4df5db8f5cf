using System.Buffers.Binary;

namespace IfcVdpa.IfcvfModel.Backends;

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
