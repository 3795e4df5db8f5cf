namespace IfcVdpa.IfcvfModel.Backends.Blk;

/// <summary>
/// Where a block VF's sectors live, as the block personality calls it per request: a struct (the
/// personality is specialised for it, so a request costs no virtual call). Offsets and lengths are in
/// bytes and already checked against <see cref="Capacity"/> by the caller. Each call returns 0 or an errno.
/// Calls come from several request-queue threads at once: implementations are thread-safe.
/// </summary>
internal interface IBlkStore
{
    /// <summary>Bytes in the image (a multiple of 512).</summary>
    long Capacity { get; }

    /// <summary>Whether the store refuses writes.</summary>
    bool ReadOnly { get; }

    /// <summary>Whether unaligned buffers need <c>bounce</c> (O_DIRECT).</summary>
    bool NeedsBounce { get; }

    int Read(Span<byte> destination, long offset, Span<byte> bounce);

    int Write(ReadOnlySpan<byte> source, long offset, Span<byte> bounce);

    /// <summary>Returns when everything written before is on stable storage.</summary>
    int Flush();

    /// <summary>The range may read back as anything afterwards (a hint; an error only when it fails).</summary>
    int Discard(long offset, long length);

    /// <summary>The range reads back as zeroes afterwards (<paramref name="unmap"/>: it may be deallocated).</summary>
    int WriteZeroes(long offset, long length, bool unmap);
}

/// <summary>Gets a backend's store as its concrete struct type (the backend calls <see cref="Use"/> once).</summary>
internal interface IBlkStoreUser<out TResult>
{
    TResult Use<TStore>(TStore store) where TStore : struct, IBlkStore;
}
