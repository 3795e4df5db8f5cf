using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Vduse.Tests;

/// <summary>A VDUSE kernel of the test's own: IOTLB regions backed by memfds, queues as the test describes them, every call recorded.</summary>
public sealed class FakeKernel : IVduseKernel, IDisposable
{
    private readonly List<(ulong Start, ulong Last, byte Perm, ulong Offset, MappedMemory Memory)> _regions = [];

    public ulong DriverFeatures { get; set; }

    public Dictionary<uint, VduseVqInfoView> Queues { get; } = [];

    public List<(uint Index, int Fd)> KickFds { get; } = [];

    public int Irqs;

    public int ConfigIrqs;

    public List<byte[]> ConfigWrites { get; } = [];

    public int IotlbQueries { get; private set; }

    public MappedMemory AddRegion(ulong start, ulong size, byte perm = 3, ulong offset = 0)
    {
        var m = MappedMemory.CreateShared("vduse-test", size + offset);
        _regions.Add((start, start + size - 1, perm, offset, m));
        return m;
    }

    /// <summary>A region exactly as given (for malformed replies).</summary>
    public void AddRawRegion(ulong start, ulong last, byte perm, ulong offset)
    {
        var m = MappedMemory.CreateShared("vduse-test-raw", 4096);
        _regions.Add((start, last, perm, offset, m));
    }

    public ulong GetDriverFeatures() => DriverFeatures;

    public VduseVqInfoView GetVqInfo(uint index) => Queues.TryGetValue(index, out var q) ? q : default;

    public void SetupKickFd(uint index, int eventFd)
    {
        lock (KickFds)
        {
            KickFds.Add((index, eventFd));
        }
    }

    public int InjectVqIrq(uint index)
    {
        Interlocked.Increment(ref Irqs);
        return 0;
    }

    public int InjectConfigIrq()
    {
        Interlocked.Increment(ref ConfigIrqs);
        return 0;
    }

    public void SetConfig(uint offset, ReadOnlySpan<byte> data)
    {
        lock (ConfigWrites)
        {
            ConfigWrites.Add(data.ToArray());
        }
    }

    public VduseIotlbRegion? GetIotlbFd(ulong start, ulong last)
    {
        IotlbQueries++;
        foreach (var r in _regions.OrderBy(r => r.Start))
        {
            if (r.Last >= start && r.Start <= last)
            {
                return new VduseIotlbRegion(SafeFd.Dup(r.Memory.Fd!.Fd), r.Offset, r.Start, r.Last, r.Perm);
            }
        }
        return null;
    }

    public void Dispose()
    {
        foreach (var r in _regions)
        {
            r.Memory.Dispose();
        }
    }
}
