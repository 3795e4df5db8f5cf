using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>
/// What a vhost-user back-end does with each front-end request, one member per request, named after it.
/// <see cref="VhostUserRequestDispatcher"/> calls them after it has checked the message (payload size,
/// descriptors, SET_OWNER first) and decoded it; it sends the replies and acks. A member refuses a request
/// by throwing (see <see cref="VhostUserRequestDispatcher.IsRefusal"/> for which exceptions become a failed
/// REPLY_ACK); descriptors passed in are the handler's from then on unless said otherwise.
/// The optional requests answer "not supported" unless a handler implements them.
/// </summary>
public interface IVhostUserBackendHandler
{
    // ---- negotiation ----

    /// <summary>GET_FEATURES: the virtio features offered (bit 30, PROTOCOL_FEATURES, included when supported).</summary>
    ulong GetFeatures();

    /// <summary>SET_FEATURES.</summary>
    void SetFeatures(ulong features);

    /// <summary>GET_PROTOCOL_FEATURES: the protocol features offered.</summary>
    ulong GetProtocolFeatures();

    /// <summary>SET_PROTOCOL_FEATURES, already checked against <see cref="GetProtocolFeatures"/>.</summary>
    void SetProtocolFeatures(ulong features);

    /// <summary>SET_OWNER (the dispatcher refuses a second one).</summary>
    void SetOwner();

    /// <summary>RESET_OWNER: forget rings, memory, features and status.</summary>
    void ResetOwner();

    /// <summary>GET_QUEUE_NUM: queue pairs.</summary>
    ulong GetQueueNum();

    // ---- memory ----

    /// <summary>SET_MEM_TABLE: the regions and their descriptors (one each; owned by the message, map them, do not keep them).</summary>
    void SetMemTable(IReadOnlyList<MemoryRegionDesc> regions, IReadOnlyList<SafeFd> fds);

    // ---- rings ----

    /// <summary>SET_VRING_NUM: ring size.</summary>
    void SetVringNum(VringState state);

    /// <summary>SET_VRING_ADDR: ring addresses in the front-end's address space.</summary>
    void SetVringAddr(VringAddr addr);

    /// <summary>SET_VRING_BASE: where the ring resumes (wire encoding: <see cref="VringBase"/>).</summary>
    void SetVringBase(VringState state);

    /// <summary>GET_VRING_BASE: stops the ring and answers where it stopped.</summary>
    VringState GetVringBase(VringState state);

    /// <summary>SET_VRING_KICK: the ring's kick eventfd, or null (NOFD: the front-end polls nothing for us).</summary>
    void SetVringKick(uint index, EventFd? kick);

    /// <summary>SET_VRING_CALL: the ring's call eventfd, or null (no interrupts).</summary>
    void SetVringCall(uint index, EventFd? call);

    /// <summary>SET_VRING_ERR: the ring's error eventfd, or null.</summary>
    void SetVringErr(uint index, SafeFd? err);

    /// <summary>SET_VRING_ENABLE (PROTOCOL_FEATURES): start or stop handling the ring.</summary>
    void SetVringEnable(VringState state);

    // ---- optional requests (each needs a protocol feature the handler offers) ----

    /// <summary>RESET_DEVICE (RESET_DEVICE): as RESET_OWNER.</summary>
    void ResetDevice() => throw Unsupported(VhostUserRequest.RESET_DEVICE);

    /// <summary>GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS).</summary>
    ulong GetMaxMemSlots() => throw Unsupported(VhostUserRequest.GET_MAX_MEM_SLOTS);

    /// <summary>ADD_MEM_REG (CONFIGURE_MEM_SLOTS): one region; its descriptor is owned by the message.</summary>
    void AddMemReg(MemoryRegionDesc region, SafeFd fd) => throw Unsupported(VhostUserRequest.ADD_MEM_REG);

    /// <summary>REM_MEM_REG (CONFIGURE_MEM_SLOTS).</summary>
    void RemMemReg(MemoryRegionDesc region) => throw Unsupported(VhostUserRequest.REM_MEM_REG);

    /// <summary>
    /// SET_LOG_BASE (LOG_SHMFD): the dirty log, <paramref name="size"/> bytes at <paramref name="offset"/> of
    /// <paramref name="fd"/> (owned by the message: map it, do not keep it). The dispatcher replies.
    /// </summary>
    void SetLogBase(ulong size, ulong offset, SafeFd fd) => throw Unsupported(VhostUserRequest.SET_LOG_BASE);

    /// <summary>SET_LOG_FD (LOG_SHMFD): an eventfd for log syncs; the handler owns it from then on.</summary>
    void SetLogFd(SafeFd fd)
    {
        fd.Dispose();
        throw Unsupported(VhostUserRequest.SET_LOG_FD);
    }

    /// <summary>SEND_RARP (RARP): the guest's MAC, to announce after a migration.</summary>
    void SendRarp(ReadOnlySpan<byte> mac) => throw Unsupported(VhostUserRequest.SEND_RARP);

    /// <summary>NET_SET_MTU (MTU).</summary>
    void NetSetMtu(ulong mtu) => throw Unsupported(VhostUserRequest.NET_SET_MTU);

    /// <summary>SET_BACKEND_REQ_FD (BACKEND_REQ): the channel for back-end initiated messages.</summary>
    void SetBackendReqFd(UnixSocket channel)
    {
        channel.Dispose();
        throw Unsupported(VhostUserRequest.SET_BACKEND_REQ_FD);
    }

    /// <summary>GET_INFLIGHT_FD (INFLIGHT_SHMFD): a new inflight buffer; the dispatcher sends its fd, then disposes it.</summary>
    InflightBuffer GetInflightFd(int queues, int queueSize) => throw Unsupported(VhostUserRequest.GET_INFLIGHT_FD);

    /// <summary>SET_INFLIGHT_FD (INFLIGHT_SHMFD): the front-end's inflight buffer (the handler validates and maps it).</summary>
    void SetInflightFd(SafeFd fd, ulong size, ulong offset, int queues, int queueSize) => throw Unsupported(VhostUserRequest.SET_INFLIGHT_FD);

    /// <summary>GET_CONFIG (CONFIG): fills <paramref name="data"/> from device config space at <paramref name="offset"/>.</summary>
    void GetConfig(uint offset, uint flags, Span<byte> data) => throw Unsupported(VhostUserRequest.GET_CONFIG);

    /// <summary>SET_CONFIG (CONFIG).</summary>
    void SetConfig(uint offset, uint flags, ReadOnlySpan<byte> data) => throw Unsupported(VhostUserRequest.SET_CONFIG);

    /// <summary>SET_STATUS (STATUS): the virtio device status byte (any value: the handler checks it).</summary>
    void SetStatus(ulong status) => throw Unsupported(VhostUserRequest.SET_STATUS);

    /// <summary>GET_STATUS (STATUS).</summary>
    ulong GetStatus() => throw Unsupported(VhostUserRequest.GET_STATUS);

    /// <summary>The refusal of a request this handler does not implement.</summary>
    static VhostUserRequestException Unsupported(VhostUserRequest r) =>
        new($"not supported by this back-end ({VhostUserCodec.Name(r)}: its protocol feature is not offered)");
}
