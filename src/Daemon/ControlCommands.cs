using System.Buffers.Binary;
using System.Text.Json;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Vdpa;
using IfcVdpa.VhostUser;
using IfcVdpa.VirtioNet;
using IfcVdpa.Virtio;

namespace IfcVdpa.Daemon;

/// <summary>
/// The `vdpa`-style control commands on a <see cref="DeviceRegistry"/>. Replies have the shape of
/// `vdpa -j` output (<c>{"dev":{"vdpa0":{…}}}</c>), so the CLI prints them as they are for -j.
/// </summary>
public static class ControlCommands
{
    public static void Register(ControlServer server, DeviceRegistry registry)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(registry);
        server.Handle("ping", (a, w) =>
        {
            a.EnsureNoUnknown();
            w.WriteNumber("pid", Environment.ProcessId);
        });
        server.Handle("sim add", (a, w) => SimAdd(registry, a, w));
        server.Handle("sim link", (a, w) => VduseConsumer.SimLink(registry, a));
        server.Handle("sim show", (a, w) => SimShow(registry, a, w));
        server.Handle("sim del", (a, w) =>
        {
            string name = a.RequiredString("name");
            a.EnsureNoUnknown();
            var md = registry.FindManagementDevice(name);
            if (md is null || md.BusName != "sim")
            {
                throw new ControlException($"software VF \"{name}\" not found");
            }
            registry.RemoveManagementDevice(md.Name);
        });
        server.Handle("mgmtdev show", (a, w) => MgmtdevShow(registry, a, w));
        server.Handle("dev add", (a, w) => DevAdd(registry, a, w));
        server.Handle("dev del", (a, w) =>
        {
            string name = a.RequiredString("name");
            a.EnsureNoUnknown();
            registry.DeleteDevice(name);
        });
        server.Handle("dev show", (a, w) => DevShow(registry, a, w));
        server.Handle("dev attach", (a, w) => DevAttach(registry, a));
        server.Handle("vhost add", (a, w) => VhostAdd(registry, a));
        server.Handle("vhost del", (a, w) =>
        {
            string name = a.RequiredString("name");
            a.EnsureNoUnknown();
            if (registry.ConsumerOf(name) is not { Kind: "vhost" })
            {
                throw new ControlException($"vDPA device \"{name}\" is not served over vhost-user");
            }
            registry.DetachConsumer(name);
        });
        server.Handle("dev detach", (a, w) =>
        {
            string name = a.RequiredString("name");
            a.EnsureNoUnknown();
            VduseConsumer.EnsureDetachable(registry, name);
            if (!registry.DetachConsumer(name))
            {
                throw new ControlException($"vDPA device \"{name}\" has no consumer attached");
            }
        });
        server.Handle("dev config show", (a, w) => DevConfigShow(registry, a, w));
        server.Handle("dev vstats show", (a, w) => DevVstatsShow(registry, a, w));
    }

    /// <summary>dev attach NAME virtio tap TAPNAME [queues N]: the host uses the VF as its own NIC.</summary>
    private static void DevAttach(DeviceRegistry registry, ControlArgs a)
    {
        string name = a.RequiredString("name");
        string consumer = a.RequiredString("consumer");
        string? tap = a.String("tap", 15);
        int pairs = (int)(a.Integer("queues", 1, 32) ?? 1);
        string? vduse = a.String("vduse", 63);
        a.EnsureNoUnknown();
        if (consumer == "vduse")
        {
            VduseConsumer.Attach(registry, name, vduse ?? name);
            return;
        }
        if (consumer != "virtio")
        {
            throw new ControlException($"consumer must be \"virtio\" or \"vduse\" here (vhost-user consumers use \"vhost add\"), not \"{consumer}\"");
        }
        if (tap is null || !DeviceRegistry.IsValidDeviceName(tap))
        {
            throw new ControlException("virtio consumer needs \"tap NAME\" (1-15 of A-Z a-z 0-9 _ . -)");
        }
        registry.AttachConsumer(name, "virtio", $"tap {tap}",
            dev => new VirtioNetTap(dev, tap, new VirtioNetDriverOptions { QueuePairs = pairs }));
    }

    /// <summary>
    /// vhost add NAME socket PATH [client] [owner U] [group G] [mode OCTAL]: the device's virtqueues are handed
    /// to a vhost-user front-end; owner/group/mode open a server socket to the front-end's user (libvirt's QEMU).
    /// </summary>
    private static void VhostAdd(DeviceRegistry registry, ControlArgs a)
    {
        string name = a.RequiredString("name");
        string socket = a.RequiredString("socket", 107);
        bool client = a.Bool("client") ?? false;
        string? owner = a.String("owner", 32);
        string? group = a.String("group", 32);
        string? mode = a.String("mode", 8);
        a.EnsureNoUnknown();
        if (!Path.IsPathRooted(socket))
        {
            throw new ControlException($"socket must be an absolute path, not \"{socket}\"");
        }
        if (client && (owner ?? group ?? mode) is not null)
        {
            throw new ControlException("owner, group and mode apply to a socket we create: not with client (the front-end owns it)");
        }
        SocketAccess access;
        try
        {
            access = SocketAccess.Parse(owner, group, mode);
        }
        catch (ArgumentException e)
        {
            throw new ControlException(e.Message);
        }
        string detail = $"socket {socket}{(client ? " client" : "")}{(access == SocketAccess.Default ? "" : " " + access)}";
        registry.AttachConsumer(name, "vhost", detail, dev =>
        {
            var backend = new VhostUserBackend(dev, new VhostUserBackendOptions
            {
                SocketPath = socket,
                Client = client,
                SocketMode = access.Mode,
                SocketOwner = access.Owner,
                SocketGroup = access.Group,
                Session = new VhostUserSessionOptions { Name = name, Log = registry.LogLine, InflightTarget = registry.FindDeviceOwner(name)?.InflightTarget },
            });
            try
            {
                backend.Start();
            }
            catch
            {
                backend.Dispose();
                throw;
            }
            return backend;
        });
    }

    private static void SimAdd(DeviceRegistry registry, ControlArgs a, Utf8JsonWriter w)
    {
        string cls = a.String("class", 8) ?? "net";
        int count = (int)(a.Integer("count", 1, DeviceRegistry.MaxSoftwareVfs) ?? 1);
        byte[]? mac = a.Mac("mac");
        int queues = (int)(a.Integer("queues", 1, 32) ?? 1);
        int? vectors = (int?)a.Integer("msix_vectors", 1, 2048);
        string? backendArg = a.String("backend", 200);
        string? cpu = a.String("cpu", 200);
        bool dirtyLog = a.Bool("dirty_log") ?? true;
        bool strict = a.Bool("strict") ?? false;
        bool readOnly = a.Bool("readonly") ?? false;
        int? blkSize = (int?)a.Integer("blk_size", 512, 4096);
        a.EnsureNoUnknown();
        int[]? cpus;
        try
        {
            cpus = cpu is null ? null : CpuList.Parse(cpu);
        }
        catch (FormatException e)
        {
            throw new ControlException($"cpu: {e.Message}");
        }
        IReadOnlyList<ManagementDevice> added;
        if (cls is "blk" or "block")
        {
            if (count != 1 || mac is not null || vectors is not null || a.WasGiven("dirty_log"))
            {
                throw new ControlException("sim add class blk takes backend, queues, readonly, blk_size and cpu (one VF per backend); count, mac, msix_vectors and dirty_log are net attributes");
            }
            if (backendArg is null)
            {
                throw new ControlException("sim add class blk needs backend file:PATH|mem:SIZE");
            }
            if (blkSize is int bs && bs is not (512 or 1024 or 2048 or 4096))
            {
                throw new ControlException($"blk_size must be 512, 1024, 2048 or 4096, not {bs}");
            }
            added = [registry.AddSoftwareBlockVf(backendArg, queues, readOnly, (uint)(blkSize ?? 512), CpuList.ForWorker(cpus, 0), strict)];
        }
        else if (cls == "net")
        {
            if (readOnly || blkSize is not null)
            {
                throw new ControlException("readonly and blk_size are block attributes (sim add class blk ...)");
            }
            added = registry.AddSoftwareVfs(count, mac is null ? (ReadOnlyMemory<byte>?)null : mac, queues, vectors, backendArg ?? "loopback", cpus, dirtyLog, strict);
        }
        else
        {
            throw new ControlException($"class must be net or blk, not \"{cls}\"");
        }
        w.WriteStartObject("mgmtdev");
        foreach (var md in added)
        {
            WriteMgmtdev(md, w);
        }
        w.WriteEndObject();
    }

    /// <summary>sim show [NAME]: the software VFs, their status, strict mode and the virtio rules their drivers broke.</summary>
    private static void SimShow(DeviceRegistry registry, ControlArgs a, Utf8JsonWriter w)
    {
        string? name = a.String("name");
        a.EnsureNoUnknown();
        var vfs = registry.ManagementDevices.Where(m => m.BusName == "sim" && (name is null || m.Name == name || m.DevName == name)).ToList();
        if (name is not null && vfs.Count == 0)
        {
            throw new ControlException($"software VF \"{name}\" not found");
        }
        w.WriteStartObject("sim");
        foreach (var md in vfs)
        {
            w.WriteStartObject(md.Name);
            w.WriteString("address", md.Function.Address);
            if (md.Device is { } d)
            {
                w.WriteString("dev", d.Name);
            }
            if (md.Function is SoftIfcVf vf)
            {
                byte status = vf.Status;
                w.WriteString("status", VirtioStatus.Describe(status));
                w.WriteBoolean("needs_reset", (status & VirtioStatus.NEEDS_RESET) != 0);
                if (vf.NeedsResetReason is { } why)
                {
                    w.WriteString("needs_reset_reason", why);
                }
                w.WriteNumber("register_errors", vf.RegisterErrors);
                WriteSpec(w, vf);
            }
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    /// <summary>The spec checker's state: strict or not, and a count per broken rule (with its section).</summary>
    private static void WriteSpec(Utf8JsonWriter w, SoftIfcVf vf)
    {
        w.WriteBoolean("strict", vf.Strict);
        w.WriteStartObject("spec_violations");
        w.WriteNumber("total", vf.ViolationTotal);
        foreach (var (rule, count) in vf.Violations)
        {
            w.WriteStartObject(rule.Counter);
            w.WriteNumber("count", count);
            w.WriteString("section", rule.Section);
            w.WriteBoolean("ifc_extension", rule.Extension);
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    private static void MgmtdevShow(DeviceRegistry registry, ControlArgs a, Utf8JsonWriter w)
    {
        string? name = a.String("name");
        a.EnsureNoUnknown();
        w.WriteStartObject("mgmtdev");
        if (name is not null)
        {
            WriteMgmtdev(registry.FindManagementDevice(name) ?? throw new ControlException($"management device \"{name}\" not found"), w);
        }
        else
        {
            foreach (var md in registry.ManagementDevices)
            {
                WriteMgmtdev(md, w);
            }
        }
        w.WriteEndObject();
    }

    private static void WriteMgmtdev(ManagementDevice md, Utf8JsonWriter w)
    {
        w.WriteStartObject(md.Name);
        w.WriteString("address", md.Function.Address);
        w.WriteStartArray("supported_classes");
        w.WriteStringValue(md.ClassName);
        w.WriteEndArray();
        if (md.BlockBackend is { } backend)
        {
            w.WriteString("backend", backend);
        }
        w.WriteNumber("max_supported_vqs", md.MaxSupportedVqs);
        w.WriteNumber("msix_vectors", md.Function.MsixVectorCount);
        if (md.DeviceClass == IfcDeviceClass.Block)
        {
            WriteBlockFeatures(w, "dev_features", md.SupportedFeatures);
        }
        else
        {
            WriteFeatures(w, "dev_features", md.SupportedFeatures);
        }
        if (md.Device is { } d)
        {
            w.WriteString("dev", d.Name);
        }
        if (md.DatapathCpu is int cpu)
        {
            w.WriteNumber("cpu", cpu);
        }
        w.WriteEndObject();
    }

    private static void WriteFeatures(Utf8JsonWriter w, string name, ulong features)
    {
        w.WriteStartArray(name);
        foreach (var n in VirtioFeature.Names(features))
        {
            w.WriteStringValue(n);
        }
        w.WriteEndArray();
        w.WriteString(name + "_hex", $"0x{features:x}");
    }

    private static void DevAdd(DeviceRegistry registry, ControlArgs a, Utf8JsonWriter w)
    {
        string name = a.RequiredString("name", 32);
        string mgmtdev = a.RequiredString("mgmtdev");
        byte[]? mac = a.Mac("mac");
        int? mtu = (int?)a.Integer("mtu", 68, 65535);
        int? maxVqp = (int?)a.Integer("max_vqp", 1, 32768);
        ulong? features = a.Hex64("device_features");
        long? capacity = a.Integer("capacity", 1, long.MaxValue >> VirtioBlk.SectorShift);
        int? blkSize = (int?)a.Integer("blk_size", 512, 4096);
        bool readOnly = a.Bool("readonly") ?? false;
        int? queues = (int?)a.Integer("queues", 1, DeviceRegistry.MaxBlockQueues);
        a.EnsureNoUnknown();
        if (blkSize is int bs && bs is not (512 or 1024 or 2048 or 4096))
        {
            throw new ControlException($"blk_size must be 512, 1024, 2048 or 4096, not {bs}");
        }
        var dev = registry.AddDevice(mgmtdev, new VdpaProvisioning(name, mac is null ? (ReadOnlyMemory<byte>?)null : mac, (ushort?)mtu, (ushort?)maxVqp, features,
            (ulong?)capacity, (uint?)blkSize, readOnly, (ushort?)queues));
        w.WriteStartObject("dev");
        WriteDev(registry, dev, w);
        w.WriteEndObject();
    }

    private static IEnumerable<IVdpaDevice> Select(DeviceRegistry registry, string? name) =>
        name is null ? registry.Devices : [registry.FindDevice(name) ?? throw new ControlException($"vDPA device \"{name}\" not found")];

    private static void DevShow(DeviceRegistry registry, ControlArgs a, Utf8JsonWriter w)
    {
        string? name = a.String("name", 32);
        a.EnsureNoUnknown();
        w.WriteStartObject("dev");
        foreach (var d in Select(registry, name))
        {
            WriteDev(registry, d, w);
        }
        w.WriteEndObject();
    }

    private static void WriteDev(DeviceRegistry registry, IVdpaDevice d, Utf8JsonWriter w)
    {
        w.WriteStartObject(d.Name);
        w.WriteString("type", d.GetDeviceId() == VirtioBlk.DeviceId ? "block" : "network");
        w.WriteString("mgmtdev", registry.FindDeviceOwner(d.Name)?.Name ?? "?");
        w.WriteNumber("vendor_id", d.GetVendorId());
        w.WriteNumber("max_vqs", d.NumVqs);
        w.WriteNumber("max_vq_size", d.GetVqNumMax());
        w.WriteNumber("min_vq_size", d.GetVqNumMin());
        byte status;
        try
        {
            status = d.GetStatus();
        }
        catch (ObjectDisposedException)
        {
            status = 0;
        }
        w.WriteString("status", VirtioStatus.Describe(status));
        if (d is IVdpaDeviceDiagnostics diag)
        {
            w.WriteString("irq_mode", diag.InterruptMode);
        }
        if (registry.ConsumerOf(d.Name) is { } c)
        {
            w.WriteString("consumer", c.Kind);
            w.WriteString("consumer_detail", c.Detail);
        }
        if (d is IVdpaDeviceDiagnostics dm)
        {
            w.WriteNumber("dma_maps", dm.DmaMapCount);
        }
        w.WriteEndObject();
    }

    private static void DevConfigShow(DeviceRegistry registry, ControlArgs a, Utf8JsonWriter w)
    {
        string? name = a.String("name", 32);
        a.EnsureNoUnknown();
        w.WriteStartObject("config");
        Span<byte> full = stackalloc byte[VirtioNetConfig.Size];
        foreach (var d in Select(registry, name))
        {
            if (d.GetDeviceId() == VirtioBlk.DeviceId)
            {
                WriteBlockConfig(d, w);
                continue;
            }
            full.Clear();
            var cfg = full[..(int)Math.Min((uint)full.Length, d.GetConfigSize())];
            d.GetConfig(0, cfg);
            ulong features = d.GetDeviceFeatures();
            w.WriteStartObject(d.Name);
            if (VirtioFeature.Has(features, VirtioFeature.NET_F_MAC))
            {
                w.WriteString("mac", MacAddress.Format(full[..6]));
            }
            ushort st = BinaryPrimitives.ReadUInt16LittleEndian(full[VirtioNetConfig.Status..]);
            bool hasStatus = VirtioFeature.Has(features, VirtioFeature.NET_F_STATUS);
            w.WriteString("link", !hasStatus || (st & VirtioNetConfig.S_LINK_UP) != 0 ? "up" : "down");
            w.WriteBoolean("link_announce", hasStatus && (st & VirtioNetConfig.S_ANNOUNCE) != 0);
            w.WriteNumber("max_vq_pairs", BinaryPrimitives.ReadUInt16LittleEndian(full[VirtioNetConfig.MaxVirtqueuePairs..]));
            if (VirtioFeature.Has(features, VirtioFeature.NET_F_MTU))
            {
                w.WriteNumber("mtu", BinaryPrimitives.ReadUInt16LittleEndian(full[VirtioNetConfig.Mtu..]));
            }
            if ((d.GetStatus() & VirtioStatus.FEATURES_OK) != 0)
            {
                WriteFeatures(w, "negotiated_features", d.GetDriverFeatures());
            }
            WriteFeatures(w, "dev_features", features);
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    /// <summary>
    /// A block device's config, with the names of the kernel's VDPA_ATTR_DEV_BLK_CFG_* attributes (what
    /// `vdpa dev config show` prints for block devices): fields whose feature is not offered are left out.
    /// </summary>
    private static void WriteBlockConfig(IVdpaDevice d, Utf8JsonWriter w)
    {
        Span<byte> raw = stackalloc byte[VirtioBlkConfig.Size];
        raw.Clear();
        d.GetConfig(0, raw[..(int)Math.Min((uint)raw.Length, d.GetConfigSize())]);
        var c = VirtioBlkConfig.Parse(raw);
        ulong f = d.GetDeviceFeatures();
        bool Has(int bit) => (f & (1UL << bit)) != 0;
        w.WriteStartObject(d.Name);
        w.WriteNumber("capacity", c.Capacity);
        if (Has(VirtioBlk.F_SIZE_MAX))
        {
            w.WriteNumber("size_max", c.SizeMax);
        }
        if (Has(VirtioBlk.F_SEG_MAX))
        {
            w.WriteNumber("seg_max", c.SegMax);
        }
        if (Has(VirtioBlk.F_BLK_SIZE))
        {
            w.WriteNumber("blk_size", c.BlkSize);
        }
        if (Has(VirtioBlk.F_TOPOLOGY))
        {
            w.WriteNumber("physical_blk_exp", c.PhysicalBlockExp);
            w.WriteNumber("alignment_offset", c.AlignmentOffset);
            w.WriteNumber("min_io_size", c.MinIoSize);
            w.WriteNumber("opt_io_size", c.OptIoSize);
        }
        w.WriteNumber("num_queues", Has(VirtioBlk.F_MQ) ? c.NumQueues : 1);
        if (Has(VirtioBlk.F_DISCARD))
        {
            w.WriteNumber("max_discard_sectors", c.MaxDiscardSectors);
            w.WriteNumber("max_discard_seg", c.MaxDiscardSeg);
            w.WriteNumber("discard_sector_alignment", c.DiscardSectorAlignment);
        }
        if (Has(VirtioBlk.F_WRITE_ZEROES))
        {
            w.WriteNumber("max_write_zeroes_sectors", c.MaxWriteZeroesSectors);
            w.WriteNumber("max_write_zeroes_seg", c.MaxWriteZeroesSeg);
        }
        w.WriteBoolean("read_only", Has(VirtioBlk.F_RO));
        w.WriteBoolean("flush", Has(VirtioBlk.F_FLUSH));
        if ((d.GetStatus() & VirtioStatus.FEATURES_OK) != 0)
        {
            WriteBlockFeatures(w, "negotiated_features", d.GetDriverFeatures());
        }
        WriteBlockFeatures(w, "dev_features", f);
        w.WriteEndObject();
    }

    private static void WriteBlockFeatures(Utf8JsonWriter w, string name, ulong features)
    {
        w.WriteStartArray(name);
        foreach (var n in VirtioBlk.FeatureNames(features))
        {
            w.WriteStringValue(n);
        }
        w.WriteEndArray();
        w.WriteString(name + "_hex", $"0x{features:x}");
    }

    /// <summary>rx for even data queues, tx for odd ones, control_vq for the last of an odd count.</summary>
    public static string QueueType(int qid, int numVqs) =>
        numVqs % 2 == 1 && qid == numVqs - 1 ? "control_vq" : qid % 2 == 0 ? "rx" : "tx";

    /// <summary>The queue's type as `dev vstats` and the metrics name it: `req` for every block queue, else rx/tx/control_vq.</summary>
    public static string QueueType(IVdpaDevice d, int qid)
    {
        ArgumentNullException.ThrowIfNull(d);
        return d.GetDeviceId() == VirtioBlk.DeviceId ? "req" : QueueType(qid, d.NumVqs);
    }

    private static void DevVstatsShow(DeviceRegistry registry, ControlArgs a, Utf8JsonWriter w)
    {
        string name = a.RequiredString("name", 32);
        int? qidx = (int?)a.Integer("qidx", 0, 65535);
        a.EnsureNoUnknown();
        var d = registry.FindDevice(name) ?? throw new ControlException($"vDPA device \"{name}\" not found");
        if (qidx is int q && q >= d.NumVqs)
        {
            throw new ControlException($"{name}: queue index {q} out of range (device has {d.NumVqs} queues)");
        }
        w.WriteStartObject("vstats");
        w.WriteStartObject(name);
        WriteDirtyLog(w, d);
        if (registry.FindDeviceOwner(name)?.Function is SoftIfcVf vf)
        {
            WriteSpec(w, vf);
        }
        if (qidx is int one)
        {
            WriteQueueStats(w, d, one);
        }
        else
        {
            long p = 0, b = 0, k = 0, i = 0, e = 0, dr = 0, dp = 0;
            w.WriteStartArray("queues");
            for (int qq = 0; qq < d.NumVqs; qq++)
            {
                w.WriteStartObject();
                var s = WriteQueueStats(w, d, qq);
                w.WriteEndObject();
                p += s.Packets; b += s.Bytes; k += s.Kicks; i += s.Interrupts; e += s.Errors; dr += s.Drops; dp += s.DirtyPages;
            }
            w.WriteEndArray();
            w.WriteStartObject("total");
            WriteCounters(w, new Vdpa.VdpaVqStats(p, b, k, i, e, dr) { DirtyPages = dp });
            w.WriteEndObject();
        }
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static Vdpa.VdpaVqStats WriteQueueStats(Utf8JsonWriter w, IVdpaDevice d, int q)
    {
        var s = d.GetVqStats(q);
        w.WriteNumber("queue_index", q);
        w.WriteString("queue_type", QueueType(d, q));
        WriteCounters(w, s);
        return s;
    }

    private static void WriteCounters(Utf8JsonWriter w, Vdpa.VdpaVqStats s)
    {
        w.WriteNumber("packets", s.Packets);
        w.WriteNumber("bytes", s.Bytes);
        w.WriteNumber("kicks", s.Kicks);
        w.WriteNumber("interrupts", s.Interrupts);
        w.WriteNumber("errors", s.Errors);
        w.WriteNumber("drops", s.Drops);
        w.WriteNumber("dirty_pages", s.DirtyPages);
    }

    /// <summary>Live migration: whether the device can keep a dirty log, whether it is on, and the pages its queues marked.</summary>
    private static void WriteDirtyLog(Utf8JsonWriter w, IVdpaDevice d)
    {
        var log = d as Vdpa.IVdpaDirtyLog;
        long pages = 0;
        for (int q = 0; q < d.NumVqs; q++)
        {
            pages += d.GetVqStats(q).DirtyPages;
        }
        w.WriteStartObject("dirty_log");
        w.WriteBoolean("supported", log?.CanLogDirtyPages ?? false);
        w.WriteBoolean("enabled", log?.DirtyLogEnabled ?? false);
        w.WriteNumber("pages", pages);
        w.WriteEndObject();
    }
}
