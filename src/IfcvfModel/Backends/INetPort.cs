namespace IfcVdpa.IfcvfModel.Backends;

/// <summary>
/// The datapath side of a backend: a struct, so a net personality generic over it
/// (<c>where TPort : struct, INetPort</c>) is specialised by the JIT (no virtual call per frame).
/// Frames are the 12-byte virtio-net header followed by the Ethernet frame.
/// </summary>
internal interface INetPort
{
    /// <summary>
    /// Sends one frame from queue pair <paramref name="pair"/>. A port that turns frames around (loopback)
    /// hands them to <paramref name="local"/>. False: dropped (counted on the TX queue).
    /// </summary>
    bool Transmit<TSink>(ReadOnlySpan<byte> frame, int pair, ref TSink local) where TSink : IFrameSink, allows ref struct;

    /// <summary>After a TX burst that handled chains (a pair wakes its peer's worker).</summary>
    void TxBurstDone();

    /// <summary>Frames from outside the VF: hands at most <paramref name="max"/> to <paramref name="sink"/>. Returns the frames taken.</summary>
    int Receive<TSink>(ref TSink sink, int max) where TSink : IFrameSink, allows ref struct;

    /// <summary>The worker is idle: flush buffered output.</summary>
    void Idle();

    /// <summary>A file descriptor that becomes readable when frames arrive (-1: none).</summary>
    int WakeFd { get; }

    /// <summary>
    /// True: while the VF receives nothing (its first RX queue stopped) frames wait in the port (the kernel's
    /// TAP queue, bounded by its txqueuelen), as QEMU's tap netdev and vhost-net leave them, and reach the
    /// guest when the queue starts again (a migrated guest resumes with what arrived during the switch-over).
    /// False: the port is read anyway and what nobody receives is dropped and counted.
    /// </summary>
    bool HoldsWhileStopped { get; }
}

/// <summary>Where a port hands received frames: the VF's RX queues.</summary>
internal interface IFrameSink
{
    /// <summary>Queue pairs to spread received traffic over.</summary>
    int SteeringPairs { get; }

    /// <summary>
    /// Places a frame in the RX queue of <paramref name="pair"/> (pair 0 if that one is not running). The
    /// header the driver sees is rewritten on the way (offload fields, num_buffers); the frame itself is
    /// only read (it may be the transmitting guest's own buffer).
    /// </summary>
    void Deliver(ReadOnlySpan<byte> frame, int pair);

    /// <summary>Counts a frame the port dropped on the way in.</summary>
    void Drop();

    /// <summary>Whether the frame's destination is the VF (its MAC, broadcast or multicast).</summary>
    bool ForUs(ReadOnlySpan<byte> frame);
}

/// <summary>
/// What a backend may ask of the engine it serves: waking its worker (a pair peer queued frames) and
/// reporting the link. The Backends folder owns this, so backends never see the datapath types.
/// </summary>
public interface INetBackendHost
{
    /// <summary>Wakes the engine's worker if it sleeps (any thread).</summary>
    void Wake();

    /// <summary>The link changed (any thread; the host never blocks the caller on the register lock).</summary>
    void LinkChanged(bool up);

    /// <summary>Logs a backend problem once.</summary>
    void Log(string message);
}

/// <summary>Receives a backend's port with its concrete struct type (called once, when an engine binds the backend).</summary>
internal interface INetPortUser<out TResult>
{
    TResult Use<TPort>(TPort port) where TPort : struct, INetPort;
}
