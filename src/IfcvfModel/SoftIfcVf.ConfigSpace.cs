using System.Buffers.Binary;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using L = IfcVdpa.IfcvfModel.IfcvfLayout;

namespace IfcVdpa.IfcvfModel;

/// <summary>PCI configuration space: identity, BAR registers (with sizing), capability list, MSI-X control.</summary>
public sealed partial class SoftIfcVf
{
    private readonly byte[] _cfg = new byte[256];
    private readonly ulong[] _barAddress = new ulong[6];

    public int ConfigSize => _cfg.Length;

    private void BuildConfigSpace()
    {
        var c = _cfg.AsSpan();
        bool t = _options.Transitional;
        var id = _options.IsBlock
            ? (t ? IfcPciIds.C5000XBlock : IfcPciIds.C5000XBlockModern)
            : (t ? IfcPciIds.C5000XNet : IfcPciIds.N3000Net);
        W16(c, PciConfig.VendorId, id.Vendor);
        W16(c, PciConfig.DeviceId, id.Device);
        W16(c, PciConfig.Status, PciConfig.StatusCapList);
        c[PciConfig.RevisionId] = 0x01;
        c[PciConfig.ClassCode] = 0x00; // Ethernet controller / SCSI storage controller
        c[PciConfig.ClassCode + 1] = _options.IsBlock ? (byte)0x01 : (byte)0x02; // mass storage / network
        W16(c, PciConfig.SubsystemVendorId, id.SubsystemVendor);
        W16(c, PciConfig.SubsystemId, id.SubsystemDevice);
        c[PciConfig.CapabilitiesPointer] = L.CapMsix;
        foreach (var b in _bars)
        {
            _barAddress[b.Index] = b.Address;
        }

        // MSI-X: table and PBA in BAR0.
        c[L.CapMsix] = PciConfig.CapIdMsix;
        c[L.CapMsix + 1] = L.CapCommon;
        W16(c, L.CapMsix + PciConfig.MsixMessageControl, (ushort)(MsixVectorCount - 1));
        W32(c, L.CapMsix + PciConfig.MsixTable, (uint)L.MsixTableOffset | L.CommonBar);
        W32(c, L.CapMsix + PciConfig.MsixPba, (uint)L.MsixPbaOffset | L.CommonBar);

        VirtioCap(c, L.CapCommon, L.CapNotify, VirtioPci.CAP_COMMON_CFG, L.CommonBar, L.CommonOffset, VirtioPci.CommonCfgSize, 16);
        VirtioCap(c, L.CapNotify, L.CapIsr, VirtioPci.CAP_NOTIFY_CFG, L.NotifyBar, 0, (uint)_bars[1].Size, 20);
        W32(c, L.CapNotify + VirtioPci.NotifyOffMultiplier, L.NotifyOffMultiplier);
        VirtioCap(c, L.CapIsr, L.CapDevice, VirtioPci.CAP_ISR_CFG, L.CommonBar, L.IsrOffset, L.IsrLength, 16);
        VirtioCap(c, L.CapDevice, 0, VirtioPci.CAP_DEVICE_CFG, L.CommonBar, L.DeviceCfgOffset, (uint)DeviceConfigLength, 16);
    }

    private static void VirtioCap(Span<byte> c, int at, int next, byte type, int bar, ulong offset, uint length, byte capLen)
    {
        c[at + VirtioPci.CapVndr] = PciConfig.CapIdVendor;
        c[at + VirtioPci.CapNext] = (byte)next;
        c[at + VirtioPci.CapLen] = capLen;
        c[at + VirtioPci.CapCfgType] = type;
        c[at + VirtioPci.CapBar] = (byte)bar;
        W32(c, at + VirtioPci.CapOffset, (uint)offset);
        W32(c, at + VirtioPci.CapLength, length);
    }

    private static void W16(Span<byte> c, int off, ushort v) => BinaryPrimitives.WriteUInt16LittleEndian(c[off..], v);

