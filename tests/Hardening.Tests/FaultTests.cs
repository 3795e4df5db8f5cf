using System.Diagnostics;
using IfcVdpa.Daemon;
using IfcVdpa.IfcvfModel.Backends;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.Hardening.Tests;

/// <summary>Faults under traffic: front-ends dying, resets, a TAP vanishing, the daemon stopped, connection churn.</summary>
[Collection("hardening")]
public sealed class FaultTests : IDisposable
{
    private readonly Bystander _other = new();
    private readonly BackendHost _host = new("victim", payloadTimeoutMs: 500);

    public void Dispose()
    {
        _host.Dispose();
        _other.Dispose();
    }

    /// <summary>
    /// Sends TX frames on ring 1 until stopped, each waiting (briefly) for the device to take it. It is the
    /// load of the fault tests, not a check: a frame the device does not take in 20 ms is given up.
    /// </summary>
    private sealed class Traffic : IDisposable
    {
        private readonly Thread _thread;
        private volatile bool _stop;

        public Traffic(VirtioNetFrontEnd net)
        {
            _thread = new Thread(() =>
            {
                ushort sent = net.Mem.UsedIdx(1);
                byte seed = 0;
                while (!_stop)
                {
                    Interlocked.Increment(ref Attempts);
                    net.QueueTx(1, VirtioNetFrontEnd.Frame(64 + (seed % 64), seed++));
                    sent++;
                    net.Kicks[1].Signal();
                    var deadline = Environment.TickCount64 + 20;
                    while (!_stop && net.Mem.UsedIdx(1) != sent && Environment.TickCount64 < deadline)
                    {
                        Thread.SpinWait(100);
                    }
                    if (net.Mem.UsedIdx(1) == sent)
                    {
                        Interlocked.Increment(ref Completed);
                    }
                    else
                    {
                        sent = net.Mem.UsedIdx(1); // the device stopped: keep what it did, re-offer
                        Thread.Sleep(1); // pacing the load while the device is down, not a wait for anything
                    }
                }
            }) { IsBackground = true };
            _thread.Start();
        }

        public long Completed;

        /// <summary>Frames offered so far (taken or given up).</summary>
        public long Attempts;

        /// <summary>Waits until <paramref name="n"/> more frames have been offered: the load has reached the device as it is now.</summary>
        public void WaitForAttempts(int n, string what)
        {
            long from = Interlocked.Read(ref Attempts);
            Assert.True(Proc.WaitFor(() => Interlocked.Read(ref Attempts) >= from + n), $"the traffic thread offered no {n} frames {what}");
        }

        public void Dispose()
        {
            _stop = true;
            Assert.True(_thread.Join(10_000), "the traffic thread did not stop");
        }
    }

    [Fact]
    public void FrontEndKilledAtRandomPointsAHundredTimes()
    {
        _host.GoodSession(1);
        Proc.Settle();
        int fds = Proc.FdCount();
        long rss = Proc.Rss();
        var rng = new Random(8);
        using var mem = new GuestMemoryFixture();
        int duringBringUp = 0, duringTraffic = 0;
        for (int i = 0; i < 100; i++)
        {
            var fe = _host.Connect();
            var net = new VirtioNetFrontEnd(fe, mem);
            if (i % 4 == 0)
            {
                // Killed somewhere inside the bring-up sequence.
                var t = new Thread(() =>
                {
                    try
                    {
                        net.Start();
                    }
#pragma warning disable CA1031 // the socket vanishing under the front-end is the point
                    catch (Exception)
#pragma warning restore CA1031
                    {
                    }
                }) { IsBackground = true };
                t.Start();
                Thread.Sleep(rng.Next(0, 4)); // the fault: a random point in the bring-up (not a wait for anything)
                Kill(fe);
                // The test's own front-end thread ends at the latest when its 5 s reply timeout fires: if the
                // socket was closed between its poll calls, the fd number can be reused and the poll only
                // times out. The back-end's behaviour is what the rest of the test checks.
                Assert.True(t.Join(15000), "the test front-end's bring-up thread did not end");
                duringBringUp++;
            }
            else
            {
                net.Start();
                using (var traffic = new Traffic(net))
                {
                    Thread.Sleep(rng.Next(1, 15)); // the fault: a random point in the traffic (not a wait for anything)
                    Kill(fe); // abrupt: no GET_VRING_BASE, no reset, rings still running
                }
                duringTraffic++;
            }
            net.Dispose();
            Assert.True(_host.WaitIdle(), _host.LogText);
            Assert.Equal(0, _host.Dev.Vf.DmaMapCount);
            Assert.Equal(0, _host.Dev.Vf.Status);
        }
        Assert.Equal(25, duringBringUp);
        Assert.Equal(75, duringTraffic);
        _host.GoodSession(2);
        _other.Ping(1);
        Proc.Settle();
        Assert.True(Proc.FdCount() <= fds + 2, $"descriptors grew from {fds} to {Proc.FdCount()}");
        Assert.True(Proc.Rss() - rss < 64L << 20, $"RSS grew by {(Proc.Rss() - rss) >> 20} MiB");
    }

