using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The vhost-user requests as a vDPA device serves them: each value is checked against the protocol and
/// the device (ring sizes, alignments, ranges, offered bits) and then handed to the
/// <see cref="VhostUserVdpaBinding"/>, which keeps the state and drives the device.
/// </summary>
internal sealed class VdpaBackendHandler : IVhostUserBackendHandler
{
    private readonly VhostUserVdpaBinding _binding;
    private readonly VhostUserBackendChannel _channel;
    private readonly VhostUserSessionOptions _options;
    private readonly IVdpaDevice _device;
    private readonly Action<string> _log;

    public VdpaBackendHandler(VhostUserVdpaBinding binding, VhostUserBackendChannel channel, VhostUserSessionOptions options, Action<string> log)
    {
        _binding = binding;
        _channel = channel;
        _options = options;
        _device = binding.Device;
        _log = log;
    }

    /// <summary>
    /// Virtio features offered: the device's without ACCESS_PLATFORM (rings use GPAs), plus bit 30, plus
    /// VHOST_F_LOG_ALL (never passed to the device itself).
    /// A device without its own dirty log is migrated through the software relay, which mediates split rings
    /// only: packed rings are then not offered (as DPDK's relay), so the guest stays migratable.
    /// </summary>
    public ulong OfferedFeatures =>
        (_binding.DeviceFeatures & ~VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM) & ~VirtioFeature.Bit(VirtioFeature.F_LOG_ALL) &
         (_binding.HasDeviceLog ? ~0UL : ~VirtioFeature.Bit(VirtioFeature.F_RING_PACKED))) |
        VirtioFeature.Bit(VirtioFeature.F_PROTOCOL_FEATURES) | (_binding.CanLog ? VirtioFeature.Bit(VirtioFeature.F_LOG_ALL) : 0);

    // ---- negotiation ----

    public ulong GetFeatures() => OfferedFeatures;

    public void SetFeatures(ulong features)
    {
        if ((features & ~OfferedFeatures) != 0)
        {
            throw new VhostUserRequestException($"features 0x{features:x} include unoffered bits 0x{features & ~OfferedFeatures:x}");
        }
        _binding.SetFeatures(features);
    }

    /// <summary>The common set, plus LOG_SHMFD when the device keeps a dirty log and RARP when it can send the announce.</summary>
    public ulong GetProtocolFeatures() => VhostUserProtocolFeature.Supported |
        (_binding.CanLog ? 1UL << VhostUserProtocolFeature.LOG_SHMFD : 0) |
        (_binding.CanSendRarp ? 1UL << VhostUserProtocolFeature.RARP : 0) |
        (_binding.CanTrackInflight ? 1UL << VhostUserProtocolFeature.INFLIGHT_SHMFD : 0);

    public InflightBuffer GetInflightFd(int queues, int queueSize) => _binding.CreateInflight(queues, queueSize);

    public void SetInflightFd(SafeFd fd, ulong size, ulong offset, int queues, int queueSize) => _binding.SetInflight(fd, size, offset, queues, queueSize);

    public void SetProtocolFeatures(ulong features) => _binding.SetProtocolFeatures(features);

    public void SetOwner()
    {
    }

    public void ResetOwner() => _binding.Reset();

    public void ResetDevice() => _binding.Reset();

    public ulong GetQueueNum() => (ulong)_binding.QueuePairs;

    public void SetStatus(ulong status)
    {
        if (status > 0xFF)
        {
            throw new VhostUserRequestException($"status 0x{status:x} is not a status byte");
        }
        _binding.SetStatus((byte)status);
    }

    public ulong GetStatus() => _binding.GetStatus();

    // ---- memory ----

    public void SetMemTable(IReadOnlyList<MemoryRegionDesc> regions, IReadOnlyList<SafeFd> fds) => _binding.SetMemTable(regions, fds);

    public ulong GetMaxMemSlots() => (ulong)_options.MaxMemSlots;

    public void AddMemReg(MemoryRegionDesc region, SafeFd fd) => _binding.AddMemReg(region, fd);

    public void RemMemReg(MemoryRegionDesc region) => _binding.RemMemReg(region);

    // ---- rings ----

    private int RingIndex(uint index)
    {
        if (index >= _binding.RingCount)
        {
            throw new VhostUserRequestException($"ring {index} out of range (the device has {_binding.RingCount} rings)");
        }
        return (int)index;
    }

    /// <summary>The ring for a request that passes a descriptor: an unusable ring number closes the descriptor.</summary>
    private int RingIndex(uint index, IDisposable? fd)
    {
        try
        {
            return RingIndex(index);
        }
        catch
        {
            fd?.Dispose();
            throw;
        }
    }

    public void SetVringNum(VringState state)
    {
        int q = RingIndex(state.Index);
        uint max = Math.Min(VhostUserWire.MaxRingSize, Math.Max((uint)_device.GetVqNumMax(), 1));
        if (state.Num == 0 || (state.Num & (state.Num - 1)) != 0 || state.Num > max)
        {
            throw new VhostUserRequestException($"ring {q} size {state.Num} invalid (a power of two, 1..{max})");
        }
        _binding.Change(q, r => r.Num = state.Num);
    }

    public void SetVringAddr(VringAddr addr)
    {
        int q = RingIndex(addr.Index);
        if ((addr.Flags & ~VhostUserWire.VringFlagLog) != 0)
        {
            throw new VhostUserRequestException($"ring {q}: unknown address flags 0x{addr.Flags:x}");
        }
        if ((addr.Flags & VhostUserWire.VringFlagLog) != 0)
        {
            CheckUsedRingLog(q, addr);
        }
        if ((addr.Desc & 15) != 0 || (addr.Avail & 1) != 0 || (addr.Used & 3) != 0)
        {
            throw new VhostUserRequestException(
                $"ring {q}: misaligned rings (desc 0x{addr.Desc:x} needs 16, avail 0x{addr.Avail:x} 2, used 0x{addr.Used:x} 4)");
        }
        if (_binding.Memory.Count > 0 && _binding.TranslateRing(q, addr, Math.Max(_binding.Ring(q).Num, 1), out _) is { } outside)
        {
            throw new VhostUserRequestException(outside);
        }
        _binding.SetAddr(q, addr);
    }

    /// <summary>VHOST_VRING_F_LOG: the device must log, and log_guest_addr must be the ring's used area inside guest memory.</summary>
    private void CheckUsedRingLog(int q, VringAddr addr)
    {
        if (!_binding.CanLog)
        {
            throw new VhostUserRequestException($"ring {q}: dirty logging requested but device {_device.Name} keeps no dirty log");
        }
        if ((addr.Log & 3) != 0)
        {
            throw new VhostUserRequestException($"ring {q}: used-ring log address 0x{addr.Log:x} is misaligned");
        }
        uint num = Math.Max(_binding.Ring(q).Num, 1);
        ulong len = _binding.Packed ? 4 : 4 + (8UL * num) + (_binding.Acked(VirtioFeature.F_RING_EVENT_IDX) ? 2UL : 0);
        if (_binding.Memory.Count > 0 && !_binding.Memory.TryGpaSpan(addr.Log, (int)len, out _))
        {
            throw new VhostUserRequestException($"ring {q}: used-ring log address 0x{addr.Log:x} (+{len}) is outside guest memory");
        }
    }

    public void SetVringBase(VringState state)
    {
        int q = RingIndex(state.Index);
        uint num = _binding.Ring(q).Num;
        uint b = state.Num;
        bool packed = _binding.Packed;
        if (!packed && b > 0xFFFF)
        {
            throw new VhostUserRequestException($"ring {q} base 0x{b:x} beyond a split ring's 16-bit index");
        }
        if (packed && num != 0 && ((b & 0x7FFF) >= num || (b >> 16 != 0 && ((b >> 16) & 0x7FFF) >= num)))
        {
            throw new VhostUserRequestException($"ring {q} packed base 0x{b:x} beyond the {num}-entry ring");
        }
        _binding.Change(q, r => r.Base = b);
    }

    public VringState GetVringBase(VringState state)
    {
        int q = RingIndex(state.Index);
        return new VringState((uint)q, _binding.GetBase(q));
    }

    public void SetVringKick(uint index, EventFd? kick)
    {
        int q = RingIndex(index, kick);
        bool enable = !_binding.Acked(VirtioFeature.F_PROTOCOL_FEATURES);
        _binding.Change(q, r =>
        {
            r.Kick?.Dispose();
            r.Kick = kick;
            r.KickNoFd = kick is null;
            r.Enabled |= enable;
        });
    }

    public void SetVringCall(uint index, EventFd? call) => _binding.SetCall(RingIndex(index, call), call);

    public void SetVringErr(uint index, SafeFd? err)
    {
        var r = _binding.Ring(RingIndex(index, err));
        r.Err?.Dispose();
        r.Err = err;
    }

    public void SetVringEnable(VringState state)
    {
        // QEMU sends SET_VRING_ENABLE(0) during init, before SET_FEATURES: accept it then; once features
        // are set, the request needs bit 30.
        if (_binding.FeaturesSet && !_binding.Acked(VirtioFeature.F_PROTOCOL_FEATURES))
        {
            throw new VhostUserRequestException("SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES (bit 30) negotiated");
        }
        int q = RingIndex(state.Index);
        if (state.Num > 1)
        {
            throw new VhostUserRequestException($"ring {q} enable value {state.Num} is not 0 or 1");
        }
        _binding.SetEnabled(q, state.Num == 1);
    }

    // ---- the rest ----

    public void SendRarp(ReadOnlySpan<byte> mac) => _binding.SendRarp(mac);

    public void SetLogBase(ulong size, ulong offset, SafeFd fd) => _binding.SetLogBase(size, offset, fd);

    public void SetLogFd(SafeFd fd)
    {
        if (!_binding.CanLog)
        {
            fd.Dispose();
            throw new VhostUserRequestException($"device {_device.Name} keeps no dirty log: SET_LOG_FD not supported");
        }
        _binding.SetLogFd(fd);
    }

    public void NetSetMtu(ulong mtu)
    {
        if (mtu is < 68 or > 65535)
        {
            throw new VhostUserRequestException($"MTU {mtu} outside 68..65535");
        }
        if ((_binding.DeviceFeatures & VirtioFeature.Bit(VirtioFeature.NET_F_MTU)) != 0 && _device.GetConfigSize() >= 12)
        {
            Span<byte> b = stackalloc byte[2];
            _device.GetConfig(10, b);
            ushort max = BinaryPrimitives.ReadUInt16LittleEndian(b);
            if (max != 0 && mtu > max)
            {
                throw new VhostUserRequestException($"MTU {mtu} exceeds the device's {max}");
            }
        }
        _log($"front-end MTU {mtu}");
    }

    public void SetBackendReqFd(UnixSocket channel) => _channel.Attach(channel);

    public void GetConfig(uint offset, uint flags, Span<byte> data)
    {
        CheckConfigRange(offset, (uint)data.Length);
        _device.GetConfig(offset, data);
    }

    public void SetConfig(uint offset, uint flags, ReadOnlySpan<byte> data)
    {
        if (flags > 1)
        {
            throw new VhostUserRequestException($"config flags 0x{flags:x} unknown");
        }
        CheckConfigRange(offset, (uint)data.Length);
        _device.SetConfig(offset, data);
    }

    private void CheckConfigRange(uint offset, uint size)
    {
        uint max = _device.GetConfigSize();
        if (offset > max || size > max - offset)
        {
            throw new VhostUserRequestException($"config range [{offset}, +{size}) outside the {max}-byte config space");
        }
    }
}
