using System.Collections.Concurrent;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Hardening.Tests;

/// <summary>Every hardening test counts process-wide descriptors and memory: they must not run in parallel.</summary>
[CollectionDefinition("hardening", DisableParallelization = true)]
public sealed class HardeningCollection;

public static class Proc
{
    /// <summary>Open descriptors of this process (the back-end and the test front-ends share it).</summary>
    public static int FdCount() => Directory.GetFiles("/proc/self/fd").Length;

    /// <summary>Resident set size in bytes.</summary>
    public static long Rss()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
            }
        }
        return 0;
    }

    /// <summary>CPU ticks (utime + stime) of each thread, by "tid name".</summary>
    public static Dictionary<string, long> ThreadTicks()
    {
        var d = new Dictionary<string, long>();
        foreach (var t in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                string stat = File.ReadAllText(Path.Combine(t, "stat"));
                int close = stat.LastIndexOf(')');
                string name = stat[(stat.IndexOf('(') + 1)..close];
                var f = stat[(close + 2)..].Split(' ');
                d[$"{Path.GetFileName(t)} {name}"] = long.Parse(f[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(f[12], System.Globalization.CultureInfo.InvariantCulture);
            }
            catch (IOException)
            {
                // the thread ended
            }
        }
        return d;
    }

    /// <summary>The three threads that used most CPU since <paramref name="before"/> (ticks of 10 ms).</summary>
    public static string BusiestThreads(Dictionary<string, long> before) => string.Join(", ", ThreadTicks()
        .Select(kv => (kv.Key, Ticks: kv.Value - before.GetValueOrDefault(kv.Key)))
        .OrderByDescending(x => x.Ticks).Take(3).Select(x => $"[{x.Key}] {x.Ticks * 10} ms"));

    /// <summary>Collects garbage so descriptors only a finalizer would close do not count as held.</summary>
    public static void Settle()
    {
        for (int i = 0; i < 2; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    public static bool WaitFor(Func<bool> cond, int timeoutMs = 5000) => Wait.Until(cond, timeoutMs, 5);
}

/// <summary>One vDPA device (SoftIfcVf + engine + IfcvfAdapter) served by a VhostUserBackend on its own socket.</summary>
public sealed class BackendHost : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ifcvf-hard").FullName;

    public BackendHost(string name, int payloadTimeoutMs = 1000, NetBackend? net = null, string address = "sim:07.0", ulong extraFeatures = 0)
    {
        Dev = new RealDevice(backend: net, address: address, log: EngineLogs.Enqueue, extraFeatures: extraFeatures);
        SocketPath = Path.Combine(_dir, "vhost.sock");
        Backend = new VhostUserBackend(Dev.Adapter, new VhostUserBackendOptions
        {
            SocketPath = SocketPath,
            Session = new VhostUserSessionOptions { Log = Logs.Enqueue, PayloadTimeoutMs = payloadTimeoutMs, Name = name },
        });
        Backend.Start();
    }

    public RealDevice Dev { get; }

    public VhostUserBackend Backend { get; }

    public string SocketPath { get; }

    public ConcurrentQueue<string> Logs { get; } = new();

    /// <summary>What the datapath engine logged (ring errors, backend failures).</summary>
    public ConcurrentQueue<string> EngineLogs { get; } = new();

    public string LogText => string.Join('\n', Logs);

    public bool Logged(string fragment) => Logs.Any(l => l.Contains(fragment, StringComparison.Ordinal));

    private long _connects;

    public TestFrontEnd Connect()
    {
        var fe = new TestFrontEnd(UnixSocket.Connect(SocketPath));
        Interlocked.Increment(ref _connects);
        return fe;
    }

    /// <summary>
    /// True once every front-end connected through <see cref="Connect"/> has been served and the last
    /// session is torn down completely. The back-end clears <see cref="VhostUserBackend.Session"/> before
    /// it disposes the session (descriptors, mappings, the kick relay) and logs "front-end #N gone" after,
    /// so the log line is the barrier: a descriptor count taken earlier can still see the session's fds.
    /// </summary>
    public bool WaitIdle(int timeoutMs = 5000)
    {
        long connects = Interlocked.Read(ref _connects);
        return Proc.WaitFor(() =>
        {
            long n = Backend.Connections;
            return n >= connects && Backend.Session is null && (n == 0 || Logged($"front-end #{n} gone"));
        }, timeoutMs);
    }

    /// <summary>A whole good session: bring-up, one frame looped back, disconnect, teardown complete.</summary>
    public void GoodSession(byte seed)
    {
        Assert.True(WaitIdle(), LogText);
        using var mem = new GuestMemoryFixture();
        using (var fe = Connect())
        using (var net = new VirtioNetFrontEnd(fe, mem))
        {
            net.Start();
            var f = VirtioNetFrontEnd.Frame(64, seed);
            net.Send(1, f);
            Assert.Equal(f, net.Receive(0, 1));
        }
        Assert.True(WaitIdle(), LogText); // callers count descriptors right after a good session
    }

    public void Dispose()
    {
        Backend.Dispose();
        Dev.Dispose();
        Directory.Delete(_dir, true);
    }
}

/// <summary>
/// A second device on another socket with a good front-end connected for the whole test: after each
/// hostile act it must still pass traffic.
/// </summary>
public sealed class Bystander : IDisposable
{
    private readonly GuestMemoryFixture _mem = new();
    private readonly TestFrontEnd _fe;
    private readonly VirtioNetFrontEnd _net;
    private ushort _rx;

    public Bystander()
    {
        Host = new BackendHost("bystander", address: "sim:08.0");
        _fe = Host.Connect();
        _net = new VirtioNetFrontEnd(_fe, _mem);
        _net.Start();
    }

    public BackendHost Host { get; }

    /// <summary>Sends one frame and checks it comes back (the RX ring holds 16 buffers: refilled as needed).</summary>
    public void Ping(byte seed)
    {
        if (_rx > 0 && _rx % VirtioNetFrontEnd.RxBuffers == 0)
        {
            // Re-post the 16 RX buffers.
            for (int i = 0; i < VirtioNetFrontEnd.RxBuffers; i++)
            {
                _mem.PushAvail(0, VirtioNetFrontEnd.Num, (ushort)i);
            }
            Assert.True(_net.Kicks[0].Signal());
        }
        var f = VirtioNetFrontEnd.Frame(60 + seed, seed);
        _net.Send(1, f);
        _rx++;
        Assert.Equal(f, _net.Receive(0, _rx));
    }

    public void Dispose()
    {
        _fe.Dispose();
        Host.WaitIdle();
        _net.Dispose();
        Host.Dispose();
        _mem.Dispose();
    }
}
