using IfcVdpa.VhostUser;
using static IfcVdpa.Virtio.VirtioFeature;

namespace IfcVdpa.Fuzz;

/// <summary>
/// One input of the front-end harness:
/// <code>
/// [0] back-end features: bit0 PROTOCOL_FEATURES, 1 VERSION_1, 2 MTU, 3 RING_PACKED, 4 EVENT_IDX,
///     5 CTRL_VQ|MQ, 6 ACCESS_PLATFORM|LOG_ALL, 7 MAC|STATUS|MRG_RXBUF
/// [1..2] protocol features offered, bits 0-15 (LE)
/// [3] bit0 STATUS (protocol bit 16) offered; session: 1 second bring-up after the reset, 2 Suspend/Resume,
///     3 SetConfig, 4 switch ring 0's callback kind while running, 5 stop ring 1 (not 0), 6 the front-end
///     does not ask for CONFIGURE_MEM_SLOTS, 7 Dispose while running (no final Reset)
/// [4] driver: 0 takes EVENT_IDX, 1 takes RING_PACKED, 2 eventfd callbacks, 3 no DmaMap, 4 DmaUnmap before
///     the reset, 5 restart the stopped ring, 6 ring 1's used ring outside the mapping, 7 no initial Reset
/// [5] ring size: 2^(low nibble), at most 1024
/// [6] L, then L bytes of checkpoint script (<see cref="BackendChannel"/>), then the reply script (<see cref="FakeBackend"/>)
/// </code>
/// The session: Connect → checkpoint 0 → Reset → ACKNOWLEDGE, DRIVER, features, FEATURES_OK → DmaMap →
/// checkpoint 1 → rings (size, addresses, callback, ready) → DRIVER_OK → checkpoint 2 → kick both →
/// GetConfig (SetConfig, Suspend/Resume) → checkpoint 3 → stop a ring, GetVqState (restart) → checkpoint 4
/// → (DmaUnmap) Reset → checkpoint 5 → (second bring-up, kicks, checkpoint 6) → Dispose.
/// </summary>
public sealed class FrontendInput
{
    public const int HeaderSize = 7;
    public const ulong Iova = 0x10_0000;
    public const ulong DmaSize = 0x1_0000;
    public const string DmaName = "fuzz-fe-dma";
    public const int ReplyTimeoutMs = 20;

    // Flags: (header byte << 8) | bit.
    public const int StatusOffered = (3 << 8) | 1;
    public const int SecondSession = (3 << 8) | 2;
    public const int SuspendResume = (3 << 8) | 4;
    public const int SetConfig = (3 << 8) | 8;
    public const int ToggleCallback = (3 << 8) | 16;
    public const int StopQueue1 = (3 << 8) | 32;
    public const int NoMemSlots = (3 << 8) | 64;
    public const int DisposeRunning = (3 << 8) | 128;
    public const int DriverEventIdx = (4 << 8) | 1;
    public const int DriverPacked = (4 << 8) | 2;
    public const int EventFdCallbacks = (4 << 8) | 4;
    public const int NoDma = (4 << 8) | 8;
    public const int Unmap = (4 << 8) | 16;
    public const int Restart = (4 << 8) | 32;
    public const int MisplacedRing = (4 << 8) | 64;
    public const int SkipFirstReset = (4 << 8) | 128;

    public const byte AllFeatures = 0xFF;
    public const ulong AllProtocol = 0xFFFF;

    private static readonly ulong[] s_featureGroups =
    [
        1UL << F_PROTOCOL_FEATURES,
        1UL << F_VERSION_1,
        1UL << NET_F_MTU,
        1UL << F_RING_PACKED,
        1UL << F_RING_EVENT_IDX,
        (1UL << NET_F_CTRL_VQ) | (1UL << NET_F_MQ),
        (1UL << F_ACCESS_PLATFORM) | (1UL << F_LOG_ALL),
        (1UL << NET_F_MAC) | (1UL << NET_F_STATUS) | (1UL << NET_F_MRG_RXBUF),
    ];

    private readonly byte[] _h = new byte[HeaderSize];

    public byte[] Checkpoints { get; private set; } = [];

    public byte[] Replies { get; private set; } = [];

