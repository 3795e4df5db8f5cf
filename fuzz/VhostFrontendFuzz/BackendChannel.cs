using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.VhostUser;
using IfcVdpa.VhostUser.Frontend;

namespace IfcVdpa.Fuzz;

/// <summary>Bytes consumed in order; zeros once used up (so a short script means "behave").</summary>
public sealed class Script(byte[] bytes)
{
    private int _pos;

    public byte Next() => _pos < bytes.Length ? bytes[_pos++] : (byte)0;

    public void Fill(Span<byte> dst)
    {
        for (int i = 0; i < dst.Length; i++)
        {
            dst[i] = Next();
        }
    }
}

/// <summary>
/// What the hostile back-end pushes on the back-end channel at each checkpoint of the session (run on the
/// harness's thread between front-end calls, so the outcome is deterministic). Per checkpoint one byte n:
/// messages = (n &amp; 3) | ((n &gt;&gt; 3) &amp; 4); bit 2 signal the call eventfds; bit 3 flood the channel with
/// requests that ask for an ack without reading the acks; bit 4 truncate every tmpfs file sent so far (under
/// any mapping the front-end made of it). Per message two bytes c, p: kind = c &amp; 7, bit 3 NEED_REPLY,
/// bit 4 a bad version in the flags, bit 5 the queue; the kinds are 0 CONFIG_CHANGE_MSG, 1 a host notifier
/// (p: descriptor kind, size 1-4 pages, offset 0-3 pages, a second descriptor; c bits 6/7 make the size or the
/// offset unaligned), 2 a removal (p bit 0: with a descriptor), 3 a notifier for a ring that does not exist,
/// 4 an unknown request (IOTLB_MSG for p = 0), 5 garbage (a header whose size lies, then bytes from the
/// script; the channel is not used again), 6 CONFIG_CHANGE_MSG with a payload or a descriptor, 7 a raw
/// 24-byte area from the script with p-chosen descriptors. After the messages comes a barrier (an unknown
/// request with NEED_REPLY): every ack is read and checked (framing, order, value where it is certain), so
/// everything sent was handled before the session goes on.
/// </summary>
public sealed class BackendChannel(FakeBackend backend, HostileFds fds, Script script, Action<string>? trace)
{
    public const uint BarrierCode = 0x7E57;
    public const uint FloodCode = 0x7E58;
    private const int AckTimeoutMs = 2000;

    private enum Expect
    {
        Any,
        Zero,
        NonZero,
    }

    private readonly List<string> _bugs = [];
    private readonly Notifier?[] _last = new Notifier?[2];
    private bool _dead;

    /// <summary>What the harness knows about a ring's doorbell after the last barrier (null: nothing certain).</summary>
    public sealed record Notifier(bool Installed, MappedMemory? Page, ulong Offset);

    public IReadOnlyList<string> Bugs => _bugs;

    /// <summary>False once the channel's outcome is no longer certain (garbage sent): the doorbell checks stop.</summary>
    public bool Certain { get; private set; } = true;

    public Notifier? Last(int q) => _last[q];

    /// <summary>A reset forgets every host notifier.</summary>
    public void Reset()
    {
        _last[0] = _last[1] = new Notifier(false, null, 0);
    }

    public void Checkpoint(VhostUserFrontend fe, int k)
    {
        byte n = script.Next();
        int count = (n & 3) | ((n >> 3) & 4);
        var ch = backend.Channel;
        var pending = new List<(uint Code, Expect Value)>();
        bool malformed = false;
        bool hn = (backend.Acked & (1UL << VhostUserProtocolFeature.HOST_NOTIFIER)) != 0;
        for (int i = 0; i < count; i++)
        {
            byte c = script.Next();
            byte p = script.Next();
            if (ch is null || _dead)
            {
                continue;
            }
            if (!Push(ch, c, p, hn, pending, ref malformed))
            {
                break;
            }
        }
        if (ch is not null && !_dead && (count > 0 || (n & 8) != 0))
        {
            pending.Add((BarrierCode, Expect.NonZero));
            if (Send(ch, BarrierCode, VhostUserWire.FlagVersion | VhostUserWire.FlagNeedReply, [], default))
            {
                ReadAcks(ch, pending, malformed, k);
            }
            if (!_dead)
            {
                for (int q = 0; q < 2; q++)
                {
                    if (_last[q] is { } want && fe.HasHostNotifier(q) != want.Installed)
                    {
                        _bugs.Add($"checkpoint {k}: queue {q} {(want.Installed ? "has no" : "still has a")} host notifier after a {(want.Installed ? "valid install" : "valid removal")}");
                    }
                }
            }
        }
        if ((n & 16) != 0)
        {
            trace?.Invoke($"channel: checkpoint {k}: {fds.ShrinkFiles()} file(s) truncated");
        }
        if ((n & 4) != 0)
        {
            backend.SignalCalls();
        }
        if ((n & 8) != 0 && ch is not null && !_dead)
        {
            Flood(ch, k);
        }
    }

