using System.Buffers.Binary;
using System.Collections.Concurrent;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>The pieces under the session: ring base encoding, the handler interface's defaults, the eventfd fan-in.</summary>
public class FrameworkTests
{
    [Fact]
    public void RingBaseRoundTripsSplitAndPacked()
    {
        Assert.Equal(VdpaVqState.Split(0x1234, 0x1234), VringBase.FromWire(0x1234, packed: false));
        Assert.Equal(0x1234u, VringBase.ToWire(VdpaVqState.Split(0x1234, 0x1234), packed: false));
        var packed = VdpaVqState.Packed(5, true, 3, false);
        Assert.Equal(0x0003_8005u, VringBase.ToWire(packed, packed: true));
        Assert.Equal(packed, VringBase.FromWire(0x0003_8005, packed: true));
    }

    [Fact]
    public void APackedBaseWithoutTheUsedHalfTakesTheAvailPosition()
    {
        // DPDK 22.11 sends only bits 0-15; exactly as sent otherwise.
        Assert.Equal(VdpaVqState.Packed(7, true, 7, true), VringBase.FromFrontEnd(0x8007, packed: true));
        Assert.Equal(VdpaVqState.Packed(7, true, 2, false), VringBase.FromFrontEnd(0x0002_8007, packed: true));
        Assert.Equal(new VdpaVqState(7, 7), VringBase.FromFrontEnd(7, packed: false));
    }

    [Fact]
    public void AnOptionalRequestAHandlerDoesNotImplementIsRefused()
    {
        var (a, b) = UnixSocket.CreatePair();
        using var fe = a;
        using var conn = new VhostUserConnection(b, 2000);
        var log = new ConcurrentQueue<string>();
        var d = new VhostUserRequestDispatcher(conn, new MinimalHandler(), log.Enqueue);

        Assert.True(d.Process(Message(VhostUserRequest.SET_OWNER, 0, [])));
        Assert.True(d.Process(Message(VhostUserRequest.SET_PROTOCOL_FEATURES, 0, U64(1UL << VhostUserProtocolFeature.REPLY_ACK))));
        Assert.True(d.Process(Message(VhostUserRequest.NET_SET_MTU, VhostUserWire.FlagNeedReply, U64(1500))));
        Assert.Equal(1UL, VhostUserReplyReader.ReadU64(fe, (uint)VhostUserRequest.NET_SET_MTU, "NET_SET_MTU", 2000,
            c => VhostUserCodec.Name((VhostUserRequest)c), "back-end"));
        Assert.Contains(log, l => l.Contains("NET_SET_MTU: not supported by this back-end", StringComparison.Ordinal));
        Assert.Equal(1, d.Errors);

        // Without an ack to carry the refusal the connection must end.
        Assert.False(d.Process(Message(VhostUserRequest.NET_SET_MTU, 0, U64(1500))));
    }

    [Fact]
    public void FanInRunsTheHandlerPerSignalAndSurvivesItsFailures()
    {
        using var e0 = EventFd.Create();
        using var e1 = EventFd.Create();
        var seen = new ConcurrentQueue<int>();
        var errors = new ConcurrentQueue<int>();
        using var fanIn = new EventFdFanIn("test fan-in", t =>
        {
            seen.Enqueue(t);
            if (t == 7)
            {
                throw new InvalidOperationException("handler failure");
            }
        }, (t, _) => errors.Enqueue(t), _ => { }, _ => { }, [(7, e0)]);

        e0.Signal();
        Assert.True(SpinWait.SpinUntil(() => errors.Count == 1, 2000));
        fanIn.Update([(7, e0), (9, e1)]);
        e1.Signal();
        Assert.True(SpinWait.SpinUntil(() => seen.Contains(9), 2000));
        fanIn.Update([(9, e1)]);
        e0.Signal(); // no longer in the set: nothing runs for it
        e1.Signal();
        Assert.True(SpinWait.SpinUntil(() => seen.Count(t => t == 9) == 2, 2000));
        Assert.Equal(1, seen.Count(t => t == 7));
    }

    private static byte[] U64(ulong v)
    {
        var p = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, v);
        return p;
    }

    private static VhostUserMessage Message(VhostUserRequest r, uint flags, byte[] payload) =>
        new(r, VhostUserWire.FlagVersion | flags, payload, []);

    /// <summary>Only the required members: every optional request keeps its "unsupported" answer.</summary>
    private sealed class MinimalHandler : IVhostUserBackendHandler
    {
        public ulong GetFeatures() => 0;

        public void SetFeatures(ulong features)
        {
        }

        public ulong GetProtocolFeatures() => 1UL << VhostUserProtocolFeature.REPLY_ACK;

        public void SetProtocolFeatures(ulong features)
        {
        }

        public void SetOwner()
        {
        }

        public void ResetOwner()
        {
        }

        public ulong GetQueueNum() => 1;

        public void SetMemTable(IReadOnlyList<MemoryRegionDesc> regions, IReadOnlyList<SafeFd> fds)
        {
        }

        public void SetVringNum(VringState state)
        {
        }

        public void SetVringAddr(VringAddr addr)
        {
        }

        public void SetVringBase(VringState state)
        {
        }

        public VringState GetVringBase(VringState state) => state;

        public void SetVringKick(uint index, EventFd? kick) => kick?.Dispose();

        public void SetVringCall(uint index, EventFd? call) => call?.Dispose();

        public void SetVringErr(uint index, SafeFd? err) => err?.Dispose();

        public void SetVringEnable(VringState state)
        {
        }
    }
}