    private static void W32(Span<byte> c, int off, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(c[off..], v);

    public byte ReadConfig8(int offset) => (byte)ReadConfig(offset, 1);

    public ushort ReadConfig16(int offset) => (ushort)ReadConfig(offset, 2);

    public uint ReadConfig32(int offset) => ReadConfig(offset, 4);

    public void WriteConfig8(int offset, byte value) => WriteConfig(offset, 1, value);

    public void WriteConfig16(int offset, ushort value) => WriteConfig(offset, 2, value);

    public void WriteConfig32(int offset, uint value) => WriteConfig(offset, 4, value);

    private static void CheckConfigAccess(int offset, int size)
    {
        if (offset < 0 || offset + size > 256 || offset % size != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"config access of {size} bytes at 0x{offset:x}");
        }
    }

    private uint ReadConfig(int offset, int size)
    {
        CheckConfigAccess(offset, size);
        lock (_regs)
        {
            Span<byte> view = stackalloc byte[256];
            _cfg.CopyTo(view);
            for (int i = 0; i < 6; i++)
            {
                W32(view, PciConfig.Bar0 + (i * 4), BarRegister(i));
            }
            ushort mc = (ushort)((MsixVectorCount - 1) | (_msixEnabled ? PciConfig.MsixEnable : 0) | (_msixFunctionMask ? PciConfig.MsixFunctionMask : 0));
            W16(view, L.CapMsix + PciConfig.MsixMessageControl, mc);
            return Extract(view, offset, size);
        }
    }

    private uint BarRegister(int reg)
    {
        foreach (var b in _bars)
        {
            if (b.Index == reg)
            {
                return (uint)(_barAddress[reg] & 0xFFFF_FFF0) | PciConfig.BarMem64 | (b.Prefetchable ? PciConfig.BarPrefetch : 0);
            }
            if (b.Index + 1 == reg && b.Is64Bit)
            {
                return (uint)(_barAddress[b.Index] >> 32);
            }
        }
        return 0; // unimplemented BAR: hard-wired to zero
    }

    private void WriteConfig(int offset, int size, uint value)
    {
        CheckConfigAccess(offset, size);
        lock (_regs)
        {
            for (int i = 0; i < size; i++)
            {
                WriteConfigByte(offset + i, (byte)(value >> (8 * i)));
            }
            if (offset <= L.CapMsix + 3 && offset + size > L.CapMsix + 3)
            {
                DeliverPending();
            }
        }
    }

    private void WriteConfigByte(int at, byte v)
    {
        if (at is PciConfig.Command or PciConfig.Command + 1)
        {
            ushort cmd = (ushort)(_cfg[PciConfig.Command] | (_cfg[PciConfig.Command + 1] << 8));
            ushort mask = PciConfig.CommandMemory | PciConfig.CommandBusMaster | PciConfig.CommandIntxDisable;
            int shift = (at - PciConfig.Command) * 8;
            cmd = (ushort)((cmd & ~(0xFF << shift)) | (v << shift));
            W16(_cfg, PciConfig.Command, (ushort)(cmd & mask));
            return;
        }
        if (at >= PciConfig.Bar0 && at < PciConfig.Bar0 + 24)
        {
            WriteBarRegisterByte((at - PciConfig.Bar0) / 4, (at - PciConfig.Bar0) % 4, v);
            return;
        }
        if (at == L.CapMsix + PciConfig.MsixMessageControl + 1)
        {
            _msixFunctionMask = (v & 0x40) != 0;
            _msixEnabled = (v & 0x80) != 0;
            return;
        }
        // everything else is read-only
    }

    private void WriteBarRegisterByte(int reg, int byteIndex, byte v)
    {
        foreach (var b in _bars)
        {
            int shift = byteIndex * 8;
            if (b.Index == reg)
            {
                ulong lo = _barAddress[reg] & 0xFFFF_FFFF;
                lo = (lo & ~(0xFFUL << shift)) | ((ulong)v << shift);
                // Address bits below the BAR size are hard-wired to zero: that is how sizing works.
                lo &= ~(b.Size - 1) & 0xFFFF_FFF0;
                _barAddress[reg] = (_barAddress[reg] & 0xFFFF_FFFF_0000_0000UL) | lo;
                return;
            }
            if (b.Index + 1 == reg && b.Is64Bit)
            {
                ulong hi = _barAddress[b.Index] >> 32;
                hi = (hi & ~(0xFFUL << shift)) | ((ulong)v << shift);
                hi &= ~((b.Size - 1) >> 32);
                _barAddress[b.Index] = (_barAddress[b.Index] & 0xFFFF_FFFFUL) | (hi << 32);
                return;
            }
        }
    }
}
