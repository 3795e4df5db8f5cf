namespace IfcVdpa.Virtio;

/// <summary>
/// Driver-side rules of the virtio 1.x specification that a device can observe (the software IFC VF's strict
/// mode checks them). Sections are those of VIRTIO 1.2 (cs01). <see cref="SpecRules"/> has the table.
/// </summary>
public enum SpecRule
{
    None = 0,

    // ---- device status and features ----
    StatusBitCleared,
    StatusOutOfOrder,
    DriverOkWithoutFeaturesOk,
    ReinitBeforeResetDone,
    FeaturesAfterFeaturesOk,
    UnofferedFeature,
    FeatureDependency,

    // ---- common configuration ----
    AccessWidth,
    ReadOnlyWrite,
    QueueWriteWhileEnabled,
    VectorWriteWhileEnabled,
    QueueSizeInvalid,
    QueueSizeTooLarge,
    QueueEnableValue,
    QueueEnableZero,
    QueueEnableBeforeFeaturesOk,
    VectorOutOfRange,
    DeviceConfigWrite,
    MacConfigWrite,

    // ---- notifications ----
    NotifyBeforeDriverOk,
    NotifyDisabledQueue,
    NotifyUnknownQueue,
    NotifyData,

    // ---- rings ----
    AvailAhead,
    ChainTooLong,
    ChainLengthOverflow,
    DescriptorIndex,
    IndirectNotNegotiated,
    IndirectNested,
    IndirectWithNext,
    IndirectLength,
    WritableBeforeReadable,
    AvailFlags,
}

/// <summary>One rule: the counter name tools print, the specification section, what the driver did wrong.</summary>
/// <param name="Rule">The rule.</param>
/// <param name="Counter">Its counter name (`dev vstats`, `sim show`).</param>
/// <param name="Section">The VIRTIO 1.2 section(s) that state it.</param>
/// <param name="Text">The rule in a sentence.</param>
/// <param name="Extension">
/// The IFC VF itself defines this behaviour and executes it (its drivers rely on it): reported and counted,
/// never NEEDS_RESET, even in strict mode.
/// </param>
public readonly record struct SpecRuleInfo(SpecRule Rule, string Counter, string Section, string Text, bool Extension = false);

