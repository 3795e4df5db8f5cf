using System.Collections.Concurrent;
using IfcVdpa.Ifcvf;
using IfcVdpa.IfcvfModel;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.IfcvfModel.Datapath;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Tests;

/// <summary>Polling for a condition with a deadline (the tests' one way of waiting).</summary>
public static class Wait
{
    public static bool Until(Func<bool> cond, int timeoutMs = 5000, int pollMs = 10)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (!cond())
        {
            if (Environment.TickCount64 > deadline)
            {
                return false;
            }
            Thread.Sleep(pollMs);
        }
        return true;
    }
}

/// <summary>A session on one end of a socketpair (served on a thread), the test front-end on the other.</summary>
public sealed class SessionHarness : IDisposable
{
    private readonly Thread _thread;

    public SessionHarness(IVdpaDevice device, int payloadTimeoutMs = 2000)
    {
        Device = device;
        var (a, b) = UnixSocket.CreatePair();
        Fe = new TestFrontEnd(a);
        var options = new VhostUserSessionOptions { Log = Logs.Enqueue, PayloadTimeoutMs = payloadTimeoutMs, Name = "test" };
        Session = new VhostUserSession(device, new VhostUserConnection(b, payloadTimeoutMs), options);
        _thread = new Thread(() => Session.Run()) { IsBackground = true };
        _thread.Start();
    }

    public IVdpaDevice Device { get; }

    public TestFrontEnd Fe { get; }

    public VhostUserSession Session { get; }

    public ConcurrentQueue<string> Logs { get; } = new();

    public string LogText => string.Join('\n', Logs);

    /// <summary>True once the session has ended (connection closed by the back-end or the front-end).</summary>
    public bool WaitEnded(int timeoutMs = 5000) => _thread.Join(timeoutMs);

    public bool Logged(string fragment) => Logs.Any(l => l.Contains(fragment, StringComparison.Ordinal));

    public void Dispose()
    {
        Fe.Dispose();
        _thread.Join(5000);
        Session.Dispose();
    }
}

/// <summary>The real stack under the back-end: a software IFC VF with the datapath engine, probed by IfcvfAdapter.</summary>
public sealed class RealDevice : IDisposable
{
    public RealDevice(int pairs = 1, EngineMode mode = EngineMode.Event, NetBackend? backend = null, string address = "sim:07.0", Action<string>? log = null, ulong extraFeatures = 0, IReadOnlySet<int>? refuseQueueEnable = null, bool dirtyLog = true)
    {
        // Strict (issue 17 part 3): a register rule the project's driver broke while serving the front-end would
        // set NEEDS_RESET; Dispose checks that nothing but the front-end's own ring faults and the IFC VF
        // extensions was reported.
        Vf = new SoftIfcVf(new SoftIfcVfOptions { Address = address, QueuePairs = pairs, DeviceFeatures = SoftIfcVfOptions.DefaultFeatures | extraFeatures, RefuseQueueEnable = refuseQueueEnable, DirtyLog = dirtyLog, Strict = true, Log = SpecLogs.Enqueue });
        Engine = new VirtioNetEngine(backend ?? NetBackend.Loopback(), new EngineOptions { Mode = mode, Log = log ?? (_ => { }) });
        Vf.AttachEngine(Engine);
        Adapter = IfcvfAdapter.Probe(Vf, new IfcvfAdapterOptions { Name = "vdpa-vu" });
    }

    public SoftIfcVf Vf { get; }

    public VirtioNetEngine Engine { get; }

    public IfcvfAdapter Adapter { get; }

    /// <summary>What the strict VF reported (the first violation of each rule).</summary>
    public ConcurrentQueue<string> SpecLogs { get; } = new();

    /// <summary>
    /// The project's driver broke no rule: the only violations are IFC VF extensions (queue_enable = 0 on a
    /// ring stop) and ring rules, which only the front-end's rings can break (a hostile front-end test).
    /// </summary>
    public void AssertDriverKeptTheRules()
    {
        foreach (var (rule, count) in Vf.Violations)
        {
            Assert.True(rule.Extension || rule.Rule >= SpecRule.AvailAhead, $"the project's driver broke {rule.Counter} x{count}: {string.Join(" | ", SpecLogs)}");
        }
    }

    public void Dispose()
    {
        AssertDriverKeptTheRules();
        Adapter.Dispose();
        Vf.AttachEngine(null);
        Engine.Dispose();
        Vf.Dispose();
    }
}
