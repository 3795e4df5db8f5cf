namespace IfcVdpa.IfcvfModel.Backends;

/// <summary>
/// Two VFs back to back: one's TX is the other's RX. Each side pushes what its VF sends into its own
/// <see cref="FrameRing"/>, wakes the peer's worker through the peer's <see cref="INetBackendHost"/>,
/// and receives from the peer's ring.
/// </summary>
internal sealed class PairBackend : NetBackend
{
    private readonly FrameRing _outbound;
    private PairBackend? _peer;

    private PairBackend(int slots) => _outbound = new FrameRing(slots);

    public static (NetBackend A, NetBackend B) Create(int slots)
    {
        var a = new PairBackend(slots);
        var b = new PairBackend(slots);
        a._peer = b;
        b._peer = a;
        return (a, b);
    }

    public override bool LinkUp => _peer is { Disposed: false };

    private protected override TResult OpenPort<TResult>(INetPortUser<TResult> user) => user.Use(new Port(this));

    public override string ToString() => "pair";

    private protected override void Close() => _peer?.Host?.LinkChanged(false); // the cable is pulled

    private readonly struct Port(PairBackend self) : INetPort
    {
        public int WakeFd => -1;

        public bool HoldsWhileStopped => false;

        public bool Transmit<TSink>(ReadOnlySpan<byte> frame, int pair, ref TSink local) where TSink : IFrameSink, allows ref struct =>
            self._peer?.Host is not null && self._outbound.TryPush(frame, pair);

        public void TxBurstDone() => self._peer?.Host?.Wake();

        public int Receive<TSink>(ref TSink sink, int max) where TSink : IFrameSink, allows ref struct
        {
            var ring = self._peer?._outbound;
            int n = 0;
            while (ring is not null && n < max && ring.TryPeek(out var frame, out int pair))
            {
                sink.Deliver(frame, pair % sink.SteeringPairs);
                ring.Pop();
                n++;
            }
            return n;
        }

        public void Idle()
        {
        }
    }
}
