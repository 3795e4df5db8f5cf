namespace IfcVdpa.VhostUser.Frontend;

/// <summary>How a <see cref="VhostUserFrontend"/> connects and what it tells the driver when the back-end cannot.</summary>
public sealed record VhostUserFrontendOptions
{
    /// <summary>The device name (<c>IVdpaDevice.Name</c>) and the prefix of every log line.</summary>
    public string Name { get; init; } = "vhost-user-fe";

    /// <summary>How long <see cref="VhostUserFrontend.Connect(string, VhostUserFrontendOptions?)"/> retries while nobody listens on the socket.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a reply may take (no byte for this long: the back-end is declared broken).</summary>
    public int ReplyTimeoutMs { get; init; } = 5000;

    /// <summary>One line per event (negotiation result, host notifiers, back-end errors).</summary>
    public Action<string> Log { get; init; } = _ => { };

    /// <summary>
    /// MAC address of the synthesized config space (used when the back-end does not serve GET_CONFIG, as
    /// DPDK's vhost library does not); default 02:00:00:00:00:01 (locally administered).
    /// </summary>
    public byte[]? Mac { get; init; }

    /// <summary>MTU of the synthesized config space, and what NET_SET_MTU tells the back-end when NET_F_MTU is negotiated.</summary>
    public ushort Mtu { get; init; } = 1500;

    /// <summary>Largest ring size offered to the driver (a power of two, at most 32768).</summary>
    public ushort MaxQueueSize { get; init; } = 1024;

    /// <summary>
    /// Protocol features the front-end may ask for (ANDed with what it supports and what the back-end
    /// offers); lets a caller force, e.g., SET_MEM_TABLE instead of ADD_MEM_REG.
    /// </summary>
    public ulong ProtocolFeatures { get; init; } = VhostUserFrontend.SupportedProtocolFeatures;
}
