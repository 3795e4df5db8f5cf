using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VirtioNet;

/// <summary>
/// The host's own NIC on a VF: a TAP interface whose frames go out through the in-process virtio-net
/// driver and whose received frames come from it. Link status follows the device (TAP carrier).
/// </summary>
public sealed class VirtioNetTap : IDisposable
{
    private readonly TapDevice _tap;
    private readonly Thread _reader;
    private volatile bool _stopping;

    public VirtioNetTap(IVdpaDevice device, string tapName, VirtioNetDriverOptions? options = null)
    {
        _tap = TapDevice.Open(tapName, vnetHeader: false);
        try
        {
            Driver = new VirtioNetDriver(device, options);
        }
        catch
        {
            _tap.Dispose();
            throw;
        }
        Driver.SetFrameHandler(frame => _tap.Write(frame));
        Driver.LinkChanged += up => _tap.SetCarrier(up);
        _tap.SetCarrier(Driver.LinkUp);
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = $"tap {_tap.Name}" };
        _reader.Start();
    }

    public string TapName => _tap.Name;

    public VirtioNetDriver Driver { get; }

    private void ReadLoop()
    {
        var buf = new byte[65536];
        while (!_stopping)
        {
            if (!_tap.WaitReadable(200))
            {
                continue;
            }
            while (true)
            {
                int n = _tap.Read(buf);
                if (n <= 0)
                {
                    break;
                }
                Driver.Send(buf.AsSpan(0, n));
            }
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _reader.Join();
        Driver.Dispose();
        _tap.Dispose();
    }
}
