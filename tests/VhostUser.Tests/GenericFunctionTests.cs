using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Pci;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>The software VF presented as a plain virtio-net function (subsystem 1af4:1100): no IFC LM block.</summary>
internal sealed class GenericVirtioFunction(IPciFunction inner) : DelegatingPciFunction(inner, ownsInner: false)
{
    public override ushort ReadConfig16(int offset) => offset switch
    {
        PciConfig.SubsystemVendorId => 0x1af4,
        PciConfig.SubsystemId => 0x1100,
        _ => base.ReadConfig16(offset),
    };

    public override uint ReadConfig32(int offset) => offset == PciConfig.SubsystemVendorId
        ? 0x1100_1af4u
        : base.ReadConfig32(offset);
}

/// <summary>
/// vhost-user on a function that cannot report ring state (the guest proof's QEMU virtio-net-pci): a stopped
/// ring's base is the used index the device published in guest memory, and teardown still resets and unmaps.
/// </summary>
public sealed class GenericFunctionTests : IDisposable
{
    private readonly SoftIfcVf _vf = new(new SoftIfcVfOptions { Address = "sim:0d.0" });
    private readonly VirtioNetEngine _engine = new(NetBackend.Loopback(), new EngineOptions { Mode = EngineMode.Event });
    private readonly GenericVirtioFunction _fn;
    private readonly IfcvfAdapter _adapter;
    private readonly GuestMemoryFixture _mem = new();
    private readonly SessionHarness _h;
    private readonly VirtioNetFrontEnd _fe;

    public GenericFunctionTests()
    {
        _vf.AttachEngine(_engine);
        _fn = new GenericVirtioFunction(_vf);
        _adapter = IfcvfAdapter.Probe(_fn, new IfcvfAdapterOptions { Name = "vdpa-generic", AcceptGenericVirtioNet = true });
        _h = new SessionHarness(_adapter);
        _fe = new VirtioNetFrontEnd(_h.Fe, _mem);
    }

    public void Dispose()
    {
        _h.Dispose();
        _fe.Dispose();
        _adapter.Dispose();
        _fn.Dispose();
        _vf.Dispose();
        _engine.Dispose();
        _mem.Dispose();
    }

    [Fact]
    public void GetVringBaseReportsTheUsedIndexFromGuestMemoryAndTeardownUnmaps()
    {
        Assert.False(_adapter.HasLiveMigrationBlock);
        _fe.Start();
        for (int i = 1; i <= 3; i++)
        {
            _fe.Send(1, VirtioNetFrontEnd.Frame(60, (byte)i));
            _fe.Receive(0, (ushort)i);
        }
        Assert.Equal(3u, _h.Fe.GetVringBase(1));
        Assert.Equal(3u, _h.Fe.GetVringBase(0));
        Assert.True(_h.Logged("reporting the used index from guest memory"), _h.LogText);
        Assert.Equal(0UL, _h.Fe.SetU64(VhostUserRequest.SET_STATUS, 0));
        Assert.Equal(0, _vf.DmaMapCount);
        Assert.False(_h.Logged("stop failed"), _h.LogText);
    }
}
