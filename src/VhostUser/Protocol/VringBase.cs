using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The ring base as SET_VRING_BASE and GET_VRING_BASE carry it, to and from <see cref="VdpaVqState"/>:
/// the one place that knows the wire encoding. Split ring: the 16-bit avail index (the used index is the
/// same once the ring is stopped). Packed ring: bits 0-15 the avail position with its wrap counter in bit
/// 15, bits 16-31 the used position with its wrap counter in bit 31.
/// </summary>
public static class VringBase
{
    public static uint ToWire(VdpaVqState state, bool packed) =>
        packed ? state.AvailIndex | ((uint)state.UsedIndex << 16) : state.AvailIndex;

    /// <summary>Decodes a base exactly as sent (a split base must fit 16 bits: callers check that first).</summary>
    public static VdpaVqState FromWire(uint num, bool packed) =>
        packed ? new VdpaVqState((ushort)num, (ushort)(num >> 16)) : new VdpaVqState((ushort)num, (ushort)num);

    /// <summary>
    /// Decodes a front-end's SET_VRING_BASE: as <see cref="FromWire"/>, except that a packed base with 0 in
    /// bits 16-31 (DPDK 22.11 sends only the avail half) takes the used position from the avail one.
    /// </summary>
    public static VdpaVqState FromFrontEnd(uint num, bool packed) =>
        FromWire(packed && num >> 16 == 0 ? (num & 0xFFFF) | (num << 16) : num, packed);
}
