using System.Diagnostics;
using IfcVdpa.Fuzz;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.VhostUser;
using IfcVdpa.VhostUser.Frontend;
using IfcVdpa.Virtio;

// Target: the vhost-user FRONT-END (VhostUserFrontend) against a hostile back-end. One input is a script
// for a fake back-end on a socketpair (FrontendInput describes the layout): which features it offers, how
// it answers each request of a fixed driver-like session, and what it pushes on the back-end channel
// between the session's steps. Invariants: only the documented exception types escape, teardown never
// throws or hangs, descriptors and host-notifier mappings do not outlive the front-end, and what the
// front-end sends stays well-formed (FakeBackend) and what it acks is right (BackendChannel).
return FuzzDriver.Run(args, FrontendTarget.Run, FrontendTarget.Seeds);

internal static class FrontendTarget
{
    private const int DisposeLimitMs = 3000;
    private static readonly bool s_debug = Environment.GetEnvironmentVariable("FUZZ_DEBUG") is not null;
    private static readonly string[] s_mapMarkers = [HostileFds.MemfdName, HostileFds.FilePrefix, "/dev/zero", FrontendInput.DmaName];
    private static MappedMemory? s_dma;
    private static int[] s_mapBaseline = [];

    public static void Run(ReadOnlySpan<byte> input)
    {
        if (s_dma is null)
        {
            s_dma = MappedMemory.CreateShared(FrontendInput.DmaName, FrontendInput.DmaSize);
            s_mapBaseline = CountMaps();
        }
        int before = CountFds();
        RunOne(input);
        CheckLeaks(before);
    }

    /// <summary>
    /// Open descriptors of the kinds the front-end and the hostile back-end create (sockets, eventfds, the
    /// harness's memfds and files, /dev/null, /dev/zero); not the runtime's (assemblies it loads lazily).
    /// </summary>
    private static int CountFds()
    {
        int n = 0;
        foreach (var f in Directory.EnumerateFiles("/proc/self/fd"))
        {
            string? t;
            try
            {
                t = new FileInfo(f).LinkTarget;
            }
            catch (IOException)
            {
                continue; // closed meanwhile (the directory's own descriptor)
            }
            if (t is not null && (t.StartsWith("socket:", StringComparison.Ordinal) || t == "anon_inode:[eventfd]" ||
                t.StartsWith("/memfd:fuzz-", StringComparison.Ordinal) || t.Contains(HostileFds.FilePrefix, StringComparison.Ordinal) ||
                t.StartsWith("/dev/null", StringComparison.Ordinal) || t.StartsWith("/dev/zero", StringComparison.Ordinal)))
            {
                n++;
            }
        }
        return n;
    }

