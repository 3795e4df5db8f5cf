using IfcVdpa.Daemon;

namespace IfcVdpa.VirtioNet.Tests;

/// <summary>`dev attach NAME virtio tap T` through the daemon's registry: one consumer per device.</summary>
public sealed class DaemonAttachTests
{
    [Fact]
    public void PairOfSimVfsAttachedAsHostNicsPingAcrossNamespaces()
    {
        using var reg = new DeviceRegistry(new DaemonLog(TextWriter.Null));
        var vfs = reg.AddSoftwareVfs(2, null, 1, backend: "pair");
        reg.AddDevice(vfs[0].Name, new VdpaProvisioning("va"));
        reg.AddDevice(vfs[1].Name, new VdpaProvisioning("vb"));
        string ta = Host.Unique("daA"), tb = Host.Unique("daB");
        reg.AttachConsumer("va", "virtio", $"tap {ta}", d => new VirtioNetTap(d, ta));
        reg.AttachConsumer("vb", "virtio", $"tap {tb}", d => new VirtioNetTap(d, tb));
        using var nsA = new Host.Netns(ta + "n");
        using var nsB = new Host.Netns(tb + "n");
        nsA.Adopt(ta, "169.254.72.1/24");
        nsB.Adopt(tb, "169.254.72.2/24");
        Assert.Contains("2 received", nsA.Exec("ping", "-c 2 -i 0.2 -W 2 169.254.72.2"));

        var e = Assert.Throws<RegistryException>(() => reg.AttachConsumer("va", "vhost", "socket /tmp/x", d => new MemoryStream()));
        Assert.Contains("already attached to a virtio consumer", e.Message);

        Assert.True(reg.DetachConsumer("va"));
        Assert.False(reg.DetachConsumer("va"));
        Assert.Equal(0, vfs[0].Function.DmaMapCount);
        // Detached, the device can take another consumer.
        string tc = Host.Unique("daC");
        reg.AttachConsumer("va", "virtio", $"tap {tc}", d => new VirtioNetTap(d, tc));
        Assert.Equal("virtio", reg.ConsumerOf("va")!.Kind);
        // dev del detaches the consumer first.
        reg.DeleteDevice("va");
        Assert.Null(reg.ConsumerOf("va"));
        Assert.False(File.Exists($"/sys/class/net/{tc}/carrier"));
    }

    [Fact]
    public void AttachToUnknownDeviceOrWithBadBackendIsAClearError()
    {
        using var reg = new DeviceRegistry(new DaemonLog(TextWriter.Null));
        Assert.Contains("not found", Assert.Throws<RegistryException>(() => reg.AttachConsumer("nope", "virtio", "", d => new MemoryStream())).Message);
        Assert.Contains("count must be even", Assert.Throws<RegistryException>(() => reg.AddSoftwareVfs(1, null, 1, backend: "pair")).Message);
        Assert.Contains("bogus", Assert.Throws<RegistryException>(() => reg.AddSoftwareVfs(1, null, 1, backend: "bogus")).Message);
    }
}
