using System.Text;
using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>
/// A Linux TAP interface opened through /dev/net/tun (TUNSETIFF with IFF_TAP | IFF_NO_PI, optionally
/// IFF_VNET_HDR with a 12-byte virtio-net header in front of every frame). The descriptor is
/// non-blocking: <see cref="Read"/> returns 0 when no frame is waiting.
/// Safety contract: reads and writes go through the spans given, bounded by their lengths.
/// </summary>
public sealed unsafe class TapDevice : IDisposable
{
    private readonly SafeFd _fd;

    private TapDevice(SafeFd fd, string name, bool vnetHeader)
    {
        _fd = fd;
        Name = name;
        VnetHeader = vnetHeader;
    }

    /// <summary>The interface name the kernel gave (the requested one, or tapN for an empty request).</summary>
    public string Name { get; }

    /// <summary>Whether frames carry a virtio-net header (12 bytes, VERSION_1 layout).</summary>
    public bool VnetHeader { get; }

    public int Fd => _fd.Fd;

    /// <summary>Creates (or attaches to) the TAP interface <paramref name="name"/>. Needs CAP_NET_ADMIN.</summary>
    public static TapDevice Open(string name, bool vnetHeader)
    {
        byte[] nameBytes = Encoding.ASCII.GetBytes(name);
        if (nameBytes.Length >= Libc.IFNAMSIZ)
        {
            throw new ArgumentException($"interface name '{name}' is longer than {Libc.IFNAMSIZ - 1} bytes");
        }
        int fd = Libc.open("/dev/net/tun", Libc.O_RDWR | Libc.O_NONBLOCK | Libc.O_CLOEXEC);
        if (fd < 0)
        {
            throw Errno.Exception("open(/dev/net/tun)");
        }
        var safe = new SafeFd(fd);
        var req = default(Libc.IfReq);
        for (int i = 0; i < nameBytes.Length; i++)
        {
            req.Name[i] = nameBytes[i];
        }
        req.Flags = (short)(Libc.IFF_TAP | Libc.IFF_NO_PI | (vnetHeader ? Libc.IFF_VNET_HDR : 0));
        if (Libc.ioctl(fd, Libc.TUNSETIFF, &req) != 0)
        {
            var ex = Errno.Exception($"TUNSETIFF({name})");
            safe.Dispose();
            throw ex;
        }
        if (vnetHeader)
        {
            int hdr = 12;
            if (Libc.ioctl(fd, Libc.TUNSETVNETHDRSZ, &hdr) != 0)
            {
                var ex = Errno.Exception("TUNSETVNETHDRSZ");
                safe.Dispose();
                throw ex;
            }
        }
        int len = 0;
        while (len < Libc.IFNAMSIZ && req.Name[len] != 0)
        {
            len++;
        }
        string actual = Encoding.ASCII.GetString(new ReadOnlySpan<byte>(req.Name, len));
        return new TapDevice(safe, actual, vnetHeader);
    }

    /// <summary>Reads one frame. Returns its length, 0 if none is waiting, or -errno on failure.</summary>
    public int Read(Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            nint n = Libc.read(_fd.Fd, p, (nuint)buffer.Length);
            if (n >= 0)
            {
                return (int)n;
            }
            int e = Errno.Last;
            return e == Libc.EAGAIN ? 0 : -e;
        }
    }

    /// <summary>Writes one frame. Returns true if the kernel took all of it.</summary>
    public bool Write(ReadOnlySpan<byte> frame)
    {
        fixed (byte* p = frame)
        {
            return Libc.write(_fd.Fd, p, (nuint)frame.Length) == frame.Length;
        }
    }

    /// <summary>
    /// Sets the interface's carrier (TUNSETCARRIER): off, a bridge disables the port and forgets the MACs it
    /// learned there, so it floods frames for them to its other ports. Returns 0 or -errno.
    /// The kernel applies a carrier change through its link watcher, which runs a change that is not urgent
    /// (carrier off is not) up to a second after the previous run; until then a bridge still sends to this
    /// port. So the change is applied at once here (<see cref="SyncLinkState"/>) before returning.
    /// </summary>
    public int SetCarrier(bool up)
    {
        int on = up ? 1 : 0;
        if (Libc.ioctl(_fd.Fd, Libc.TUNSETCARRIER, &on) != 0)
        {
            return -Errno.Last;
        }
        SyncLinkState();
        return 0;
    }

    /// <summary>
    /// ETHTOOL_GLINK on the interface: besides reading the link, the kernel (5.12+) first runs the link
    /// watcher's pending event for the device, so operstate and the bridge port follow the carrier now.
    /// Best effort: false if the interface is not found in this process's network namespace or is down
    /// (then the kernel applies the change on its own, later).
    /// </summary>
    public bool SyncLinkState()
    {
        int s = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_DGRAM | LibcSocket.SOCK_CLOEXEC, 0);
        if (s < 0)
        {
            return false;
        }
        using var sock = new SafeFd(s);
        var value = new Libc.EthtoolValue { Cmd = Libc.ETHTOOL_GLINK };
        var req = default(Libc.IfReqData);
        byte[] name = Encoding.ASCII.GetBytes(Name);
        for (int i = 0; i < name.Length && i < Libc.IFNAMSIZ - 1; i++)
        {
            req.Name[i] = name[i];
        }
        req.Data = &value;
        return Libc.ioctl(s, Libc.SIOCETHTOOL, &req) == 0;
    }

    /// <summary>Waits until a frame is readable or the timeout passes.</summary>
    public bool WaitReadable(int timeoutMs) => Poll.WaitReadable(_fd.Fd, timeoutMs);

    public void Dispose() => _fd.Dispose();
}