    private bool Push(UnixSocket ch, byte c, byte p, bool hn, List<(uint, Expect)> pending, ref bool malformed)
    {
        int kind = c & 7;
        bool needReply = (c & 8) != 0;
        uint flags = (c & 16) != 0 ? (needReply ? VhostUserWire.FlagNeedReply : 0u) | 2u : VhostUserWire.FlagVersion | (needReply ? VhostUserWire.FlagNeedReply : 0u);
        malformed |= (c & 16) != 0;
        int q = (c >> 5) & 1;
        ulong page = (ulong)HostileFds.Page;
        uint code = (uint)VhostUserBackendRequest.VRING_HOST_NOTIFIER_MSG;
        var payload = new byte[VringArea.WireSize];
        var fdList = new List<int>();
        var expect = Expect.Any;
        Notifier? effect = null; // what a certain outcome does to ring q's doorbell
        bool touchesBoth = false;
        switch (kind)
        {
            case 0:
                code = (uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG;
                payload = [];
                expect = Expect.Zero;
                break;
            case 1:
            {
                int fdKind = p & 7;
                ulong size = ((ulong)((p >> 3) & 3) + 1) * page + ((c & 64) != 0 ? 1UL : 0);
                ulong offset = (ulong)((p >> 5) & 3) * page + ((c & 128) != 0 ? 8UL : 0);
                new VringArea((ulong)q, size, offset).Write(payload);
                fdList.Add(fds.Make(fdKind, out var bell));
                bool two = (p & 128) != 0;
                if (two)
                {
                    fdList.Add(fds.Make(fdKind, out _));
                }
                bool aligned = (c & 192) == 0;
                bool fits = fdKind == 7 ? offset + size <= fds.Dma.Length : offset + size <= (ulong)(HostileFds.FilePages * HostileFds.Page);
                if (!hn || two || !aligned || fdKind is 1 or 2 or 3 or 4 or 5 or 6 || !fits)
                {
                    expect = Expect.NonZero;
                }
                else if (HostileFds.MapsCleanly(fdKind))
                {
                    expect = Expect.Zero;
                    effect = new Notifier(true, bell, offset);
                }
                break;
            }
            case 2:
                new VringArea((ulong)q | VhostUserWire.VringNoFdMask, 0, 0).Write(payload);
                if ((p & 1) != 0)
                {
                    fdList.Add(fds.Make(p >> 1, out _));
                }
                expect = hn && fdList.Count == 0 ? Expect.Zero : Expect.NonZero;
                if (expect == Expect.Zero)
                {
                    effect = new Notifier(false, null, 0);
                }
                break;
            case 3:
                new VringArea(2UL + p, page, 0).Write(payload);
                fdList.Add(fds.Make(0, out _));
                expect = Expect.NonZero;
                break;
            case 4:
                code = p == 0 ? (uint)VhostUserBackendRequest.IOTLB_MSG : 3u + p;
                payload = new byte[8 * (c >> 6)];
                script.Fill(payload);
                expect = Expect.NonZero;
                break;
            case 5:
            {
                // Garbage: a header whose size field lies, then whatever bytes the script holds.
                var junk = new byte[VhostUserWire.HeaderSize + (script.Next() & 31)];
                VhostUserCodec.WriteHeader(junk, 2u + (p & 1u), flags, p >> 1);
                script.Fill(junk.AsSpan(VhostUserWire.HeaderSize));
                trace?.Invoke($"channel: garbage {Convert.ToHexString(junk)}");
                Certain = false;
                _dead = true; // the stream's framing is the front-end's guess from here on
                Raw(ch, junk, default);
                return false;
            }
            case 6:
                code = (uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG;
                payload = (p & 1) != 0 ? new byte[8] : [];
                if ((p & 2) != 0 || payload.Length == 0)
                {
                    fdList.Add(fds.Make(p >> 2, out _));
                }
                expect = Expect.NonZero;
                break;
            default:
                script.Fill(payload);
                for (int i = 0; i < (p & 3); i++)
                {
                    fdList.Add(fds.Make(p >> 2, out _));
                }
                touchesBoth = true;
                break;
        }
        if ((c & 16) != 0)
        {
            expect = Expect.Any; // the front-end closes the channel instead of answering
        }
        trace?.Invoke($"channel: request {code} flags 0x{flags:x} {Convert.ToHexString(payload)} with {fdList.Count} fd(s), expecting {expect}");
        if (touchesBoth || (c & 16) != 0)
        {
            _last[0] = _last[1] = null;
        }
        else if (kind is 1 or 2)
        {
            _last[q] = expect == Expect.NonZero ? _last[q] : effect;
        }
        if (needReply && (c & 16) == 0)
        {
            pending.Add((code, expect));
        }
        return Send(ch, code, flags, payload, [.. fdList]);
    }

    private bool Send(UnixSocket ch, uint code, uint flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fdArray)
    {
        var buf = new byte[VhostUserWire.HeaderSize + payload.Length];
        VhostUserCodec.WriteHeader(buf, code, flags, payload.Length);
        payload.CopyTo(buf.AsSpan(VhostUserWire.HeaderSize));
        return Raw(ch, buf, fdArray);
    }

    private bool Raw(UnixSocket ch, ReadOnlySpan<byte> buf, ReadOnlySpan<int> fdArray)
    {
        try
        {
            if (ch.TrySend(buf, fdArray, AckTimeoutMs))
            {
                return true;
            }
            _bugs.Add("back-end channel: the front-end stopped reading it");
        }
        catch (IOException)
        {
            // the front-end closed the channel (after a malformed message)
        }
        _dead = true;
        return false;
    }

    /// <summary>Reads the acks in order up to the barrier's; the front-end must answer or (after a malformed message) close.</summary>
    private void ReadAcks(UnixSocket ch, List<(uint Code, Expect Value)> pending, bool malformed, int k)
    {
        var got = new List<SafeFd>();
        var h = new byte[VhostUserWire.HeaderSize];
        var v = new byte[8];
        try
        {
            foreach (var (code, want) in pending)
            {
                ch.ReceiveExact(h, got, AckTimeoutMs);
                var (rc, rflags, size) = VhostUserCodec.ReadHeader(h);
                if (rflags != VhostUserWire.ReplyFlags || size != 8)
                {
                    _bugs.Add($"checkpoint {k}: back-end channel ack with flags 0x{rflags:x}, size {size}");
                    _dead = true;
                    return;
                }
                ch.ReceiveExact(v, got, AckTimeoutMs);
                ulong value = BinaryPrimitives.ReadUInt64LittleEndian(v);
                trace?.Invoke($"channel: ack {rc} = {value}");
                if (rc != code)
                {
                    _bugs.Add($"checkpoint {k}: back-end channel ack for request {rc}, expected one for {code}");
                    _dead = true;
                    return;
                }
                if ((want == Expect.Zero && value != 0) || (want == Expect.NonZero && value == 0))
                {
                    _bugs.Add($"checkpoint {k}: back-end channel request {code} acked {value}, expected {want}");
                }
                if (got.Count != 0)
                {
                    _bugs.Add($"checkpoint {k}: back-end channel ack carries {got.Count} descriptor(s)");
                }
            }
        }
        catch (EndOfStreamException)
        {
            _dead = true;
            if (!malformed)
            {
                _bugs.Add($"checkpoint {k}: the front-end closed the back-end channel although every message was well-formed");
            }
        }
        catch (TimeoutException)
        {
            _dead = true;
            _bugs.Add($"checkpoint {k}: no ack on the back-end channel within {AckTimeoutMs} ms (channel neither answered nor closed)");
        }
        catch (IOException)
        {
            _dead = true;
        }
        finally
        {
            foreach (var f in got)
            {
                f.Dispose();
            }
        }
    }

    /// <summary>
    /// A back-end that asks for acks and never reads them: the front-end's channel must give up on it
    /// (log, close the channel) and never crash or hang. The acks that were sent are drained afterwards.
    /// </summary>
    private void Flood(UnixSocket ch, int k)
    {
        var msg = new byte[VhostUserWire.HeaderSize];
        VhostUserCodec.WriteHeader(msg, FloodCode, VhostUserWire.FlagVersion | VhostUserWire.FlagNeedReply, 0);
        int sent = 0;
        try
        {
            while (sent < 8192 && ch.TrySend(msg, default, 100))
            {
                sent++;
            }
        }
        catch (IOException)
        {
        }
        trace?.Invoke($"channel: checkpoint {k}: flooded {sent} requests");
        _dead = true; // the front-end may have given up on the channel: not used again
        Certain = false;
        var got = new List<SafeFd>();
        var ack = new byte[VhostUserWire.HeaderSize + 8];
        try
        {
            for (int i = 0; i < sent; i++)
            {
                ch.ReceiveExact(ack, got, AckTimeoutMs);
            }
        }
        catch (TimeoutException)
        {
            _bugs.Add($"checkpoint {k}: after a flood the back-end channel neither answered nor closed within {AckTimeoutMs} ms");
        }
        catch (IOException)
        {
            // closed: fine
        }
        finally
        {
            foreach (var f in got)
            {
                f.Dispose();
            }
        }
    }
}
