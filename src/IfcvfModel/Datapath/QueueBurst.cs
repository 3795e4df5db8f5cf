namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>A queue owned by the worker for one burst: acquired, rings translated, used entries published once at the end.</summary>
internal ref struct QueueBurst
{
    public Virtqueue Q;
    public RingView View;
    private UsedMark _old;

    /// <summary>Takes a running, sound queue; a queue whose rings left the DMA map fails (NEEDS_RESET).</summary>
    public static bool TryOpen(VirtqueueEngine engine, Virtqueue? q, out QueueBurst burst)
    {
        burst = default;
        if (q is null || !q.TryAcquire())
        {
            return false;
        }
        if (q.Failed || !RingView.TryCreate(engine.Dma, q, out burst.View))
        {
            if (!q.Failed)
            {
                engine.Fail(q, "ring areas outside the DMA map");
            }
            q.Release();
            return false;
        }
        burst.Q = q;
        burst._old = q.UsedMark;
        return true;
    }

    /// <summary>Publishes what completed (once) and gives the queue back.</summary>
    public void Close(VirtqueueEngine engine)
    {
        try
        {
            if (Q.UsedMark != _old)
            {
                UsedRing.Publish(engine, Q, ref View, _old);
            }
        }
        finally
        {
            Q.Release(); // also if a bug throws: a queue left Busy would hang StopQueue
        }
    }
}
