namespace IfcVdpa.IfcvfModel.Datapath;

/// <summary>How the engine's worker runs.</summary>
public enum EngineMode
{
    /// <summary>A dedicated worker spins over the queues (like a NIC's engine).</summary>
    Poll,

    /// <summary>Doorbells (and a pair peer, and a TAP) wake the worker; it sleeps when idle.</summary>
    Event,

    /// <summary>No worker: the owner calls PollOnce (tests, benchmarks).</summary>
    Manual,
}

/// <summary>Options of a virtqueue engine (<see cref="VirtioNetEngine"/>).</summary>
public sealed record EngineOptions
{
    public EngineMode Mode { get; init; } = EngineMode.Event;

    /// <summary>Pins the worker to this CPU (sched_setaffinity), if set.</summary>
    public int? CpuAffinity { get; init; }

    /// <summary>Most chains handled per queue per round (one used-index publication per burst).</summary>
    public int Burst { get; init; } = 64;

    /// <summary>Where ring errors and worker problems are logged (default: standard error).</summary>
    public Action<string>? Log { get; init; }
}
