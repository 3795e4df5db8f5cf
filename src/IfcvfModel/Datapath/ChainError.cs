using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>What a chain walker does with each buffer of a chain; returning an error stops the walk.</summary>
internal interface IChainVisitor
{
    ChainError Visit(ulong addr, uint len, bool writable);
}

/// <summary>Why a descriptor chain was refused (each a ring error: NEEDS_RESET).</summary>
internal enum ChainError
{
    None = 0,
    BadHead,
    BadNext,
    Loop,
    BadAddress,
    WritableInDriverBuffer,
    ReadOnlyInDeviceBuffer,
    IndirectNotNegotiated,
    NestedIndirect,
    IndirectWithNext,
    BadIndirectLength,
    LengthOverflow,
    TooLarge,
    TooManySegments,
    ReadAfterWrite,
}

internal static class ChainErrors
{
    /// <summary>The virtio rule a ring error breaks, or <see cref="SpecRule.None"/> for the device's own limits (DMA map, frame size, segments).</summary>
    public static SpecRule Rule(ChainError e) => e switch
    {
        ChainError.BadHead or ChainError.BadNext => SpecRule.DescriptorIndex,
        ChainError.Loop => SpecRule.ChainTooLong,
        ChainError.IndirectNotNegotiated => SpecRule.IndirectNotNegotiated,
        ChainError.NestedIndirect => SpecRule.IndirectNested,
        ChainError.IndirectWithNext => SpecRule.IndirectWithNext,
        ChainError.BadIndirectLength => SpecRule.IndirectLength,
        ChainError.LengthOverflow => SpecRule.ChainLengthOverflow,
        ChainError.ReadAfterWrite => SpecRule.WritableBeforeReadable,
        _ => SpecRule.None,
    };

    public static string Describe(ChainError e) => e switch
    {
        ChainError.BadHead => "descriptor head index beyond the queue size",
        ChainError.BadNext => "descriptor next index beyond the table",
        ChainError.Loop => "descriptor chain longer than its table (loop)",
        ChainError.BadAddress => "descriptor buffer outside the DMA map (or not writable)",
        ChainError.WritableInDriverBuffer => "device-writable descriptor in a TX chain",
        ChainError.ReadOnlyInDeviceBuffer => "device-readable descriptor in an RX chain",
        ChainError.IndirectNotNegotiated => "INDIRECT descriptor without VIRTIO_F_RING_INDIRECT_DESC",
        ChainError.NestedIndirect => "INDIRECT descriptor inside an indirect table",
        ChainError.IndirectWithNext => "descriptor with both INDIRECT and NEXT",
        ChainError.BadIndirectLength => "indirect table length not a non-zero multiple of 16 (or too long)",
        ChainError.LengthOverflow => "descriptor chain length overflows 32 bits",
        ChainError.TooLarge => "TX chain larger than the largest frame (64 KiB + header)",
        ChainError.TooManySegments => "descriptor chain with more segments than the device handles",
        ChainError.ReadAfterWrite => "device-readable descriptor after a device-writable one",
        _ => "unknown ring error",
    };
}
