using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// An in-test vDPA device that records the operations it receives, for protocol-level tests only
/// (the binding tests run against the real IfcvfAdapter + SoftIfcVf).
/// </summary>
public sealed class FakeVdpaDevice : IVdpaDevice
{
    private readonly Lock _lock = new();
    private readonly List<string> _ops = [];
    private readonly VdpaVqState[] _state;
    private readonly VdpaCallback?[] _callbacks;
    private readonly long[] _kicks;
    private readonly byte[] _config = new byte[12];
    private byte _status;

    public FakeVdpaDevice(int pairs = 1)
    {
        NumVqs = (pairs * 2) + 1;
        _state = new VdpaVqState[NumVqs];
        _callbacks = new VdpaCallback?[NumVqs];
        _kicks = new long[NumVqs];
        _config[0] = 2;
        _config[5] = 9;
        _config[10] = 0xDC; // MTU 1500
        _config[11] = 0x05;
    }

    public const ulong Features = (1UL << VirtioFeature.F_VERSION_1) | (1UL << VirtioFeature.F_ACCESS_PLATFORM) |
        (1UL << VirtioFeature.NET_F_MAC) | (1UL << VirtioFeature.NET_F_MTU) | (1UL << VirtioFeature.NET_F_MRG_RXBUF);

    public string Name => "fake0";

    public int NumVqs { get; }

    public List<(ulong Iova, ulong Size, ulong UserAddress)> Maps { get; } = [];

    public IReadOnlyList<string> Ops
    {
        get
        {
            lock (_lock)
            {
                return [.. _ops];
            }
        }
    }

    public VdpaCallback? Callback(int q) => _callbacks[q];

    public long Kicks(int q) => Interlocked.Read(ref _kicks[q]);

    /// <summary>Sets what GetVqState reports (as if the device had processed buffers).</summary>
    public void Advance(int q, ushort avail) => _state[q] = new VdpaVqState(avail, avail);

    private void Op(string s)
    {
        lock (_lock)
        {
            _ops.Add(s);
        }
    }

    public uint GetDeviceId() => 1;

    public uint GetVendorId() => 0x8086;

    public uint GetVqAlign() => 4096;

    public ulong GetDeviceFeatures() => Features;

    public ulong DriverFeatures { get; private set; }

    public void SetDriverFeatures(ulong features)
    {
        Op($"features 0x{features:x}");
        DriverFeatures = features;
    }

    public ulong GetDriverFeatures() => DriverFeatures;

    public byte GetStatus() => _status;

    public void SetStatus(byte status)
    {
        Op($"status 0x{status:x}");
        _status = status;
    }

    public void Reset()
    {
        Op("reset");
        _status = 0;
    }

    public void Suspend() => throw new VdpaNotSupportedException("no suspend");

    public void Resume() => throw new VdpaNotSupportedException("no resume");

    public ushort GetVqNumMax() => 1024;

    public ushort GetVqNumMin() => 64;

    public ushort GetVqSize(int qid) => 256;

    public void SetVqNum(int qid, uint num) => Op($"num {qid} {num}");

    public void SetVqAddress(int qid, ulong descArea, ulong driverArea, ulong deviceArea) =>
        Op($"addr {qid} 0x{descArea:x} 0x{driverArea:x} 0x{deviceArea:x}");

    public void SetVqReady(int qid, bool ready) => Op($"ready {qid} {ready}");

    public bool GetVqReady(int qid) => false;

    public void SetVqState(int qid, VdpaVqState state)
    {
        Op($"state {qid} {state.AvailIndex}");
        _state[qid] = state;
    }

    public VdpaVqState GetVqState(int qid) => _state[qid];

    public void SetVqCallback(int qid, VdpaCallback? callback)
    {
        Op($"cb {qid} {(callback is null ? "none" : "set")}");
        _callbacks[qid] = callback;
    }

    public void KickVq(int qid)
    {
        Interlocked.Increment(ref _kicks[qid]);
    }

    public VdpaNotificationArea GetVqNotification(int qid) => new(2, (ulong)qid * 4096, 4096);

    public uint GetGeneration() => 0;

    public uint GetConfigSize() => (uint)_config.Length;

    public void GetConfig(uint offset, Span<byte> buffer) => _config.AsSpan((int)offset, buffer.Length).CopyTo(buffer);

    public void SetConfig(uint offset, ReadOnlySpan<byte> buffer) => Op($"setconfig {offset} {buffer.Length}");

    public VdpaCallback? ConfigCallback { get; private set; }

    public void SetConfigCallback(VdpaCallback? callback)
    {
        Op($"configcb {(callback is null ? "none" : "set")}");
        ConfigCallback = callback;
    }

    public void DmaMap(ulong iova, MemorySlice memory, bool writable)
    {
        Op($"map 0x{iova:x} 0x{memory.Length:x}");
        Maps.Add((iova, memory.Length, memory.UserAddress));
    }

    public void DmaUnmap(ulong iova, ulong size)
    {
        Op($"unmap 0x{iova:x} 0x{size:x}");
        Maps.RemoveAll(m => m.Iova == iova && m.Size == size);
    }

    public VdpaVqStats GetVqStats(int qid) => default;
}
