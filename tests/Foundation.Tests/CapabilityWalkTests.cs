using IfcVdpa.IfcvfModel;
using IfcVdpa.Ifcvf;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using L = IfcVdpa.IfcvfModel.IfcvfLayout;

namespace IfcVdpa.Foundation.Tests;

/// <summary>The capability walk against hostile config spaces: every case is a clear error, never a hang.</summary>
public class CapabilityWalkTests
{
    private static PatchedConfigFunction Bad() => new(new SoftIfcVf());

    private static string ProbeError(IPciFunction f)
    {
        var task = Task.Run(() => Assert.Throws<IfcvfProbeException>(() => IfcvfHw.Init(f)));
        Assert.True(task.Wait(TimeSpan.FromSeconds(10)), "capability walk did not terminate");
        return task.Result.Message;
    }

    [Fact]
    public void ListThatLoopsIsRejected()
    {
        using var f = Bad().Set8(L.CapDevice + 1, L.CapCommon); // last cap points back to an earlier one
        Assert.Contains("loops", ProbeError(f));
    }

    [Fact]
    public void ListThatPointsToItselfIsRejected()
    {
        using var f = Bad().Set8(L.CapMsix + 1, L.CapMsix);
        Assert.Contains("loops", ProbeError(f));
    }

    [Theory]
    [InlineData(0x10)] // inside the standard header
    [InlineData(0xFE)] // too close to the end of config space
    public void PointerOutsideConfigSpaceIsRejected(byte pointer)
    {
        using var f = Bad().Set8(PciConfig.CapabilitiesPointer, pointer);
        Assert.Contains("outside config space", ProbeError(f));
    }

    [Fact]
    public void VendorCapabilityRunningOffTheEndIsRejected()
    {
        using var f = Bad().Set8(L.CapDevice + 1, 0xF8).Set32(0xF8, 0x0000_0009);
        Assert.Contains("beyond config space", ProbeError(f));
    }

    [Fact]
    public void BarIndexOfSixOrMoreIsRejectedByName()
    {
        using var f = Bad().Set8(L.CapNotify + VirtioPci.CapBar, 7);
        string m = ProbeError(f);
        Assert.Contains("notify", m);
        Assert.Contains("BAR index 7", m);
    }

    [Fact]
    public void RegionOutsideItsBarIsRejected()
    {
        using var f = Bad().Set32(L.CapDevice + VirtioPci.CapOffset, (uint)L.Bar0Size - 8);
        string m = ProbeError(f);
        Assert.Contains("device", m);
        Assert.Contains("exceeds BAR0", m);
    }

    [Fact]
    public void RegionInAnUnimplementedBarIsRejected()
    {
        using var f = Bad().Set8(L.CapIsr + VirtioPci.CapBar, 1);
        Assert.Contains("BAR1 is not implemented", ProbeError(f));
    }

    [Fact]
    public void MissingCapabilityIsNamed()
    {
        // Skip the ISR capability: notify's next pointer jumps over it.
        using var f = Bad().Set8(L.CapNotify + 1, L.CapDevice);
        string m = ProbeError(f);
        Assert.Contains("incomplete PCI capabilities", m);
        Assert.Contains("ISR", m);
    }

    [Fact]
    public void NoCapabilityListAtAllIsRejected()
    {
        using var f = Bad().Set8(PciConfig.Status, 0);
        Assert.Contains("no capability list", ProbeError(f));
    }

    [Fact]
    public void LaterCapabilityOfTheSameTypeWins()
    {
        // Make the ISR cap a second device-config cap pointing elsewhere: device config moves, ISR goes missing.
        using var f = Bad().Set8(L.CapIsr + VirtioPci.CapCfgType, VirtioPci.CAP_DEVICE_CFG);
        Assert.Contains("ISR", ProbeError(f));
    }
}
