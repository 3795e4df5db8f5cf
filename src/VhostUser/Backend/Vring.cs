using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>One ring as the front-end described it, and whether the device runs it.</summary>
internal sealed class Vring : IDisposable
{
    /// <summary>Size (SET_VRING_NUM); 0 until set.</summary>
    public uint Num;

    /// <summary>Addresses in the front-end's address space (SET_VRING_ADDR).</summary>
    public VringAddr? Addr;

    /// <summary>Where the ring resumes, wire-encoded (SET_VRING_BASE; updated when the ring stops).</summary>
    public uint Base;

    public EventFd? Kick;

    /// <summary>SET_VRING_KICK with NOFD: the ring is ready without a kick eventfd.</summary>
    public bool KickNoFd;

    public EventFd? Call;

    /// <summary>SET_VRING_CALL was received (with or without a descriptor).</summary>
    public bool CallSet;

    public SafeFd? Err;

    public bool Enabled;

    /// <summary>The device runs this ring.</summary>
    public bool Running;

    /// <summary>It runs on mediated areas through the software relay (<see cref="VringRelay"/>).</summary>
    public bool Relayed;

    public bool Ready => Num != 0 && Addr is not null && (Kick is not null || KickNoFd) && CallSet;

    public void Dispose()
    {
        Kick?.Dispose();
        Call?.Dispose();
        Err?.Dispose();
    }
}