    public bool Has(int flag) => (_h[flag >> 8] & (flag & 0xFF)) != 0;

    public ulong BackendFeatures
    {
        get
        {
            ulong f = 0;
            for (int i = 0; i < 8; i++)
            {
                if ((_h[0] & (1 << i)) != 0)
                {
                    f |= s_featureGroups[i];
                }
            }
            return f;
        }
    }

    public ulong BackendProtocol => _h[1] | ((ulong)_h[2] << 8) | (Has(StatusOffered) ? 1UL << VhostUserProtocolFeature.STATUS : 0);

    /// <summary>What the driver asks for (ANDed with what the device offers).</summary>
    public ulong DriverFeatures =>
        (1UL << F_VERSION_1) | (1UL << F_ACCESS_PLATFORM) | (1UL << NET_F_MAC) | (1UL << NET_F_STATUS) |
        (1UL << NET_F_MRG_RXBUF) | (1UL << NET_F_MTU) |
        (Has(DriverEventIdx) ? 1UL << F_RING_EVENT_IDX : 0) | (Has(DriverPacked) ? 1UL << F_RING_PACKED : 0);

    public uint QueueSize => 1u << Math.Min(_h[5] & 15, 10);

    public static FrontendInput Parse(ReadOnlySpan<byte> data)
    {
        var inp = new FrontendInput();
        data[..Math.Min(HeaderSize, data.Length)].CopyTo(inp._h);
        var rest = data.Length > HeaderSize ? data[HeaderSize..] : [];
        int l = Math.Min(inp._h[6], rest.Length);
        inp.Checkpoints = rest[..l].ToArray();
        inp.Replies = rest[l..].ToArray();
        return inp;
    }

    /// <summary>Ring q: desc at Iova + q*0x8000, avail +0x4000, used +0x5000 (room for 1024 entries); misplaced: ring 1's used ring ends outside.</summary>
    public static (ulong Desc, ulong Avail, ulong Used) Ring(int q, bool misplaced)
    {
        ulong b = Iova + ((ulong)q * 0x8000);
        return (b, b + 0x4000, misplaced && q == 1 ? Iova + DmaSize - 8 : b + 0x5000);
    }

    // ---- building inputs (seeds) ---------------------------------------------------------------------

    public sealed class Builder
    {
        private readonly byte[] _h = new byte[HeaderSize];
        private readonly List<byte> _cp = [];
        private readonly List<byte> _replies = [];

        public Builder(byte features = AllFeatures, ulong protocol = AllProtocol | (1UL << VhostUserProtocolFeature.STATUS), uint queueSize = 256)
        {
            _h[0] = features;
            _h[1] = (byte)protocol;
            _h[2] = (byte)(protocol >> 8);
            if ((protocol & (1UL << VhostUserProtocolFeature.STATUS)) != 0)
            {
                _h[3] |= 1;
            }
            _h[5] = (byte)System.Numerics.BitOperations.Log2(queueSize);
        }

        public Builder With(int flag)
        {
            _h[flag >> 8] |= (byte)(flag & 0xFF);
            return this;
        }

        /// <summary>Checkpoint <paramref name="k"/> (earlier ones get empty entries): flag bits plus messages (c, p).</summary>
        public Builder At(int k, byte flagBits, params (byte C, byte P)[] messages)
        {
            while (CheckpointCount < k)
            {
                _cp.Add(0);
                CheckpointCount++;
            }
            int n = messages.Length;
            _cp.Add((byte)(flagBits | (n & 3) | ((n & 4) << 3)));
            foreach (var (c, p) in messages)
            {
                _cp.Add(c);
                _cp.Add(p);
            }
            CheckpointCount++;
            return this;
        }

        private int CheckpointCount { get; set; }

        /// <summary>Directive for request number <paramref name="index"/> (0-based; earlier ones are valid replies).</summary>
        public Builder Reply(int index, byte directive, params byte[] extra)
        {
            while (_replies.Count < index)
            {
                _replies.Add(0);
            }
            _replies.Add(directive);
            _replies.AddRange(extra);
            return this;
        }

        public byte[] ToArray()
        {
            _h[6] = (byte)_cp.Count;
            return [.. _h, .. _cp, .. _replies];
        }
    }

