using IfcVdpa.Vdpa;

namespace IfcVdpa.Daemon;

/// <summary>What a vDPA device is attached to: the "virtio" consumer (host NIC) or "vhost" (vhost-user).</summary>
public sealed record ConsumerInfo(string Kind, string Detail, IDisposable Handle);

/// <summary>One consumer per vDPA device: attaching a second one is a clear error.</summary>
public sealed partial class DeviceRegistry
{
    private readonly Dictionary<string, ConsumerInfo> _consumers = [];
    private long _retiredVhostConnections; // front-end connections of vhost consumers already detached

    /// <summary>
    /// vhost-user front-end connections accepted (or made, in client mode) by every vhost consumer since
    /// the daemon started, and how many are connected now (for metrics).
    /// </summary>
    public (long Total, int Connected) VhostConnections
    {
        get
        {
            lock (_lock)
            {
                long total = _retiredVhostConnections;
                int now = 0;
                foreach (var c in _consumers.Values)
                {
                    if (c.Handle is VhostUser.VhostUserBackend b)
                    {
                        total += b.Connections;
                        now += b.Session is null ? 0 : 1;
                    }
                }
                return (total, now);
            }
        }
    }

    /// <summary>
    /// Attaches a consumer built by <paramref name="create"/> to device <paramref name="devName"/>.
    /// Fails if the device does not exist or already has a consumer.
    /// </summary>
    public ConsumerInfo AttachConsumer(string devName, string kind, string detail, Func<IVdpaDevice, IDisposable> create)
    {
        ArgumentNullException.ThrowIfNull(create);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var md = _mgmt.FirstOrDefault(m => m.Device?.Name == devName) ?? throw new RegistryException($"vDPA device \"{devName}\" not found");
            if (_consumers.TryGetValue(devName, out var existing))
            {
                throw new RegistryException($"vDPA device \"{devName}\" is already attached to a {existing.Kind} consumer ({existing.Detail}); detach it first");
            }
            IDisposable handle;
            try
            {
                handle = create(md.Device!);
            }
            catch (Exception e) when (DaemonErrors.IsRefusal(e))
            {
                throw new RegistryException($"{devName}: cannot attach {kind} consumer: {e.Message}");
            }
            var info = new ConsumerInfo(kind, detail, handle);
            _consumers[devName] = info;
            _log.Info("consumer attached", ("dev", devName), ("consumer", kind), ("detail", detail));
            return info;
        }
    }

    /// <summary>Detaches (and disposes) the device's consumer; false if it had none.</summary>
    public bool DetachConsumer(string devName)
    {
        lock (_lock)
        {
            return DetachConsumerLocked(devName);
        }
    }

    private bool DetachConsumerLocked(string devName)
    {
        if (!_consumers.Remove(devName, out var info))
        {
            return false;
        }
        info.Handle.Dispose();
        if (info.Handle is VhostUser.VhostUserBackend b)
        {
            _retiredVhostConnections += b.Connections;
        }
        _log.Info("consumer detached", ("dev", devName), ("consumer", info.Kind));
        return true;
    }

    /// <summary>A free-text log line from a consumer (vhost-user session events).</summary>
    public void LogLine(string line) => _log.Info(line);

    /// <summary>The device's consumer, or null.</summary>
    public ConsumerInfo? ConsumerOf(string devName)
    {
        lock (_lock)
        {
            return _consumers.GetValueOrDefault(devName);
        }
    }
}
