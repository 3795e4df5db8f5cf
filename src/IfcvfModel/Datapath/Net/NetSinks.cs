using IfcVdpa.IfcvfModel.Backends;

namespace IfcVdpa.IfcvfModel.Datapath.Net;

/// <summary>
/// Where a port turns TX frames around (loopback): the RX queue of the transmitting pair, taken on first
/// use and kept for the whole TX burst; its used entries are published once, when the burst ends.
/// </summary>
internal ref struct LocalSink(NetPersonality net, Virtqueue tx) : IFrameSink
{
    private Virtqueue? _rx;
    private RingView _view;
    private UsedMark _old;
    private bool _tried;

    public readonly int SteeringPairs => net.SteeringPairs;

    public readonly bool ForUs(ReadOnlySpan<byte> frame) => net.ForUs(frame);

    public void Deliver(ReadOnlySpan<byte> frame, int pair)
    {
        if (!_tried)
        {
            Open();
        }
        if (_rx is null || _rx.Failed)
        {
            (_rx ?? tx).Drops++;
            return;
        }
        net.Rx.Deliver(_rx, ref _view, frame);
    }

    public void Drop()
    {
        if (!_tried)
        {
            Open();
        }
        (_rx ?? tx).Drops++;
    }

    private void Open()
    {
        _tried = true;
        var cand = net.Engine.Queue(tx.Index - 1);
        if (cand is null || !cand.TryAcquire())
        {
            return;
        }
        _rx = cand;
        _old = cand.UsedMark;
        if (!cand.Failed && !RingView.TryCreate(net.Engine.Dma, cand, out _view))
        {
            net.Engine.Fail(cand, "ring areas outside the DMA map");
        }
    }

    public void Close()
    {
        if (_rx is not { } rx)
        {
            return;
        }
        try
        {
            if (rx.UsedMark != _old)
            {
                UsedRing.Publish(net.Engine, rx, ref _view, _old);
            }
        }
        finally
        {
            rx.Release();
        }
    }
}

/// <summary>
/// Frames from outside (pair peer, TAP) into the RX queue of the pair the port chose (pair 0 when that
/// one is not running). The current RX queue stays taken while consecutive frames go to it; its used
/// entries are published once per run of frames.
/// </summary>
internal ref struct InboundSink(NetPersonality net) : IFrameSink
{
    private QueueBurst _cur;
    private bool _open;

    public readonly int SteeringPairs => net.SteeringPairs;

    public readonly bool ForUs(ReadOnlySpan<byte> frame) => net.ForUs(frame);

    public readonly void Drop() => net.CountInboundDrop();

    public void Deliver(ReadOnlySpan<byte> frame, int pair)
    {
        var engine = net.Engine;
        var rx = engine.Queue(2 * pair);
        if (!engine.IsRunning(rx))
        {
            rx = engine.Queue(0); // that pair's RX ring is not running (e.g. the guest uses fewer pairs)
        }
        if (!_open || rx != _cur.Q)
        {
            Close();
            if (!QueueBurst.TryOpen(engine, rx, out _cur))
            {
                // No RX ring running there: the wire drops what nobody receives.
                net.CountInboundDrop();
                return;
            }
            _open = true;
        }
        if (!_cur.Q.Failed)
        {
            net.Rx.Deliver(_cur.Q, ref _cur.View, frame);
        }
    }

    public void Close()
    {
        if (_open)
        {
            _open = false;
            _cur.Close(net.Engine);
        }
    }
}