    /// <summary>Channel message bytes: kind | NEED_REPLY | queue.</summary>
    public static byte Msg(int kind, int q = 0, bool needReply = true) => (byte)(kind | (needReply ? 8 : 0) | (q << 5));

    /// <summary>
    /// Inputs that once crashed the front-end's process (also written by --seeds into corpus/; copied to regressions/):
    /// a back-end that floods the channel with requests asking for acks and never reads them (the ack send timed
    /// out with an exception nobody caught on the channel thread); a doorbell in an unsealed tmpfs file that the
    /// back-end truncates after the front-end mapped it (the next kick faulted: SIGBUS); a doorbell on /dev/zero.
    /// </summary>
    public static byte[] UnreadAcks() => new Builder().At(0, 8).ToArray();

    public static byte[] TruncatedDoorbell() => new Builder().At(2, 16, (Msg(1, 1), 5)).ToArray();

    /// <summary>A doorbell on /dev/zero at offset 3 pages: the mapping succeeded and the first kick faulted (SIGBUS).</summary>
    public static byte[] DevZeroDoorbell() => new Builder().At(2, 0, (Msg(1, 0), 4 | (3 << 5))).ToArray();

    public static IEnumerable<(string, byte[])> Seeds()
    {
        yield return ("regression-unread-acks", UnreadAcks());
        yield return ("regression-truncated-doorbell", TruncatedDoorbell());
        yield return ("regression-dev-zero-doorbell", DevZeroDoorbell());
        yield return ("clean", new Builder().ToArray());
        yield return ("clean-second-session", new Builder().With(SecondSession).With(Restart).With(DriverEventIdx).ToArray());
        // Host notifiers: a sealed memfd page for each ring, kicks, one removed, then a config change.
        yield return ("notifier-install-kick-remove", new Builder()
            .At(2, 0, (Msg(1, 0), 0x00), (Msg(1, 1), (byte)(0x20 | 0x08)))
            .At(3, 0, (Msg(2, 0), 0), (Msg(0), 0))
            .With(Restart).ToArray());
        yield return ("notifier-dispose-running", new Builder().At(2, 0, (Msg(1, 0), 0), (Msg(1, 1), 7)).With(DisposeRunning).ToArray());
        yield return ("notifier-other-fds", new Builder()
            .At(2, 0, (Msg(1, 0), 4), (Msg(1, 1), 7), (Msg(1, 0), 1), (Msg(1, 1), 3), (Msg(1, 0, needReply: false), 6))
            .At(3, 0, (Msg(3), 0), (Msg(4), 0), (Msg(6), 1), (Msg(2, 1), 1))
            .ToArray());
        yield return ("notifier-tmpfs", new Builder().At(2, 0, (Msg(1, 1), 5)).With(SuspendResume).ToArray());
        yield return ("channel-garbage", new Builder().At(1, 0, (Msg(0), 0), (Msg(5), 48)).ToArray());
        yield return ("channel-bad-version", new Builder().At(0, 4, ((byte)(Msg(0) | 16), 0)).ToArray());
        // Bad replies (request numbers as the clean session sends them).
        yield return ("bad-reply-code", new Builder().Reply(0, 7).ToArray());
        yield return ("bad-reply-timeout", new Builder().Reply(33, 12).ToArray());
        yield return ("bad-reply-fds", new Builder().Reply(3, 11 | (3 << 4)).ToArray());
        yield return ("bad-reply-extra", new Builder().Reply(1, 10 | (5 << 4), 0x0F, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0).ToArray());
        yield return ("refused-features", new Builder().With(SetConfig).With(ToggleCallback).Reply(12, 6 | (1 << 4)).ToArray());
        yield return ("no-protocol", new Builder(features: 0xFE).With(EventFdCallbacks).ToArray());
        yield return ("memtable-unmap", new Builder(protocol: AllProtocol & ~(1UL << VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS))
            .With(Unmap).With(SecondSession).With(StopQueue1).ToArray());
        yield return ("packed-dispose-running", new Builder(queueSize: 1024).With(DriverPacked).With(DisposeRunning).ToArray());
        yield return ("misplaced-nodma", new Builder().With(MisplacedRing).With(NoMemSlots).With(SkipFirstReset).ToArray());
    }
}
