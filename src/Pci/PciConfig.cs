namespace IfcVdpa.Pci;

/// <summary>Standard PCI configuration header offsets and capability IDs (PCI Local Bus 3.0).</summary>
public static class PciConfig
{
    public const int VendorId = 0x00;
    public const int DeviceId = 0x02;
    public const int Command = 0x04;
    public const int Status = 0x06;
    public const int RevisionId = 0x08;
    public const int ClassProgIf = 0x09;
    public const int ClassCode = 0x0A; // subclass at 0x0A, base class at 0x0B
    public const int HeaderType = 0x0E;
    public const int Bar0 = 0x10;
    public const int SubsystemVendorId = 0x2C;
    public const int SubsystemId = 0x2E;
    public const int CapabilitiesPointer = 0x34;
    public const int InterruptLine = 0x3C;
    public const int InterruptPin = 0x3D;

    public const ushort CommandMemory = 0x0002;
    public const ushort CommandBusMaster = 0x0004;
    public const ushort CommandIntxDisable = 0x0400;
    public const ushort StatusCapList = 0x0010;

    public const byte CapIdPm = 0x01;
    public const byte CapIdVendor = 0x09;
    public const byte CapIdExpress = 0x10;
    public const byte CapIdMsix = 0x11;

    // MSI-X capability layout
    public const int MsixMessageControl = 2;
    public const int MsixTable = 4;
    public const int MsixPba = 8;
    public const ushort MsixEnable = 0x8000;
    public const ushort MsixFunctionMask = 0x4000;
    public const ushort MsixTableSizeMask = 0x07FF;

    public const uint BarMem64 = 0x4;
    public const uint BarPrefetch = 0x8;
}
