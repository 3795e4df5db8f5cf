using System.Numerics;
using System.Runtime.InteropServices;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.VhostUser.Frontend;

/// <summary>
/// Dirty logging as a migrating front-end (QEMU) drives it: VHOST_F_LOG_ALL and protocol feature LOG_SHMFD
/// negotiated; the log is a memfd of one bit per 4 KiB page of the driver's IOVA space (the back-end's
/// guest-physical addresses), sized to cover every DMA mapping and given with SET_LOG_BASE (the front-end
/// waits for the back-end's reply); SET_FEATURES with LOG_ALL switches logging on, and every running ring
/// is sent SET_VRING_ADDR again with VHOST_VRING_F_LOG and log_guest_addr = its used ring. Switching off
/// sends the features without LOG_ALL and the ring addresses without the flag. A DMA mapping beyond the
/// log while logging gives the back-end a larger log first (QEMU resizes it the same way).
/// </summary>
public sealed partial class VhostUserFrontend
{
    private MappedMemory? _dirtyLog;
    private ulong _dirtyLogCovers;
    private bool _logging;

    /// <summary>True when the back-end can log: it offers VHOST_F_LOG_ALL and LOG_SHMFD was negotiated.</summary>
    public bool CanLogDirtyPages => Has(_client.BackendFeatures, F_LOG_ALL) && HasProtocol(VhostUserProtocolFeature.LOG_SHMFD);

    /// <summary>True while the back-end logs (between <see cref="StartDirtyLog"/> and <see cref="StopDirtyLog"/> or a reset).</summary>
    public bool DirtyLogging
    {
        get
        {
            lock (_ctl)
            {
                return _logging;
            }
        }
    }

    /// <summary>Bytes of the current log (0 before the first <see cref="StartDirtyLog"/>).</summary>
    public ulong DirtyLogBytes
    {
        get
        {
            lock (_ctl)
            {
                return _dirtyLog?.Length ?? 0;
            }
        }
    }

    /// <summary>
    /// Switches logging on (driver at FEATURES_OK or later): the log (SET_LOG_BASE, reply awaited), SET_FEATURES
    /// with LOG_ALL, then SET_VRING_ADDR with VHOST_VRING_F_LOG for every running ring. A refusal is an
    /// <see cref="InvalidOperationException"/>; the front-end then counts as not logging.
    /// </summary>
    public void StartDirtyLog()
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            _client.ThrowIfBroken();
            if (!CanLogDirtyPages)
            {
                throw new NotSupportedException(
                    $"{Name}: the back-end cannot log dirty pages (VHOST_F_LOG_ALL offered: {Has(_client.BackendFeatures, F_LOG_ALL)}, LOG_SHMFD negotiated: {HasProtocol(VhostUserProtocolFeature.LOG_SHMFD)})");
            }
            if ((_status & VirtioStatus.FEATURES_OK) == 0)
            {
                throw new InvalidOperationException($"{Name}: dirty logging needs negotiated features (FEATURES_OK)");
            }
            if (_logging)
            {
                return;
            }
            EnsureLogCovers();
            _logging = true;
            try
            {
                _client.SendU64(VhostUserRequest.SET_FEATURES, BackendAck);
                SendRingAddresses();
            }
            catch
            {
                _logging = false;
                throw;
            }
            Log($"dirty logging on: 0x{_dirtyLog!.Length:x}-byte log covers IOVA below 0x{_dirtyLogCovers:x}, features 0x{BackendAck:x}");
        }
    }

    /// <summary>Switches logging off (a migration that completed or was cancelled): SET_FEATURES without LOG_ALL, ring addresses without the log flag.</summary>
    public void StopDirtyLog()
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            if (!_logging)
            {
                return;
            }
            _client.ThrowIfBroken();
            _logging = false;
            _client.SendU64(VhostUserRequest.SET_FEATURES, BackendAck);
            SendRingAddresses();
            Log($"dirty logging off: features 0x{BackendAck:x}");
        }
    }

    /// <summary>
    /// QEMU's log sync: the pages marked since the last sync (page = IOVA / 4096), each bit taken with an
    /// atomic exchange of its 64-bit word, so a mark the back-end sets meanwhile is kept for the next sync.
    /// </summary>
    public IReadOnlyList<ulong> SyncDirtyLog()
    {
        lock (_ctl)
        {
            ThrowIfDisposed();
            var pages = new List<ulong>();
            if (_dirtyLog is not { } log)
            {
                return pages;
            }
            var words = MemoryMarshal.Cast<byte, ulong>(log.Span(0, (int)log.Length));
            for (int i = 0; i < words.Length; i++)
            {
                if (Volatile.Read(ref words[i]) == 0)
                {
                    continue;
                }
                ulong w = Interlocked.Exchange(ref words[i], 0);
                while (w != 0)
                {
                    int bit = BitOperations.TrailingZeroCount(w);
                    pages.Add(((ulong)i * 64) + (ulong)bit);
                    w &= w - 1;
                }
            }
            return pages;
        }
    }

    /// <summary>LOG_ALL while logging: added to what SET_FEATURES carries.</summary>
    private ulong LogAllBit => _logging ? Bit(F_LOG_ALL) : 0;

    /// <summary>Ring <paramref name="q"/>'s log_guest_addr while logging (its used ring's IOVA = guest-physical address), else null.</summary>
    private ulong? UsedLogAddress(int q) => _logging ? _vqs[q].Used : null;

    private void SendRingAddresses()
    {
        for (int q = 0; q < _vqs.Length; q++)
        {
            if (_vqs[q].Started)
            {
                var (desc, avail, used) = TranslateRing(q);
                _client.SetVringAddr(q, desc, used, avail, UsedLogAddress(q));
            }
        }
    }

    /// <summary>Gives the back-end a log that covers every DMA mapping, when the current one does not (or there is none).</summary>
    private void EnsureLogCovers()
    {
        ulong end = _memory.End;
        if (_dirtyLog is not null && end <= _dirtyLogCovers)
        {
            return;
        }
        const ulong bitsPerByte = 8, page = 1UL << VhostLogBits.PageShift;
        ulong pages = (end + page - 1) / page;
        ulong bytes = Math.Max(page, (((pages + bitsPerByte - 1) / bitsPerByte) + page - 1) & ~(page - 1));
        var log = MappedMemory.CreateShared($"{Name} dirty log", bytes);
        try
        {
            _client.SetLogBase(bytes, 0, log.Fd!);
        }
        catch
        {
            log.Dispose();
            throw;
        }
        var old = _dirtyLog;
        _dirtyLog = log;
        _dirtyLogCovers = bytes * bitsPerByte * page;
        if (old is not null)
        {
            // The back-end now marks the new log: what it marked in the old one (not synced yet) moves over.
            var from = MemoryMarshal.Cast<byte, ulong>(old.Span(0, (int)old.Length));
            var to = MemoryMarshal.Cast<byte, ulong>(log.Span(0, (int)log.Length));
            for (int i = 0; i < from.Length; i++)
            {
                Interlocked.Or(ref to[i], Interlocked.Exchange(ref from[i], 0));
            }
            old.Dispose();
        }
    }
}
