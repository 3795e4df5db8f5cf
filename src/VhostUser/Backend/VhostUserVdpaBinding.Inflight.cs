using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>
/// Inflight I/O tracking in the binding (GET/SET_INFLIGHT_FD, offered when the session has an
/// <see cref="VhostUserSessionOptions.InflightTarget"/>: a block device whose requests the device marks in the
/// buffer itself). The buffer is handed to the device queue by queue before its rings start; at the next start
/// after a back-end restart the device resubmits what the buffer says was in flight.
/// </summary>
public sealed partial class VhostUserVdpaBinding
{
    private InflightBuffer? _inflight;

    /// <summary>Whether inflight tracking is offered (INFLIGHT_SHMFD).</summary>
    public bool CanTrackInflight => _options.InflightTarget is not null && _block;

    /// <summary>GET_INFLIGHT_FD: a fresh buffer for <paramref name="queues"/> rings of <paramref name="queueSize"/>; the caller sends its fd and disposes it.</summary>
    public InflightBuffer CreateInflight(int queues, int queueSize)
    {
        RequireInflight();
        var b = InflightBuffer.Create(queues, queueSize, _rings.Length, _device.GetVqNumMax());
        _log($"inflight buffer created: {queues} queue(s) of {queueSize}, 0x{b.Size:x} bytes");
        return b;
    }

    /// <summary>SET_INFLIGHT_FD: validates and maps the buffer, and gives each queue its region (only while the rings are stopped).</summary>
    public void SetInflight(SafeFd fd, ulong size, ulong offset, int queues, int queueSize)
    {
        RequireInflight();
        if (_configured)
        {
            throw new VhostUserRequestException("SET_INFLIGHT_FD while the device runs: the buffer changes only before the rings start");
        }
        var b = InflightBuffer.Map(fd, size, offset, queues, queueSize, _rings.Length, _device.GetVqNumMax());
        try
        {
            for (int q = 0; q < _rings.Length; q++)
            {
                _options.InflightTarget!(q, q < queues ? b.Region(q) : null);
            }
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            ClearInflightTarget();
            b.Dispose();
            throw new VhostUserRequestException($"the device did not take the inflight buffer: {e.Message}");
        }
        _inflight?.Dispose();
        _inflight = b;
        _log($"inflight buffer set: {queues} queue(s) of {queueSize}, 0x{size:x} bytes at offset 0x{offset:x}");
    }

    private void RequireInflight()
    {
        if (!CanTrackInflight)
        {
            throw new VhostUserRequestException("inflight tracking is not offered for this device");
        }
    }

    private void ClearInflightTarget()
    {
        if (_options.InflightTarget is not { } target)
        {
            return;
        }
        for (int q = 0; q < _rings.Length; q++)
        {
            try
            {
                target(q, null);
            }
            catch (InvalidOperationException)
            {
                // not attached any more: nothing holds the region
            }
        }
    }

    /// <summary>After the device reset (session end): the device lets go of the regions, then they are unmapped.</summary>
    private void ReleaseInflight()
    {
        if (_inflight is null)
        {
            return;
        }
        ClearInflightTarget();
        _inflight.Dispose();
        _inflight = null;
    }
}
