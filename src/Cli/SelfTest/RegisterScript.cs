using IfcVdpa.Ifcvf;
using IfcVdpa.Pci;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioPci;

namespace IfcVdpa.Cli.SelfTest;

/// <summary>
/// Issue 17 part 2: one scripted sequence of virtio 1.x common-config operations (feature windows, status
/// transitions including refused ones, queue size/vector/enable rules, config generation, MSI-X vector
/// acceptance, reset) whose read-backs are compared between QEMU's virtio-net-pci (through VFIO, in the test
/// guest: `ifcvf selftest regs BDF`) and the software IFC VF (in the test host). Each result is one
/// `name value` line; the differences and their reasons are in docs/fidelity.md.
/// </summary>
public static class RegisterScript
{
    public static List<(string Name, string Value)> Run(IPciFunction pci)
    {
        ArgumentNullException.ThrowIfNull(pci);
        var caps = CapabilityWalk.Run(pci);
        int bar = caps.Common.Bar;
        ulong c = caps.Common.Offset;
        var r = new List<(string, string)>();
        void Say(string name, ulong v) => r.Add((name, $"0x{v:x}"));
        byte Status() => pci.ReadBar8(bar, c + DeviceStatus);
        void SetStatus(byte s) => pci.WriteBar8(bar, c + DeviceStatus, s);
        void Reset()
        {
            SetStatus(0);
            for (int i = 0; i < 1000 && Status() != 0; i++)
            {
                Thread.Sleep(1); // VIRTIO 1.2 §4.1.4.3.2: the driver waits for status to read 0
            }
        }
        void DriverFeatures(ulong f)
        {
            pci.WriteBar32(bar, c + DriverFeatureSelect, 0);
            pci.WriteBar32(bar, c + DriverFeature, (uint)f);
            pci.WriteBar32(bar, c + DriverFeatureSelect, 1);
            pci.WriteBar32(bar, c + DriverFeature, (uint)(f >> 32));
        }
        ulong Feat(int sel)
        {
            pci.WriteBar32(bar, c + DeviceFeatureSelect, (uint)sel);
            return pci.ReadBar32(bar, c + DeviceFeature);
        }
        ushort Q16(int q, int off)
        {
            pci.WriteBar16(bar, c + QueueSelect, (ushort)q);
            return pci.ReadBar16(bar, c + (ulong)off);
        }
        void W16(int q, int off, ushort v)
        {
            pci.WriteBar16(bar, c + QueueSelect, (ushort)q);
            pci.WriteBar16(bar, c + (ulong)off, v);
        }
        const byte AckDriver = VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER;
        ulong modern = VirtioFeature.Bit(VirtioFeature.F_VERSION_1) | VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM);

        Reset();
        Say("reset.status", Status());
        ulong f0 = Feat(0), f1 = Feat(1);
        Say("features.version_1", (f1 >> 0) & 1);
        Say("features.access_platform", (f1 >> 1) & 1);
        Say("features.window2", Feat(2));
        Say("features.select_readback", pci.ReadBar32(bar, c + DeviceFeatureSelect));
        ulong device = f0 | (f1 << 32);
        ushort nq = pci.ReadBar16(bar, c + VirtioPci.NumQueues);
        Say("num_queues.at_least_3", nq >= 3 ? 1UL : 0);

        SetStatus(VirtioStatus.ACKNOWLEDGE);
        Say("status.ack", Status());
        SetStatus(AckDriver);
        Say("status.ack_driver", Status());
        DriverFeatures(modern);
        pci.WriteBar32(bar, c + DriverFeatureSelect, 1);
        Say("driver_features.hi_readback", pci.ReadBar32(bar, c + DriverFeature));
        // refused: DRIVER_OK before FEATURES_OK (VIRTIO 1.2 §3.1.1)
        SetStatus(AckDriver | VirtioStatus.DRIVER_OK);
        Say("status.driver_ok_without_features_ok", Status());
        Reset();
        Say("status.after_reset", Status());

        // refused: FEATURES_OK with a feature the device does not offer (§2.2.1: the device leaves FEATURES_OK clear)
        SetStatus(AckDriver);
        int unoffered = Enumerable.Range(0, 64).First(b => b != VirtioFeature.F_LOG_ALL && b != VirtioFeature.F_PROTOCOL_FEATURES && (device & (1UL << b)) == 0 && b is > 23 and < 40);
        DriverFeatures(modern | (1UL << unoffered));
        SetStatus(AckDriver | VirtioStatus.FEATURES_OK);
        Say("status.features_ok_with_unoffered_feature", Status());
        Reset();

