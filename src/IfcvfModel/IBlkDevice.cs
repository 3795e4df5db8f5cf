using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel;

/// <summary>The virtio-blk device side a block personality needs beyond <see cref="IVirtqueueDevice"/>: its config space.</summary>
public interface IBlkDevice : IVirtqueueDevice
{
    /// <summary>The block config the device offers (null: the device is not a block device).</summary>
    VirtioBlkConfig? BlkConfig { get; }

    /// <summary>Whether the device offers VIRTIO_BLK_F_RO (then every write is refused).</summary>
    bool ReadOnly { get; }
}
