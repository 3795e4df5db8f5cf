using IfcVdpa.Interop.Native;

namespace IfcVdpa.Vfio.Tests;

/// <summary>When a BAR region may be handed to a peer for mmap (host notifiers): the decision without hardware.</summary>
public sealed class BarMappingTests
{
    private const uint Rw = VfioAbi.VFIO_REGION_INFO_FLAG_READ | VfioAbi.VFIO_REGION_INFO_FLAG_WRITE;
    private const uint Mmap = VfioAbi.VFIO_REGION_INFO_FLAG_MMAP;
    private const uint Caps = VfioAbi.VFIO_REGION_INFO_FLAG_CAPS;

    [Fact]
    public void A_whole_page_mmappable_region_may_be_mapped_by_a_peer()
    {
        Assert.Null(VfioPciFunction.PeerMappingRefusal(Rw | Mmap, 0x4000, mappedWholeHere: false));
        Assert.Null(VfioPciFunction.PeerMappingRefusal(Rw | Mmap, 0x4000, mappedWholeHere: true));
    }

    [Fact]
    public void A_region_without_the_mmap_flag_may_not() =>
        Assert.Contains("does not allow mmap", VfioPciFunction.PeerMappingRefusal(Rw, 0x4000, mappedWholeHere: false), StringComparison.Ordinal);

    [Fact]
    public void A_region_of_partial_pages_may_not()
    {
        Assert.Contains("not whole 4096-byte pages", VfioPciFunction.PeerMappingRefusal(Rw | Mmap, 0x800, mappedWholeHere: false), StringComparison.Ordinal);
        Assert.NotNull(VfioPciFunction.PeerMappingRefusal(Rw | Mmap, 0, mappedWholeHere: false));
    }

    [Fact]
    public void A_region_with_capabilities_counts_only_when_it_could_be_mapped_whole()
    {
        // Capabilities may restrict mmap to sparse areas (e.g. around the MSI-X table); they are not parsed.
        Assert.Contains("sparse", VfioPciFunction.PeerMappingRefusal(Rw | Mmap | Caps, 0x4000, mappedWholeHere: false), StringComparison.Ordinal);
        Assert.Null(VfioPciFunction.PeerMappingRefusal(Rw | Mmap | Caps, 0x4000, mappedWholeHere: true));
    }
}