/// <summary>The rule table (the one place each rule's name, section and wording live).</summary>
public static class SpecRules
{
    private static readonly SpecRuleInfo[] Table =
    [
        new(SpecRule.None, "none", "", ""),
        new(SpecRule.StatusBitCleared, "status_bit_cleared", "2.1.1", "the driver MUST NOT clear a device status bit (only a write of 0 resets)"),
        new(SpecRule.StatusOutOfOrder, "status_out_of_order", "3.1.1", "status bits set out of the initialization order ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK"),
        new(SpecRule.DriverOkWithoutFeaturesOk, "driver_ok_without_features_ok", "3.1.1", "DRIVER_OK set before FEATURES_OK was accepted"),
        new(SpecRule.ReinitBeforeResetDone, "reinit_before_reset_done", "4.1.4.3.2", "after writing 0 to device_status the driver MUST wait for it to read 0 before reinitializing"),
        new(SpecRule.FeaturesAfterFeaturesOk, "features_after_features_ok", "3.1.1", "the driver MUST NOT accept new feature bits after FEATURES_OK"),
        new(SpecRule.UnofferedFeature, "unoffered_feature", "2.2.1", "the driver MUST NOT accept a feature the device did not offer"),
        new(SpecRule.FeatureDependency, "feature_dependency", "2.2.1, 5.1.3.1", "the driver MUST NOT accept a feature without the feature it requires"),
        new(SpecRule.AccessWidth, "access_width", "4.1.3.1", "common configuration field accessed with a width other than its own"),
        new(SpecRule.ReadOnlyWrite, "read_only_write", "4.1.4.3.2", "the driver MUST NOT write device_feature, num_queues, config_generation or queue_notify_off"),
        new(SpecRule.QueueWriteWhileEnabled, "queue_write_while_enabled", "4.1.4.3.2", "queue size or ring address written while the queue is enabled (configure before queue_enable)"),
        new(SpecRule.VectorWriteWhileEnabled, "vector_write_while_enabled", "4.1.4.3.2", "queue_msix_vector written while the queue is enabled (configure before queue_enable)"),
        new(SpecRule.QueueSizeInvalid, "queue_size_invalid", "4.1.4.3.2", "queue_size 0, or (split rings) not a power of 2"),
        new(SpecRule.QueueSizeTooLarge, "queue_size_too_large", "4.1.4.3", "queue_size above the maximum the device reported"),
        new(SpecRule.QueueEnableValue, "queue_enable_value", "4.1.4.3", "queue_enable written with a value other than 1"),
        new(SpecRule.QueueEnableZero, "queue_enable_zero", "4.1.4.3.2", "the driver MUST NOT write 0 to queue_enable (the IFC VF defines it: the queue stops and saves its ring state)", Extension: true),
        new(SpecRule.QueueEnableBeforeFeaturesOk, "queue_enable_before_features_ok", "3.1.1", "queue enabled before FEATURES_OK (virtqueue setup comes after feature negotiation)"),
        new(SpecRule.VectorOutOfRange, "vector_out_of_range", "4.1.5.1.2.2", "the driver MUST NOT map an event to a vector outside the MSI-X table"),
        new(SpecRule.DeviceConfigWrite, "device_config_write", "5.1.4, 3.1.1", "device configuration is read-only for the driver"),
        new(SpecRule.MacConfigWrite, "mac_config_write", "5.1.4", "mac is read-only for a modern driver (the IFC VF takes it, as Linux ifcvf provisions it)", Extension: true),
        new(SpecRule.NotifyBeforeDriverOk, "notify_before_driver_ok", "3.1.1", "the driver MUST NOT send available buffer notifications before DRIVER_OK"),
        new(SpecRule.NotifyDisabledQueue, "notify_disabled_queue", "4.1.5.2", "available buffer notification for a queue that is not enabled"),
        new(SpecRule.NotifyUnknownQueue, "notify_unknown_queue", "4.1.4.4", "notification written where no queue's notify address is (beyond num_queues or misaligned)"),
        new(SpecRule.NotifyData, "notify_data", "4.1.5.2", "notification that is not the 16-bit index of its queue (VIRTIO_F_NOTIFICATION_DATA is not offered)"),
        new(SpecRule.AvailAhead, "avail_ahead", "2.7.6, 2.7.6.1", "avail idx more than the queue size ahead of the used idx (or moved backwards)"),
        new(SpecRule.ChainTooLong, "chain_too_long", "2.7.5.3.1", "a driver MUST NOT create a descriptor chain longer than the queue size (a loop)"),
        new(SpecRule.ChainLengthOverflow, "chain_length_overflow", "2.7.5.2", "drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total"),
        new(SpecRule.DescriptorIndex, "descriptor_index", "2.7.5, 2.7.6", "descriptor head or next index beyond the descriptor table"),
        new(SpecRule.IndirectNotNegotiated, "indirect_not_negotiated", "2.7.5.3.1", "VIRTQ_DESC_F_INDIRECT set without VIRTIO_F_INDIRECT_DESC"),
        new(SpecRule.IndirectNested, "indirect_nested", "2.7.5.3.1", "VIRTQ_DESC_F_INDIRECT set within an indirect table"),
        new(SpecRule.IndirectWithNext, "indirect_with_next", "2.7.5.3.1", "both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT set"),
        new(SpecRule.IndirectLength, "indirect_length", "2.7.5.3", "indirect table length not a non-zero multiple of 16 (or beyond 32768 descriptors)"),
        new(SpecRule.WritableBeforeReadable, "writable_before_readable", "2.7.4.2", "the driver MUST place device-writable descriptors after device-readable ones"),
        new(SpecRule.AvailFlags, "avail_flags", "2.7.7.1", "the driver MUST set the avail ring's flags to 0 or 1 (VIRTQ_AVAIL_F_NO_INTERRUPT), and to 0 when VIRTIO_F_EVENT_IDX is negotiated"),
    ];

    /// <summary>Every rule (without <see cref="SpecRule.None"/>), in table order.</summary>
    public static IEnumerable<SpecRuleInfo> All => Table.Skip(1);

    /// <summary>Number of slots a per-rule counter array needs.</summary>
    public static int Count => Table.Length;

    public static SpecRuleInfo Get(SpecRule rule) => Table[(int)rule];

    /// <summary>The rule by its counter name, or null.</summary>
    public static SpecRuleInfo? Find(string counter)
    {
        foreach (var r in Table)
        {
            if (r.Rule != SpecRule.None && r.Counter == counter)
            {
                return r;
            }
        }
        return null;
    }

    /// <summary>
    /// Net feature dependencies (VIRTIO 1.2 §5.1.3.1) among the bits the IFC VF offers: the first bit that is
    /// accepted without the bit it requires, as (feature, required), or null.
    /// </summary>
    public static (int Feature, int Requires)? MissingNetDependency(ulong features)
    {
        ReadOnlySpan<int> needCtrlVq =
            [VirtioFeature.NET_F_CTRL_RX, VirtioFeature.NET_F_CTRL_VLAN, VirtioFeature.NET_F_GUEST_ANNOUNCE, VirtioFeature.NET_F_MQ, VirtioFeature.NET_F_CTRL_MAC_ADDR];
        if (VirtioFeature.Has(features, VirtioFeature.NET_F_CTRL_VQ))
        {
            return null;
        }
        foreach (int f in needCtrlVq)
        {
            if (VirtioFeature.Has(features, f))
            {
                return (f, VirtioFeature.NET_F_CTRL_VQ);
            }
        }
        return null;
    }
}