    private static int[] CountMaps()
    {
        var counts = new int[s_mapMarkers.Length];
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            for (int i = 0; i < s_mapMarkers.Length; i++)
            {
                if (line.Contains(s_mapMarkers[i], StringComparison.Ordinal))
                {
                    counts[i]++;
                }
            }
        }
        return counts;
    }

    /// <summary>
    /// Once the front-end is disposed its descriptors must be closed (after finalizers, so only real leaks
    /// count; per input, so a leaking input also fails when replayed alone) and no doorbell mapping may remain.
    /// </summary>
    private static void CheckLeaks(int before)
    {
        var maps = CountMaps();
        for (int i = 0; i < maps.Length; i++)
        {
            if (maps[i] != s_mapBaseline[i])
            {
                throw new InvalidOperationException($"BUG: {maps[i]} mapping(s) of {s_mapMarkers[i]} after dispose (baseline {s_mapBaseline[i]}): a host notifier survived");
            }
        }
        int n = CountFds();
        if (n > before)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            n = CountFds();
            if (n > before)
            {
                string list = string.Join(", ", Directory.GetFiles("/proc/self/fd").Select(f => $"{Path.GetFileName(f)}->{new FileInfo(f).LinkTarget}"));
                throw new InvalidOperationException($"BUG: descriptor leak: {n} open after the input, {before} before: {list}");
            }
        }
    }

    /// <summary>The exception types the front-end documents for a hostile or broken back-end.</summary>
    private static bool Expected(Exception e) =>
        e is IOException or TimeoutException or NotSupportedException ||
        (e is InvalidOperationException && e is not ObjectDisposedException) ||
        e.GetType() == typeof(ArgumentException);

    private static void RunOne(ReadOnlySpan<byte> data)
    {
        var inp = FrontendInput.Parse(data);
        Action<string>? trace = s_debug ? Console.WriteLine : null;
        var bugs = new List<string>();
        using var fds = new HostileFds(s_dma!);
        var be = new FakeBackend(inp.BackendFeatures, inp.BackendProtocol, new Script(inp.Replies), fds, FrontendInput.Iova, trace);
        var channel = new BackendChannel(be, fds, new Script(inp.Checkpoints), trace);
        var session = new Session(inp, be, channel, bugs, trace);
        try
        {
            session.Run();
        }
        finally
        {
            session.Teardown();
            if (!be.Join(DisposeLimitMs))
            {
                bugs.Add("the front-end's socket stayed open after Dispose (the back-end never saw the end)");
            }
            be.Dispose();
            session.DisposeCallbacks();
        }
        bugs.AddRange(be.Bugs);
        bugs.AddRange(channel.Bugs);
        if (bugs.Count > 0)
        {
            throw new InvalidOperationException($"BUG: {string.Join("; ", bugs)}");
        }
    }

    private sealed class Session(FrontendInput inp, FakeBackend be, BackendChannel channel, List<string> bugs, Action<string>? trace)
    {
        private const byte AckDriver = VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER;
        private const byte FeaturesOk = AckDriver | VirtioStatus.FEATURES_OK;
        private const byte DriverOk = FeaturesOk | VirtioStatus.DRIVER_OK;

        private readonly EventFd[] _callFds = [EventFd.Create(), EventFd.Create()];
        private VhostUserFrontend? _fe;
        private bool _mapped;
        private int _interrupts;

        public void Run()
        {
            var options = new VhostUserFrontendOptions
            {
                Name = "fuzz-fe",
                ReplyTimeoutMs = FrontendInput.ReplyTimeoutMs,
                ConnectTimeout = TimeSpan.FromSeconds(1),
                Log = trace is null ? _ => { } : s => trace($"front-end: {s}"),
                ProtocolFeatures = inp.Has(FrontendInput.NoMemSlots)
                    ? VhostUserFrontend.SupportedProtocolFeatures & ~(1UL << VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS)
                    : VhostUserFrontend.SupportedProtocolFeatures,
            };
            if (!Step("Connect", () => _fe = VhostUserFrontend.Connect(be.FrontEnd, options)))
            {
                return;
            }
            var fe = _fe!;
            channel.Reset();
            channel.Checkpoint(fe, 0);
            if (!inp.Has(FrontendInput.SkipFirstReset))
            {
                Reset(fe);
            }
            BringUpToFeaturesOk(fe);
            if (!inp.Has(FrontendInput.NoDma))
            {
                _mapped = Step("DmaMap", () => fe.DmaMap(FrontendInput.Iova, s_dma!.Slice(0, FrontendInput.DmaSize), writable: true));
            }
            channel.Checkpoint(fe, 1);
            SetUpQueues(fe);
            Must("SetConfigCallback", () => fe.SetConfigCallback(VdpaCallback.ForHandler(() => Interlocked.Increment(ref _interrupts))));
            Step("SetStatus(DRIVER_OK)", () => fe.SetStatus(DriverOk));
            channel.Checkpoint(fe, 2);
            Kick(fe, 0);
            Kick(fe, 1);
            if (inp.Has(FrontendInput.ToggleCallback))
            {
                Step("SetVqCallback(toggle)", () => fe.SetVqCallback(0, Callback(0, !inp.Has(FrontendInput.EventFdCallbacks))));
            }
            var config = new byte[VhostUserFrontend.ConfigBytes];
            Step("GetConfig", () => fe.GetConfig(0, config));
            if (inp.Has(FrontendInput.SetConfig))
            {
                Step("SetConfig", () => fe.SetConfig(0, [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]));
            }
            if (inp.Has(FrontendInput.SuspendResume))
            {
                Step("Suspend", fe.Suspend);
                Step("Resume", fe.Resume);
                Kick(fe, 1);
            }
            channel.Checkpoint(fe, 3);
            int stop = inp.Has(FrontendInput.StopQueue1) ? 1 : 0;
            Step("SetVqReady(false)", () => fe.SetVqReady(stop, false));
            Step("GetVqState", () => trace?.Invoke($"state {fe.GetVqState(stop)}"));
            if (inp.Has(FrontendInput.Restart))
            {
                Step("SetVqReady(true) again", () => fe.SetVqReady(stop, true));
                Kick(fe, stop);
            }
            channel.Checkpoint(fe, 4);
            if (inp.Has(FrontendInput.DisposeRunning))
            {
                return;
            }
            if (_mapped && inp.Has(FrontendInput.Unmap))
            {
                Must("DmaUnmap", () => fe.DmaUnmap(FrontendInput.Iova, FrontendInput.DmaSize));
                _mapped = false;
            }
            Reset(fe);
            channel.Checkpoint(fe, 5);
            if (inp.Has(FrontendInput.SecondSession))
            {
                BringUpToFeaturesOk(fe);
                SetUpQueues(fe);
                Step("SetStatus(DRIVER_OK) again", () => fe.SetStatus(DriverOk));
                Kick(fe, 0);
                Kick(fe, 1);
                channel.Checkpoint(fe, 6);
            }
        }

        private void BringUpToFeaturesOk(VhostUserFrontend fe)
        {
            Step("SetStatus(ACKNOWLEDGE)", () => fe.SetStatus(VirtioStatus.ACKNOWLEDGE));
            Step("SetStatus(DRIVER)", () => fe.SetStatus(AckDriver));
            ulong features = fe.GetDeviceFeatures() & inp.DriverFeatures;
            Must("SetDriverFeatures", () => fe.SetDriverFeatures(features));
            Step("SetStatus(FEATURES_OK)", () => fe.SetStatus(FeaturesOk));
        }

        private void SetUpQueues(VhostUserFrontend fe)
        {
            for (int q = 0; q < 2; q++)
            {
                int qq = q;
                var (desc, avail, used) = FrontendInput.Ring(q, inp.Has(FrontendInput.MisplacedRing));
                Must("SetVqNum", () => fe.SetVqNum(qq, inp.QueueSize));
                Must("SetVqAddress", () => fe.SetVqAddress(qq, desc, avail, used));
                Must("SetVqCallback", () => fe.SetVqCallback(qq, Callback(qq, inp.Has(FrontendInput.EventFdCallbacks))));
                Must("SetVqReady(true)", () => fe.SetVqReady(qq, true));
            }
        }

        private VdpaCallback Callback(int q, bool eventFd) =>
            eventFd ? VdpaCallback.ForEventFd(_callFds[q]) : VdpaCallback.ForHandler(() => Interlocked.Increment(ref _interrupts));

        /// <summary>A reset never throws (back-end errors are logged) and leaves no status and no host notifier.</summary>
        private void Reset(VhostUserFrontend fe)
        {
            Must("Reset", fe.Reset);
            channel.Reset();
            if (fe.GetStatus() != 0)
            {
                bugs.Add($"status 0x{fe.GetStatus():x} after Reset");
            }
            for (int q = 0; q < 2; q++)
            {
                if (fe.HasHostNotifier(q))
                {
                    bugs.Add($"queue {q} kept its host notifier across Reset");
                }
            }
        }

        /// <summary>
        /// KickVq never throws; the kick goes to the doorbell page when there is one (and the value lands at
        /// the page the back-end gave), otherwise to the kick eventfd the back-end holds.
        /// </summary>
        private void Kick(VhostUserFrontend fe, int q)
        {
            bool hn = fe.HasHostNotifier(q);
            long nk = fe.HostNotifierKicks(q), ek = fe.EventFdKicks(q);
            be.ConsumeKick(q);
            Must($"KickVq({q})", () => fe.KickVq(q));
            if (!channel.Certain)
            {
                return; // garbage on the channel may still be changing the doorbell
            }
            if (hn)
            {
                if (fe.HostNotifierKicks(q) != nk + 1 || fe.EventFdKicks(q) != ek)
                {
                    bugs.Add($"queue {q}: a kick with a host notifier was not counted as one");
                }
                if (channel.Last(q) is { Installed: true, Page: { } page } last)
                {
                    var at = page.Span(last.Offset, 2);
                    if (at[0] != q || at[1] != 0)
                    {
                        bugs.Add($"queue {q}: the kick did not write the doorbell at offset 0x{last.Offset:x} of the back-end's page");
                    }
                    at.Fill(0xFF);
                }
            }
            else
            {
                if (fe.EventFdKicks(q) != ek + 1 || fe.HostNotifierKicks(q) != nk)
                {
                    bugs.Add($"queue {q}: an eventfd kick was not counted as one");
                }
                if (be.ConsumeKick(q) == false)
                {
                    bugs.Add($"queue {q}: the kick did not reach the back-end's kick eventfd");
                }
            }
        }

        private bool Step(string what, Action a)
        {
            try
            {
                a();
                trace?.Invoke($"step {what}: ok");
                return true;
            }
            catch (Exception e) when (Expected(e))
            {
                trace?.Invoke($"step {what}: {e.GetType().Name}: {e.Message}");
                return false;
            }
            catch (Exception e)
            {
                throw new UnexpectedException($"BUG: {what} threw {e.GetType().Name} (not a documented failure): {e.Message}", e);
            }
        }

        /// <summary>Calls that never fail because of the back-end (teardown, the datapath, driver-side bookkeeping).</summary>
        private void Must(string what, Action a)
        {
            try
            {
                a();
            }
            catch (Exception e)
            {
                throw new UnexpectedException($"BUG: {what} threw {e.GetType().Name}: {e.Message}", e);
            }
        }

        /// <summary>Dispose never throws and returns promptly, whatever the back-end did; afterwards no doorbell is left.</summary>
        public void Teardown()
        {
            if (_fe is not { } fe)
            {
                return;
            }
            var sw = Stopwatch.StartNew();
            try
            {
                fe.Dispose();
            }
            catch (Exception e)
            {
                bugs.Add($"Dispose threw {e.GetType().Name}: {e.Message}");
            }
            if (sw.ElapsedMilliseconds > DisposeLimitMs)
            {
                bugs.Add($"Dispose took {sw.ElapsedMilliseconds} ms");
            }
            for (int q = 0; q < 2; q++)
            {
                if (fe.HasHostNotifier(q))
                {
                    bugs.Add($"queue {q} still has a host notifier after Dispose");
                }
            }
        }

        public void DisposeCallbacks()
        {
            foreach (var e in _callFds)
            {
                e.Dispose();
            }
        }
    }

    public static IEnumerable<(string Name, byte[] Data)> Seeds() => FrontendInput.Seeds();
}

/// <summary>An exception the front-end must never let escape: the harness reports it as a crash.</summary>
internal sealed class UnexpectedException(string message, Exception inner) : Exception(message, inner);