    /// <summary>
    /// What the kernel does to a SIGKILLed front-end's socket: the back-end sees the connection drop at
    /// once. (shutdown first: a plain close would wait for a thread of this test blocked reading it.)
    /// </summary>
    private static void Kill(TestFrontEnd fe)
    {
        fe.Socket.Shutdown();
        fe.Dispose();
    }

    [Fact]
    public void DeviceResetUnderTrafficRecovers()
    {
        using var mem = new GuestMemoryFixture();
        using var fe = _host.Connect();
        using var net = new VirtioNetFrontEnd(fe, mem);
        net.Start();
        long before = 0;
        using (var traffic = new Traffic(net))
        {
            for (int i = 0; i < 20; i++)
            {
                // Mid-stream: frames are being taken (the first time; afterwards the check below saw them resume).
                Assert.True(Proc.WaitFor(() => Interlocked.Read(ref traffic.Completed) > before), "traffic did not start");
                before = Interlocked.Read(ref traffic.Completed);
                Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_STATUS, 0)); // the driver resets the device mid-stream
                Assert.False(_host.Backend.Session!.Configured);
                Assert.Equal(0, _host.Dev.Vf.DmaMapCount);
                Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_STATUS, 0xF));
                Assert.True(_host.Backend.Session!.Configured, _host.LogText);
                Assert.True(Proc.WaitFor(() => Interlocked.Read(ref traffic.Completed) > before), "traffic did not resume after a reset");
            }
            // The host resets the vDPA device underneath the session (as `vdpa dev del` would start to).
            _host.Dev.Adapter.Reset();
            traffic.WaitForAttempts(2, "after the host reset"); // at least one frame offered wholly after the reset
            _other.Ping(1);
        }
        // The front-end can still talk to the back-end and restart the device.
        Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_STATUS, 0));
        Assert.Equal(0UL, fe.SetU64(VhostUserRequest.SET_STATUS, 0xF));
        Assert.True(_host.Backend.Session!.Configured, _host.LogText);
        fe.Dispose();
        Assert.True(_host.WaitIdle());
        Assert.Equal(0, _host.Dev.Vf.DmaMapCount);
        _host.GoodSession(3);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)] // control: the same traffic with the TAP left in place
    public void TapRemovedUnderTrafficLeavesTheBackEndServing(bool remove)
    {
        string tap = $"hardtap{Environment.ProcessId % 10000}{(remove ? "r" : "k")}";
        using var host = new BackendHost("tapdev", net: NetBackend.Tap(tap), address: "sim:09.0");
        Assert.Equal(0, Run("ip", "link", "set", "dev", tap, "up"));
        using var mem = new GuestMemoryFixture();
        using (var fe = host.Connect())
        using (var net = new VirtioNetFrontEnd(fe, mem))
        {
            net.Start();
            using (var traffic = new Traffic(net))
            {
                Assert.True(Proc.WaitFor(() => Interlocked.Read(ref traffic.Completed) > 10), "frames did not reach the TAP");
                if (remove)
                {
                    Assert.Equal(0, Run("ip", "link", "del", tap));
                }
                traffic.WaitForAttempts(10, "after the TAP change"); // frames keep coming at a TAP that is gone
                _other.Ping(1);
            }
            // Idle now: nothing may spin on the dead TAP (its reader or writer retrying forever).
            Thread.Sleep(1000); // not a barrier: lets background JIT tiering settle before the CPU is measured
            var threads = Proc.ThreadTicks();
            var sw = Stopwatch.StartNew();
            Thread.Sleep(1000); // not a barrier: the window over which the idle CPU use is measured
            // Count the project's threads only: the runtime's own (".NET Tiered Compilation", GC...) may still
            // be busy in a CI run where other test processes load the machine.
            long usedMs = 10 * Proc.ThreadTicks()
                .Where(kv => !kv.Key.Contains(" .NET", StringComparison.Ordinal))
                .Sum(kv => kv.Value - threads.GetValueOrDefault(kv.Key));
            Assert.True(usedMs < sw.ElapsedMilliseconds * 0.2, $"CPU {usedMs} ms in {sw.ElapsedMilliseconds} ms while idle " +
                $"(TAP {(remove ? "removed" : "kept")}); busiest threads: {Proc.BusiestThreads(threads)}");
            Assert.Equal(VirtioNetFrontEnd.Features, fe.GetU64(VhostUserRequest.GET_FEATURES) & VirtioNetFrontEnd.Features);
            Assert.True(host.EngineLogs.Count < 50, $"{host.EngineLogs.Count} engine log lines:\n{string.Join('\n', host.EngineLogs.Take(5))}");
        }
        Assert.True(host.WaitIdle(), host.LogText);
        Assert.Equal(0, host.Dev.Vf.DmaMapCount);
        Assert.Equal(!remove, Directory.Exists($"/sys/class/net/{tap}"));
    }

    private static int Run(string file, params string[] args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true, UseShellExecute = false })!;
        p.WaitForExit(10_000);
        return p.ExitCode;
    }

    [Fact]
    public void DaemonStoppedWithActiveDevicesShutsDownCleanly()
    {
        string dir = Directory.CreateTempSubdirectory("ifcvf-hard-daemon").FullName;
        string ctl = Path.Combine(dir, "ctl.sock");
        string vhost = Path.Combine(dir, "v0.sock");
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "ifcvf.dll"), "daemon", "--control", ctl })
        {
            psi.ArgumentList.Add(a);
        }
        psi.Environment.Remove(ControlPaths.EnvVar);
        using var proc = Process.Start(psi)!;
        var stderr = proc.StandardError.ReadToEndAsync();
        try
        {
            Assert.True(Proc.WaitFor(() => File.Exists(ctl), 20_000), "daemon did not start");
            ControlClient.Request(ctl, "sim add", w => w.WriteNumber("count", 2));
            ControlClient.Request(ctl, "dev add", w =>
            {
                w.WriteString("name", "v0");
                w.WriteString("mgmtdev", "sim/ifcvf0");
            });
            ControlClient.Request(ctl, "dev add", w =>
            {
                w.WriteString("name", "v1");
                w.WriteString("mgmtdev", "sim/ifcvf1");
            });
            ControlClient.Request(ctl, "vhost add", w =>
            {
                w.WriteString("name", "v0");
                w.WriteString("socket", vhost);
            });
            using var mem = new GuestMemoryFixture();
            using var fe = new TestFrontEnd(UnixSocket.Connect(vhost));
            using var net = new VirtioNetFrontEnd(fe, mem);
            net.Start();
            var f = VirtioNetFrontEnd.Frame(64, 1);
            net.Send(1, f);
            Assert.Equal(f, net.Receive(0, 1));
            using (var traffic = new Traffic(net))
            {
                Assert.True(Proc.WaitFor(() => Interlocked.Read(ref traffic.Completed) > 0), "traffic did not start");
                Assert.Equal(0, Run("kill", "-TERM", proc.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)));
                Assert.True(proc.WaitForExit(20_000), "daemon did not exit on SIGTERM");
            }
            Assert.Equal(0, proc.ExitCode);
            Assert.True(fe.WaitClosed(1000), "the front-end's connection was left open");
            Assert.False(File.Exists(vhost), "stale vhost-user socket");
            Assert.False(File.Exists(ctl), "stale control socket");
        }
        finally
        {
            if (!proc.HasExited)
            {
                proc.Kill();
                proc.WaitForExit();
            }
            Directory.Delete(dir, true);
        }
        Assert.DoesNotContain("Unhandled", stderr.Result, StringComparison.Ordinal);
    }

    [Fact]
    public void AThousandConnectDisconnectCyclesLeakNothing()
    {
        _host.GoodSession(1);
        Proc.Settle();
        int fds = Proc.FdCount();
        long managed = GC.GetTotalMemory(forceFullCollection: true);
        long rss = Proc.Rss();
        for (int i = 0; i < 1000; i++)
        {
            if (i % 100 == 99)
            {
                _host.GoodSession((byte)i);
            }
            else
            {
                using var fe = _host.Connect();
                if (i % 2 == 0)
                {
                    fe.GetU64(VhostUserRequest.GET_FEATURES);
                }
            }
            Assert.True(_host.WaitIdle(), _host.LogText);
        }
        Assert.Equal(1001, _host.Backend.Connections);
        Proc.Settle();
        int after = Proc.FdCount();
        Assert.True(after <= fds + 2, $"descriptors grew from {fds} to {after}");
        long managedAfter = GC.GetTotalMemory(forceFullCollection: true);
        Assert.True(managedAfter - managed < 16L << 20, $"managed heap grew by {(managedAfter - managed) >> 20} MiB");
        Assert.True(Proc.Rss() - rss < 64L << 20, $"RSS grew by {(Proc.Rss() - rss) >> 20} MiB");
        Assert.Equal(0, _host.Dev.Vf.DmaMapCount);
        _other.Ping(1);
    }
}
