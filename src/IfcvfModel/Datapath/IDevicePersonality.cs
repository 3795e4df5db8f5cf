namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>
/// A device type on top of the virtqueue core (<see cref="VirtqueueEngine"/>), as vdpa_sim's net and blk
/// sit on its core: the core owns queue state, start/stop, the worker, ring errors and the ring walks
/// (<see cref="AvailRing"/>, <see cref="UsedRing"/>, <see cref="QueueBurst"/>); a personality decides what
/// its queues mean and what a chain asks for. The core calls it once per round, never per chain.
/// A virtio-net personality pairs RX/TX queues and has a control queue; a virtio-blk one would take
/// request chains from each of its N request queues (<see cref="SegmentCollector"/> for the header and
/// data buffers, its own device interface for its config space) and needs nothing else from the core.
/// </summary>
internal interface IDevicePersonality : IDisposable
{
    /// <summary>The first queue start on a device: binds to it (checks it is the right device type).</summary>
    void Attach(IVirtqueueDevice device);

    /// <summary>The first queue of a (re)started device: take the negotiated features and the config as they are now.</summary>
    void OnDeviceStart(ulong features);

    /// <summary>One round over the personality's queues (and its backend). Returns the chains and frames handled.</summary>
    int Poll();

    /// <summary>The worker found nothing to do and is about to yield or sleep (flush buffered output).</summary>
    void OnIdle();

    /// <summary>A file descriptor that should wake an event-mode worker besides doorbells, or -1.</summary>
    int WakeFd { get; }

    /// <summary>
    /// A doorbell on <paramref name="queue"/> (any thread, after the core counted it). Returns true when the
    /// personality has woken what serves that queue itself, so the core leaves its worker asleep; false (the
    /// default answer) and the core wakes the worker, which passes the doorbell on in its next round.
    /// </summary>
    bool OnKick(int queue);
}
