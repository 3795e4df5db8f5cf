using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The ring position as SET_VRING_BASE / GET_VRING_BASE carry it (vhost_vring_state.num), decoded to and from
/// the explicit <see cref="VdpaVqState"/>: the only place that knows vhost-user's encoding.
/// <list type="bullet">
/// <item>Split ring: the next avail index, 16 bits (the used index is not carried: the device resumes with
/// used = avail, or from used->idx in guest memory).</item>
/// <item>Packed ring: bits 0-14 the avail position, bit 15 its wrap counter; bits 16-30 the used position, bit 31
/// its wrap counter. A front-end that sends 0 in the upper half (DPDK 22.11) means "used = avail".</item>
/// </list>
/// </summary>
public static class VringBase
{
    /// <summary>Decodes a SET_VRING_BASE value; null when it does not fit the ring format (a split base above 16 bits).</summary>
    public static VdpaVqState? Decode(uint num, bool packed)
    {
        if (!packed)
        {
            return num > 0xFFFF ? null : VdpaVqState.Split((ushort)num, (ushort)num);
        }
        uint availHalf = num & 0xFFFF;
        uint usedHalf = num >> 16 == 0 ? availHalf : num >> 16;
        return VdpaVqState.Packed(
            (ushort)(availHalf & 0x7FFF), (availHalf & 0x8000) != 0,
            (ushort)(usedHalf & 0x7FFF), (usedHalf & 0x8000) != 0);
    }

    /// <summary>Encodes a device's state for GET_VRING_BASE (or a front-end's SET_VRING_BASE).</summary>
    public static uint Encode(VdpaVqState state, bool packed)
    {
        if (!packed)
        {
            return state.AvailIndex;
        }
        uint avail = (uint)(state.AvailIndex & 0x7FFF) | (state.AvailWrapCounter ? 0x8000u : 0);
        uint used = (uint)(state.UsedIndex & 0x7FFF) | (state.UsedWrapCounter ? 0x8000u : 0);
        return avail | (used << 16);
    }
}