        // refused: FEATURES_OK without VERSION_1 (a modern-only device)
        SetStatus(AckDriver);
        DriverFeatures(VirtioFeature.Bit(VirtioFeature.F_ACCESS_PLATFORM));
        SetStatus(AckDriver | VirtioStatus.FEATURES_OK);
        Say("status.features_ok_without_version_1", Status());
        Reset();

        // accepted negotiation, then features written after FEATURES_OK (§3.1.1: not allowed)
        SetStatus(AckDriver);
        DriverFeatures(modern);
        SetStatus(AckDriver | VirtioStatus.FEATURES_OK);
        Say("status.features_ok", Status());
        pci.WriteBar32(bar, c + DriverFeatureSelect, 0);
        pci.WriteBar32(bar, c + DriverFeature, 1u << VirtioFeature.NET_F_MAC);
        Say("driver_features.lo_after_features_ok", pci.ReadBar32(bar, c + DriverFeature));
        // a driver may not clear status bits except by reset
        SetStatus(VirtioStatus.ACKNOWLEDGE);
        Say("status.clear_bits_without_reset", Status());

        // queue 0 rules (§4.1.4.3)
        ushort max = Q16(0, QueueSize);
        Say("queue0.size_nonzero", max != 0 ? 1UL : 0);
        W16(0, QueueSize, 64);
        Say("queue0.size_64", Q16(0, QueueSize));
        W16(0, QueueSize, 0);
        Say("queue0.size_write_0", Q16(0, QueueSize));
        W16(0, QueueSize, 64);
        Say("queue0.enable_initial", Q16(0, QueueEnable));
        Say("queue0.vector_initial", Q16(0, QueueMsixVector));
        W16(0, QueueMsixVector, 1);
        Say("queue0.vector_1", Q16(0, QueueMsixVector));
        W16(0, QueueMsixVector, (ushort)(pci.MsixVectorCount + 5));
        Say("queue0.vector_beyond_table", Q16(0, QueueMsixVector));
        W16(0, QueueMsixVector, 1);
        pci.WriteBar16(bar, c + MsixConfig, 0);
        Say("msix_config.0", pci.ReadBar16(bar, c + MsixConfig));
        pci.WriteBar16(bar, c + MsixConfig, (ushort)(pci.MsixVectorCount + 5));
        Say("msix_config.beyond_table", pci.ReadBar16(bar, c + MsixConfig));
        Say("queue0.notify_off", Q16(0, QueueNotifyOff));
        Say("queue1.notify_off", Q16(1, QueueNotifyOff));
        pci.WriteBar16(bar, c + QueueSelect, 0);
        pci.WriteBar32(bar, c + QueueDescLo, 0x1234_5000);
        pci.WriteBar32(bar, c + QueueDescHi, 0x1);
        Say("queue0.desc_readback", pci.ReadBar32(bar, c + QueueDescLo) | ((ulong)pci.ReadBar32(bar, c + QueueDescHi) << 32));
        pci.WriteBar32(bar, c + QueueAvailLo, 0x1234_6000);
        pci.WriteBar32(bar, c + QueueAvailHi, 0x1);
        pci.WriteBar32(bar, c + QueueUsedLo, 0x1234_7000);
        pci.WriteBar32(bar, c + QueueUsedHi, 0x1);
        W16(0, QueueEnable, 1);
        Say("queue0.enable", Q16(0, QueueEnable));
        W16(0, QueueSize, 32); // after enable (§4.1.4.3.2: the driver must not)
        Say("queue0.size_write_after_enable", Q16(0, QueueSize));
        Say("queue_select.beyond.size", Q16(nq, QueueSize));
        pci.WriteBar16(bar, c + QueueSelect, 0);

        // config generation is stable while nothing changes (§4.1.4.3.1)
        byte g0 = pci.ReadBar8(bar, c + ConfigGeneration);
        byte g1 = pci.ReadBar8(bar, c + ConfigGeneration);
        Say("config_generation.stable", g0 == g1 ? 1UL : 0);

        // reset clears it all (§2.4)
        Reset();
        Say("reset2.status", Status());
        Say("reset2.queue0.enable", Q16(0, QueueEnable));
        Say("reset2.queue0.size_is_max", Q16(0, QueueSize) == max ? 1UL : 0);
        Say("reset2.queue0.vector", Q16(0, QueueMsixVector));
        Say("reset2.msix_config", pci.ReadBar16(bar, c + MsixConfig));
        pci.WriteBar16(bar, c + QueueSelect, 0);
        Say("reset2.queue0.desc", pci.ReadBar32(bar, c + QueueDescLo) | ((ulong)pci.ReadBar32(bar, c + QueueDescHi) << 32));
        pci.WriteBar32(bar, c + DriverFeatureSelect, 1);
        Say("reset2.driver_features_hi", pci.ReadBar32(bar, c + DriverFeature));
        return r;
    }
}
