using IfcVdpa.Interop.Primitives;
using Microsoft.Win32.SafeHandles;

namespace IfcVdpa.Fuzz;

/// <summary>
/// The descriptors a hostile back-end attaches (to replies and to back-end channel messages), all owned
/// here and closed at the end of the input (the kernel gave the front-end its own copies). Kinds:
/// 0 a sealed 4-page memfd (what a good back-end sends; mapped here so doorbell writes can be checked),
/// 1 an eventfd, 2 /dev/null, 3 a socket, 4 /dev/zero, 5 an unsealed 4-page tmpfs file the back-end may
/// shrink later (<see cref="ShrinkFiles"/>), 6 the same kind of file opened read-only, 7 the driver's own
/// DMA memfd (the doorbell inside guest memory). Safe to use from the fake back-end's thread and the
/// harness's thread.
/// </summary>
public sealed class HostileFds : IDisposable
{
    public const int Kinds = 8;
    public const int FilePages = 4;
    public const string MemfdName = "fuzz-fe-bell";
    public const string FilePrefix = "fuzz-fe-file-";

    private static readonly string s_tmpfs = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
    private static int s_files;

    private readonly Lock _lock = new();
    private readonly List<IDisposable> _owned = [];
    private readonly List<SafeFileHandle> _shrinkable = [];

    public HostileFds(MappedMemory dma) => Dma = dma;

    /// <summary>The driver's memory (kind 7).</summary>
    public MappedMemory Dma { get; }

    public static int Page => Environment.SystemPageSize;

    /// <summary>True for the kinds a front-end takes as a doorbell (sealed memfds), when the area lies inside the file.</summary>
    public static bool MapsCleanly(int kind) => kind is 0 or 7;

    /// <summary>
    /// Makes a descriptor of <paramref name="kind"/>; for kind 0 also returns the harness's own mapping of it
    /// (filled with 0xFF, so a doorbell write shows).
    /// </summary>
    public int Make(int kind, out MappedMemory? page)
    {
        page = null;
        lock (_lock)
        {
            switch (kind & 7)
            {
                case 0:
                {
                    var m = MappedMemory.CreateShared(MemfdName, (ulong)(FilePages * Page));
                    m.Span(0, FilePages * Page).Fill(0xFF);
                    _owned.Add(m);
                    page = m;
                    return m.Fd!.Fd;
                }
                case 1:
                {
                    var e = EventFd.Create();
                    _owned.Add(e);
                    return e.Fd;
                }
                case 2:
                    return Keep(File.OpenHandle("/dev/null", FileMode.Open, FileAccess.ReadWrite));
                case 3:
                {
                    var (a, b) = UnixSocket.CreatePair();
                    _owned.Add(a);
                    _owned.Add(b);
                    return b.Fd;
                }
                case 4:
                    return Keep(File.OpenHandle("/dev/zero", FileMode.Open, FileAccess.ReadWrite));
                case 5:
                case 6:
                {
                    string path = Path.Combine(s_tmpfs, $"{FilePrefix}{Environment.ProcessId}-{Interlocked.Increment(ref s_files)}");
                    var rw = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
                    try
                    {
                        RandomAccess.SetLength(rw, FilePages * Page);
                        if (kind == 5)
                        {
                            _shrinkable.Add(rw);
                            return Keep(rw);
                        }
                        return Keep(File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete));
                    }
                    finally
                    {
                        File.Delete(path);
                        if (kind == 6)
                        {
                            rw.Dispose();
                        }
                    }
                }
                default:
                    return Dma.Fd!.Fd;
            }
        }
    }

    private int Keep(SafeFileHandle h)
    {
        _owned.Add(h);
        return (int)h.DangerousGetHandle();
    }

    /// <summary>What a hostile back-end can do to a file it shared: truncate it under the front-end's mapping.</summary>
    public int ShrinkFiles()
    {
        lock (_lock)
        {
            foreach (var h in _shrinkable)
            {
                RandomAccess.SetLength(h, 0);
            }
            return _shrinkable.Count;
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var o in _owned)
            {
                o.Dispose();
            }
            _owned.Clear();
            _shrinkable.Clear();
        }
    }
}
