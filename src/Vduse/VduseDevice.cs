using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.Vduse;

/// <summary>Where the VDUSE character devices are and how to log.</summary>
public sealed record VduseOptions
{
    /// <summary>VDUSE device name: /dev/vduse/NAME, and the name `vdpa dev add name NAME mgmtdev vduse` takes.</summary>
    public required string Name { get; init; }

    /// <summary>Directory of the VDUSE character devices (the kernel's devnode is vduse/NAME).</summary>
    public string DevDirectory { get; init; } = "/dev/vduse";

    /// <summary>Where the vDPA bus lists its devices (a bound VDUSE device appears here after `vdpa dev add`).</summary>
    public string VdpaBusDirectory { get; init; } = "/sys/bus/vdpa/devices";

    public Action<string> Log { get; init; } = Console.Error.WriteLine;
}

/// <summary>
/// The VDUSE consumer of a vDPA device: the device joins the Linux kernel's vDPA bus as VDUSE device NAME
/// (VDUSE_CREATE_DEV with its features, config space and queues; VDUSE_VQ_SETUP per queue), and one thread
/// answers the kernel's requests on /dev/vduse/NAME through a <see cref="VduseSession"/>. The iproute2 `vdpa`
/// tool then binds it (`vdpa dev add name NAME mgmtdev vduse`), and virtio_vdpa (the kernel's virtio-net) or
/// vhost_vdpa (/dev/vhost-vdpa-N for QEMU or DPDK) drives it. Dispose destroys the VDUSE device; while it is
/// still bound to the bus the kernel refuses (EBUSY) and the dispose says so.
/// </summary>
public sealed class VduseDevice : IDisposable
{
    private readonly SafeFd _control;
    private readonly SafeFd _fd;
    private readonly VduseSession _session;
    private readonly EventFd _wake = EventFd.Create();
    private readonly Thread _thread;
    private readonly VduseOptions _options;
    private volatile bool _stop;
    private int _disposed;

    private VduseDevice(SafeFd control, SafeFd fd, VduseSession session, VduseDeviceSpec spec, VduseOptions options)
    {
        _control = control;
        _fd = fd;
        _session = session;
        Spec = spec;
        _options = options;
        _thread = new Thread(Loop) { IsBackground = true, Name = $"vduse-{spec.Name}" };
        _thread.Start();
    }

    public VduseDeviceSpec Spec { get; }

    public VduseSession Session => _session;

    public string Name => Spec.Name;

    /// <summary>True while the device is bound to the kernel's vDPA bus (`vdpa dev add` was run for it).</summary>
    public bool OnBus => Directory.Exists(Path.Combine(_options.VdpaBusDirectory, Name));

    /// <summary>The message for a machine without /dev/vduse/control (module not loaded, or a kernel without VDUSE).</summary>
    public static string MissingMessage(string controlPath) =>
        $"{controlPath} is missing: load the VDUSE module (`modprobe vduse`, and `modprobe virtio_vdpa` or `vhost_vdpa` for the bus driver); " +
        "net devices on VDUSE need Linux 6.7 or later (block: 5.15), so on an older kernel upgrade it first";

