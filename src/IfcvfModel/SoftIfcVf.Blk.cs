using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel;

/// <summary>The block VF's device config (struct virtio_blk_config) beside the net VF's.</summary>
public sealed partial class SoftIfcVf : IBlkDevice
{
    /// <summary>Bytes of device config the DEVICE_CFG capability covers (net or block config).</summary>
    public int DeviceConfigLength => _options.IsBlock ? VirtioBlkConfig.Size : VirtioNetConfig.Size;

    /// <summary>Whether this is a block VF.</summary>
    public bool IsBlock => _options.IsBlock;

    private VirtioBlkConfig? _provisionedBlock;
    private bool _provisionedReadOnly;

    /// <summary>The block config the device offers now: the built one, or what <see cref="ProvisionBlock"/> set.</summary>
    public VirtioBlkConfig? BlkConfig
    {
        get { lock (_regs) { return _provisionedBlock ?? _options.Block; } }
    }

    public bool ReadOnly
    {
        get { lock (_regs) { return _options.IsBlock && (_options.ReadOnly || _provisionedReadOnly); } }
    }

    /// <summary>
    /// The simulator's management side of `vdpa dev add` for a block VF (what vdpa_sim_blk does with its
    /// provisioning): the device offers <paramref name="config"/> instead of the config it was built with, and
    /// <paramref name="readOnly"/> adds VIRTIO_BLK_F_RO (the device then refuses every write). The capacity may
    /// only shrink, blk_size only grow (a power of two up to 4096), the queue count only shrink (the BARs keep
    /// the built shape); a VF built read-only stays read-only. Null restores the built config. Only while the
    /// device is reset (no driver), so a running datapath never sees its config change.
    /// </summary>
    /// <exception cref="ArgumentException">Not a block VF, or the config is not one this VF can offer.</exception>
    /// <exception cref="InvalidOperationException">The device is not reset.</exception>
    public void ProvisionBlock(VirtioBlkConfig? config, bool readOnly)
    {
        var built = _options.Block ?? throw new ArgumentException($"{Address} is not a block VF");
        if (config is not null)
        {
            config.Validate();
            if (config.Capacity > built.Capacity)
            {
                throw new ArgumentException($"capacity {config.Capacity} sectors exceeds the {built.Capacity} sectors of {Address}'s backend");
            }
            if (config.BlkSize < built.BlkSize)
            {
                throw new ArgumentException($"blk_size {config.BlkSize} is below {Address}'s {built.BlkSize}");
            }
            if (config.NumQueues > built.NumQueues)
            {
                throw new ArgumentException($"{config.NumQueues} queues exceed {Address}'s {built.NumQueues}");
            }
        }
        lock (_regs)
        {
            if (_status != 0)
            {
                throw new InvalidOperationException($"{Address}: provision the block config while the device is reset");
            }
            _provisionedBlock = config;
            _provisionedReadOnly = config is not null && readOnly;
            var now = config ?? built;
            ulong f = _options.EffectiveFeatures & ~((1UL << VirtioBlk.F_RO) | (1UL << VirtioBlk.F_MQ));
            f |= _options.ReadOnly || _provisionedReadOnly ? 1UL << VirtioBlk.F_RO : 0;
            f |= now.NumQueues > 1 ? 1UL << VirtioBlk.F_MQ : 0;
            DeviceFeatures = f;
        }
    }

    /// <summary>
    /// Queues the common config offers (num_queues; a higher queue_select reads as absent, size 0): a block
    /// VF provisioned with fewer queues offers only those, as its config's num_queues says, while the BARs
    /// keep the built shape (<see cref="NumQueues"/> doorbells). Caller holds the register lock.
    /// </summary>
    private int OfferedQueues => _provisionedBlock is { } p ? Math.Min(p.NumQueues, NumQueues) : NumQueues;

    private void FillDeviceConfig(Span<byte> cfg)
    {
        if ((_provisionedBlock ?? _options.Block) is { } b)
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
