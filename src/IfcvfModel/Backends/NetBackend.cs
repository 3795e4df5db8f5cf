namespace IfcVdpa.IfcvfModel.Backends;

/// <summary>
/// Where a software VF's "wire" goes: <see cref="Loopback"/>, <see cref="Pair"/>, <see cref="Tap"/>,
/// <see cref="Pcap"/> or <see cref="Parse"/> ("loopback", "tap:NAME", "pcap:FILE"). One backend serves one
/// engine (<see cref="Bind"/>); the engine reaches it through its struct port (<see cref="INetPort"/>) and
/// it reaches the engine through <see cref="INetBackendHost"/>. Disposing it closes the TAP / pcap file
/// (the engine does it too).
/// </summary>
public abstract class NetBackend : IDisposable
{
    private INetBackendHost? _host;
    private int _bound;

    private protected NetBackend()
    {
    }

    /// <summary>Whether the link is up as the VF should report it (VIRTIO_NET_S_LINK_UP).</summary>
    public virtual bool LinkUp => true;

    /// <summary>The TAP interface name (tap backends).</summary>
    public virtual string? TapName => null;

    /// <summary>The engine this backend serves (null until bound).</summary>
    private protected INetBackendHost? Host => Volatile.Read(ref _host);

    private protected bool Disposed { get; private set; }

    public static NetBackend Loopback(bool filterDestinationMac = false) => new LoopbackBackend(filterDestinationMac);

    /// <summary>Two connected backends for two VFs wired back to back.</summary>
    public static (NetBackend A, NetBackend B) Pair(int slots = 512) => PairBackend.Create(slots);

    /// <summary>A TAP interface (created if absent) with a virtio-net header on each frame. Needs CAP_NET_ADMIN.</summary>
    public static NetBackend Tap(string name) => new TapBackend(name);

    /// <summary>A pcap file (Ethernet link type) of every frame the VF sends.</summary>
    public static NetBackend Pcap(string path) => new PcapBackend(path);

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

    /// <summary>
    /// Binds the backend to the engine that will serve it: <paramref name="user"/> gets the backend's port
    /// and returns the engine side, which the backend then uses as its host.
    /// </summary>
    internal TResult Bind<TResult>(INetPortUser<TResult> user)
        where TResult : INetBackendHost
    {
        if (Interlocked.Exchange(ref _bound, 1) != 0)
        {
            throw new ArgumentException("this backend already serves an engine");
        }
        var host = OpenPort(user);
        Volatile.Write(ref _host, host);
        return host;
    }

    /// <summary>
    /// Sets the carrier of the backend's own network side (a TAP: TUNSETCARRIER), for a migrated guest's old
    /// port to leave the bridge at the switch-over. False when the backend has no carrier to set.
    /// </summary>
    internal virtual bool SetCarrier(bool up) => false;

    /// <summary>Calls <paramref name="user"/> with this backend's port (its concrete struct type).</summary>
    private protected abstract TResult OpenPort<TResult>(INetPortUser<TResult> user);

    public void Dispose()
    {
        if (Disposed)
        {
            return;
        }
        Disposed = true;
        Close();
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases what the backend holds (a TAP, a file) or tells the other side (a pair).</summary>
    private protected virtual void Close()
    {
    }
}

/// <summary>A queue pair's TX comes back on the same pair's RX (optionally only frames addressed to the VF).</summary>
internal sealed class LoopbackBackend(bool filterDestinationMac) : NetBackend
{
    public bool FilterDestinationMac { get; } = filterDestinationMac;

    private protected override TResult OpenPort<TResult>(INetPortUser<TResult> user) => user.Use(new Port(FilterDestinationMac));

    public override string ToString() => FilterDestinationMac ? "loopback:filter" : "loopback";

    private readonly struct Port(bool filter) : INetPort
    {
        public int WakeFd => -1;

        public bool HoldsWhileStopped => false;

        public bool Transmit<TSink>(ReadOnlySpan<byte> frame, int pair, ref TSink local) where TSink : IFrameSink, allows ref struct
        {
            if (filter && !local.ForUs(frame))
            {
                local.Drop();
            }
            else
            {
                local.Deliver(frame, pair);
            }
            return true;
        }

        public void TxBurstDone()
        {
        }

        public int Receive<TSink>(ref TSink sink, int max) where TSink : IFrameSink, allows ref struct => 0;

        public void Idle()
        {
        }
    }
}
