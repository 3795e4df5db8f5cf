using IfcVdpa.IfcvfModel.Backends;
using Xunit.Abstractions;

namespace IfcVdpa.Datapath.Tests;

public class DiagTmp(ITestOutputHelper output)
{
    [Fact]
    public void Diag()
    {
        using var nic = new TestNic(NetBackend.Loopback(), null, new IfcvfModel.SoftIfcVfOptions { DeviceFeatures = IfcvfModel.SoftIfcVfOptions.DefaultFeatures | Virtio.VirtioFeature.Bit(Virtio.VirtioFeature.F_RING_PACKED) });
        nic.Start(TestNic.BaseFeatures | LoopbackTests.Mrg | Virtio.VirtioFeature.Bit(Virtio.VirtioFeature.F_RING_PACKED), queues: 2, startIndex: 0x8000);
        var f = TestNic.Frame(700, 3);
        for (int round = 0; round < 200; round++)
        {
            bool rxOn = true;
            if (rxOn) nic.PostRx(0, 4, len: 512);
            nic.Send(1, f, kick: false);
            long before = GC.GetAllocatedBytesForCurrentThread();
            nic.Engine.PollOnce();
            long d1 = GC.GetAllocatedBytesForCurrentThread() - before;
            before = GC.GetAllocatedBytesForCurrentThread();
            nic.Engine.PollOnce();
            long d2 = GC.GetAllocatedBytesForCurrentThread() - before;
            if (d1 + d2 != 0) output.WriteLine($"round {round} rx={rxOn} alloc={d1} idle={d2}");
            nic.Queues[1].ReapTx();
            while (nic.TryReceive(0, out _, out _, out _)) { }
        }
    }
}