    /// <summary>Creates the VDUSE device for <paramref name="device"/> and starts answering the kernel.</summary>
    public static VduseDevice Create(IVdpaDevice device, VduseOptions options)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(options);
        if (!IsValidName(options.Name))
        {
            throw new VdpaException($"VDUSE device name \"{options.Name}\" is not valid (1-63 of A-Z a-z 0-9 _ . -, not starting with . or -)");
        }
        string controlPath = Path.Combine(options.DevDirectory, "control");
        if (!File.Exists(controlPath))
        {
            throw new VdpaException(MissingMessage(controlPath));
        }
        var spec = VduseDeviceSpec.From(device, options.Name);
        SafeFd control;
        try
        {
            control = VduseIoctl.Open(controlPath);
        }
        catch (IOException e)
        {
            throw new VdpaException($"{controlPath}: {e.Message} (VDUSE needs root, or CAP_NET_ADMIN for net devices)");
        }
        SafeFd? fd = null;
        bool created = false;
        try
        {
            ulong api = VduseIoctl.GetApiVersion(control);
            VduseIoctl.SetApiVersion(control, 0); // API 0 is what this consumer speaks (1 adds queue groups and ASIDs)
            try
            {
                try
                {
                    VduseIoctl.CreateDevice(control, spec.Name, spec.VendorId, spec.DeviceId, spec.Features, (uint)spec.VqNum, spec.VqAlign, spec.Config);
                }
                catch (IOException e) when (e.HResult == 17 && TryDestroyStale(control, spec.Name, options.Log))
                {
                    VduseIoctl.CreateDevice(control, spec.Name, spec.VendorId, spec.DeviceId, spec.Features, (uint)spec.VqNum, spec.VqAlign, spec.Config);
                }
            }
            catch (IOException e)
            {
                throw new VdpaException(e.HResult switch
                {
                    1 => $"VDUSE_CREATE_DEV {spec.Name}: not permitted (a net device needs CAP_NET_ADMIN)",
                    17 => $"VDUSE_CREATE_DEV {spec.Name}: a VDUSE device of that name exists and is in use (another process has it open, or it is bound to the vDPA bus)",
                    22 => $"VDUSE_CREATE_DEV {spec.Name}: the kernel refused the device (device id {spec.DeviceId}, features 0x{spec.Features:x}, {spec.VqNum} queues, {spec.Config.Length}-byte config; net devices need Linux 6.7+; kernel VDUSE API {api})",
                    _ => $"VDUSE_CREATE_DEV {spec.Name}: {e.Message}",
                });
            }
            created = true;
            fd = OpenDeviceNode(Path.Combine(options.DevDirectory, spec.Name));
            for (int q = 0; q < spec.VqNum; q++)
            {
                VduseIoctl.SetupVq(fd, (uint)q, spec.VqMaxSize);
            }
            var session = new VduseSession(device, new VduseKernelFd(fd), spec, options.Log);
            options.Log($"VDUSE device {spec.Name} created for {device.Name}: device id {spec.DeviceId}, {spec.VqNum} queues of {spec.VqMaxSize}, " +
                $"features 0x{spec.Features:x}{(spec.Dropped.Count > 0 ? "; not offered: " + string.Join("; ", spec.Dropped) : "")}");
            return new VduseDevice(control, fd, session, spec, options);
        }
        catch (Exception e) when (e is IOException or VdpaException)
        {
            fd?.Dispose();
            if (created)
            {
                TryDestroy(control, spec.Name, options.Log);
            }
            control.Dispose();
            throw e as VdpaException ?? new VdpaException($"VDUSE device {spec.Name}: {e.Message}");
        }
    }

    /// <summary>Names the kernel takes for a device node and the vdpa tool takes for a device.</summary>
    public static bool IsValidName(string name) =>
        !string.IsNullOrEmpty(name) && name.Length <= 63 && name[0] is not ('.' or '-')
        && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-');

    private static SafeFd OpenDeviceNode(string path)
    {
        // devtmpfs creates the node during VDUSE_CREATE_DEV; a udev-managed /dev may lag a little
        var deadline = Environment.TickCount64 + 5000;
        while (true)
        {
            try
            {
                return VduseIoctl.Open(path, nonBlocking: true);
            }
            catch (IOException e) when (e.HResult == 2 && Environment.TickCount64 < deadline)
            {
                Thread.Sleep(20); // polling for a device node to appear: there is no event to wait on without udev
            }
        }
    }

    /// <summary>
    /// A device of the same name left behind by an owner that died (nobody has it open, not on the bus) is
    /// destroyed so the name can be used again; the kernel refuses (EBUSY) when it is in use.
    /// </summary>
    private static bool TryDestroyStale(SafeFd control, string name, Action<string> log)
    {
        try
        {
            VduseIoctl.DestroyDevice(control, name);
            log($"VDUSE device {name} was left behind by an earlier owner (not open, not on the bus): destroyed, creating it again");
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static void TryDestroy(SafeFd control, string name, Action<string> log)
    {
        try
        {
            VduseIoctl.DestroyDevice(control, name);
        }
        catch (IOException e)
        {
            log(e.HResult == 16
                ? $"VDUSE device {name} is still bound to the vDPA bus: the kernel keeps it until `vdpa dev del {name}`, then `ifcvf dev detach` again destroys it"
                : $"VDUSE_DESTROY_DEV {name}: {e.Message}");
        }
    }

    private void Loop()
    {
        var poll = new PollSet();
        poll.Reset([_fd.Fd, _wake.Fd]);
        var message = new byte[VduseMessages.Size];
        var reply = new byte[VduseMessages.Size];
        while (!_stop)
        {
            try
            {
                poll.Wait(-1);
                if (_stop)
                {
                    break;
                }
                if (poll.IsBroken(0) && !poll.IsReadable(0))
                {
                    _options.Log($"VDUSE device {Name}: the kernel marked it broken (a request was not answered in time); no more requests are served");
                    break;
                }
                if (!poll.IsReadable(0))
                {
                    continue;
                }
                int n = VduseIoctl.ReadMessage(_fd, message);
                if (n == -11 || n == -4)
                {
                    continue; // EAGAIN (another reader took it) / EINTR
                }
                if (n < 0)
                {
                    _options.Log($"VDUSE device {Name}: read failed (errno {-n}); the request loop stops");
                    break;
                }
                if (!_session.Handle(message.AsSpan(0, n), reply))
                {
                    continue;
                }
                int w = VduseIoctl.WriteMessage(_fd, reply);
                if (w != reply.Length)
                {
                    _options.Log($"VDUSE device {Name}: reply not taken ({(w < 0 ? $"errno {-w}" : $"{w} bytes")}): the kernel gave up waiting for it");
                }
            }
            catch (Exception e) when (e is IOException or VdpaException)
            {
                _options.Log($"VDUSE device {Name}: request loop: {e.Message}");
            }
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _stop = true;
        _wake.Signal();
        if (!_thread.Join(TimeSpan.FromSeconds(10)))
        {
            _options.Log($"VDUSE device {Name}: request loop did not stop within 10 s");
        }
        if (OnBus)
        {
            _options.Log($"VDUSE device {Name} is detached while still on the vDPA bus: its driver sees no more answers (`vdpa dev del {Name}` first)");
        }
        _session.Dispose();
        _fd.Dispose();
        TryDestroy(_control, Name, _options.Log);
        _control.Dispose();
        _wake.Dispose();
    }
}
