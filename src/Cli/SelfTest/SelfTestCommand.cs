using IfcVdpa.Ifcvf;
using IfcVdpa.Vfio;
using IfcVdpa.Virtio;
using IfcVdpa.VirtioNet;

namespace IfcVdpa.Cli.SelfTest;

/// <summary>
/// Hidden `ifcvf selftest vfio BDF ip A peer-ip B [peer-if IF] [serve SECONDS] [ready-file PATH] [mmap on|off]`:
/// the hardware proof run inside a test guest. Opens a vfio-pci function, brings it up through the ifcvf
/// vDPA adapter (generic virtio-net accepted explicitly) with the in-process virtio-net driver on top (rings
/// and buffers in memory DMA-mapped through VFIO type1), exchanges ARP and ICMP with the peer, answers the
/// peer's ARP/ping while serving, and removes the device. Every step prints a `VFIO-STEP` line; a failure
/// prints `VFIO-FAIL step: reason` and exits 1.
/// </summary>
public static class SelfTestCommand
{
    public static int Run(string verb, Keywords kv, TextWriter stdout)
    {
        ArgumentNullException.ThrowIfNull(kv);
        return verb switch
        {
            "vfio" => RunVfio(kv, stdout),
            "vhost-user" => VhostUserSelfTest.Run(kv, stdout),
            "regs" => RunRegs(kv, stdout),
            _ => throw new CliException($"unknown self-test \"{verb}\" (known: vfio, vhost-user, regs)"),
        };
    }

    /// <summary>`ifcvf selftest regs BDF`: the register script of issue 17 part 2 on a vfio-pci function.</summary>
    private static int RunRegs(Keywords kv, TextWriter stdout)
    {
        string bdf = kv.Positional() ?? throw new CliException("selftest regs needs a PCI address");
        kv.EnsureAllUsed();
        using var pci = VfioPciFunction.Open(PciSysfs.NormalizeAddress(bdf), new VfioOptions());
        foreach (var (name, value) in RegisterScript.Run(pci))
        {
            stdout.WriteLine($"VFIO-REG {name} {value}");
        }
        stdout.WriteLine("VFIO-REG end");
        return 0;
    }

    private static int RunVfio(Keywords kv, TextWriter stdout)
    {
        string bdf = kv.Positional() ?? throw new CliException("selftest vfio needs a PCI address");
        var plan = TrafficPlan.Parse(kv);
        bool mmap = kv.Get("mmap") switch
        {
            null or "on" => true,
            "off" => false,
            var x => throw new CliException($"mmap must be on or off, not \"{x}\""),
        };
        kv.EnsureAllUsed();
        var run = new SelfTestRun(stdout, "VFIO");
        return run.Execute(() => VfioProof(run, PciSysfs.NormalizeAddress(bdf), plan, mmap),
            e => e is VfioException or IfcvfProbeException or IfcvfDeviceException or IOException or ArgumentException or InvalidOperationException);
    }

    private static void VfioProof(SelfTestRun run, string bdf, TrafficPlan plan, bool mmap)
    {
        run.Step = "open";
        using var pci = VfioPciFunction.Open(bdf, new VfioOptions { UseMmap = mmap });
        string bars = string.Join(",", pci.Bars.Select(b => $"BAR{b.Index}:{b.Size}{(pci.MappedBars.Contains(b.Index) ? "(mmap)" : "(pread)")}"));
        run.Say("open", $"address={pci.Address} group={pci.IommuGroup} iommu=type{(pci.IommuType == 3 ? "1v2" : "1")} config={pci.ConfigSize} msix={pci.MsixVectorCount} bars={bars}");

        run.Step = "identity";
        try
        {
            IfcvfAdapter.CheckIdentity(pci, acceptGenericVirtioNet: false);
            throw new StepFailedException("a generic virtio-net function was accepted without the generic-virtio-net option");
        }
        catch (IfcvfProbeException e)
        {
            run.Say("identity", $"refused-without-option: {e.Message}");
        }

        run.Step = "probe";
        var dev = IfcvfAdapter.Probe(pci, new IfcvfAdapterOptions { Name = "vdpa0", AcceptGenericVirtioNet = true });
        try
        {
            run.Say("probe", $"name={dev.Name} ifc={dev.IsIfc} vqs={dev.NumVqs} lm={dev.HasLiveMigrationBlock} features=0x{dev.GetDeviceFeatures():x} vq-max={dev.GetVqNumMax()}");

            run.Step = "driver-ok";
            PingAgent? agent = null;
            using (var drv = new VirtioNetDriver(dev, new VirtioNetDriverOptions { QueuePairs = 1, QueueSize = 256 }))
            {
                agent = new PingAgent(f => drv.Send(f), drv.Mac, plan.Ip, plan.PeerIp);
                drv.SetFrameHandler(agent.OnFrame);
                run.Say("driver-ok", $"status=0x{dev.GetStatus():x2} irq-mode={dev.IrqMode} mac={MacAddress.Format(drv.Mac)} features=0x{drv.Features:x} link={(drv.LinkUp ? "up" : "down")} dma-maps={pci.DmaMapCount} msix-enabled={pci.EnabledMsixVectors}");

                var (peerRx, peerTx) = run.Traffic(agent, plan);
                var c = drv.Counters;
                var rxq = dev.GetVqStats(0);
                run.Say("counters", $"peer-if={plan.PeerIf ?? "-"} peer-rx+={peerRx} peer-tx+={peerTx} rx-frames={c.RxFrames} tx-frames={c.TxFrames} tx-drops={c.TxDrops} vq0-irqs={rxq.Interrupts} vq1-kicks={dev.GetKickCount(1)}");
                if (rxq.Interrupts == 0)
                {
                    throw new StepFailedException("no MSI-X interrupt arrived for the RX queue");
                }
                run.Step = "dev-del";
            }
        }
        finally
        {
            run.Step = "dev-del";
            dev.Dispose();
        }
        run.Say("dev-del", $"adapter-dma-maps={dev.DmaMapCount} function-dma-maps={pci.DmaMapCount} msix-enabled={pci.EnabledMsixVectors}");
        if (pci.DmaMapCount != 0 || pci.EnabledMsixVectors != 0)
        {
            throw new StepFailedException("dev del left DMA mappings or MSI-X vectors behind");
        }
        pci.Dispose();
        run.Say("closed", $"address={bdf}");
    }
}
