using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel;

/// <summary>The block VF's device config (struct virtio_blk_config) beside the net VF's.</summary>
public sealed partial class SoftIfcVf : IBlkDevice
{
    /// <summary>Bytes of device config the DEVICE_CFG capability covers (net or block config).</summary>
    public int DeviceConfigLength => _options.IsBlock ? VirtioBlkConfig.Size : VirtioNetConfig.Size;

    /// <summary>Whether this is a block VF.</summary>
    public bool IsBlock => _options.IsBlock;

    public VirtioBlkConfig? BlkConfig => _options.Block;

    public bool ReadOnly => _options.IsBlock && _options.ReadOnly;

    private void FillDeviceConfig(Span<byte> cfg)
    {
        if (_options.Block is { } b)
        {
            b.Write(cfg);
        }
        else
        {
            FillNetConfig(cfg);
        }
    }

    /// <summary>The whole device config (net or block) as the driver would read it.</summary>
    public byte[] ReadDeviceConfigSnapshot()
    {
        lock (_regs)
        {
            var b = new byte[DeviceConfigLength];
            FillDeviceConfig(b);
            return b;
        }
    }
}
