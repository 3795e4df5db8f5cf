using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The ring base as SET_VRING_BASE and GET_VRING_BASE carry it (vhost_vring_state.num), to and from the
/// explicit <see cref="VdpaVqState"/>: the one place that knows the wire encoding.
/// <list type="bullet">
/// <item>Split ring: the 16-bit avail index (the used index is the same once the ring is stopped).</item>
/// <item>Packed ring: bits 0-14 the avail position, bit 15 its wrap counter; bits 16-30 the used position,
/// bit 31 its wrap counter.</item>
/// </list>
/// </summary>
public static class VringBase
{
    public static uint ToWire(VdpaVqState state, bool packed)
    {
        if (!packed)
        {
            return state.AvailIndex;
        }
        return Half(state.AvailIndex, state.AvailWrapCounter) | ((uint)Half(state.UsedIndex, state.UsedWrapCounter) << 16);
    }

    /// <summary>Decodes a base exactly as sent (a split base must fit 16 bits: callers check that first).</summary>
    public static VdpaVqState FromWire(uint num, bool packed)
    {
        if (!packed)
        {
            return VdpaVqState.Split((ushort)num, (ushort)num);
        }
        ushort avail = (ushort)num;
        ushort used = (ushort)(num >> 16);
        return VdpaVqState.Packed((ushort)(avail & 0x7FFF), (avail & 0x8000) != 0, (ushort)(used & 0x7FFF), (used & 0x8000) != 0);
    }

    /// <summary>
    /// Decodes a front-end's SET_VRING_BASE: as <see cref="FromWire"/>, except that a packed base with 0 in
    /// bits 16-31 (DPDK 22.11 sends only the avail half) takes the used position from the avail one.
    /// </summary>
    public static VdpaVqState FromFrontEnd(uint num, bool packed) =>
        FromWire(packed && num >> 16 == 0 ? (num & 0xFFFF) | (num << 16) : num, packed);

    private static ushort Half(ushort position, bool wrapCounter) => (ushort)((position & 0x7FFF) | (wrapCounter ? 0x8000 : 0));
}
