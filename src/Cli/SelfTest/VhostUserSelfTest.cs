using IfcVdpa.VhostUser.Frontend;
using IfcVdpa.VhostUser;
using IfcVdpa.Virtio;
using IfcVdpa.VirtioNet;

namespace IfcVdpa.Cli.SelfTest;

/// <summary>
/// Hidden `ifcvf selftest vhost-user SOCKET ip A peer-ip B [peer-if IF] [serve SECONDS] [ready-file PATH] [dirty-log]`:
/// the front-end half of the "true vDPA over vhost-user" proof. The in-process virtio-net driver runs over
/// the project's vhost-user front-end connected to SOCKET (served by the daemon on a VFIO function), so
/// every frame moves by DMA between this process's memory and the device: the back-end only maps memory,
/// hands over eventfds and, with host notifiers, the doorbell pages. With `dirty-log` the front-end then
/// migrates as QEMU does (LOG_ALL, SET_LOG_BASE, VHOST_VRING_F_LOG) while it pings the peer: logging on
/// mid-traffic, pings while logging, the marked pages (used rings, RX buffers), logging off mid-traffic,
/// pings again. Prints `VHOST-STEP` lines (and `VHOST-FAIL step: reason`, exit 1).
/// </summary>
internal static class VhostUserSelfTest
{
    public static int Run(Keywords kv, TextWriter stdout)
    {
        string socket = kv.Positional() ?? throw new CliException("selftest vhost-user needs a socket path");
        var plan = TrafficPlan.Parse(kv);
        bool dirtyLog = kv.Flag("dirty-log");
        kv.EnsureAllUsed();
        var run = new SelfTestRun(stdout, "VHOST");
        return run.Execute(() => Proof(run, socket, plan, dirtyLog),
            e => e is IOException or ArgumentException or InvalidOperationException or NotSupportedException or TimeoutException);
    }

    private static void Proof(SelfTestRun run, string socket, TrafficPlan plan, bool dirtyLog)
    {
        run.Step = "connect";
        using var fe = VhostUserFrontend.Connect(socket, new VhostUserFrontendOptions { Name = "vhost-user-selftest", Log = run.Log });
        run.Say("connect", $"socket={socket} protocol=0x{fe.ProtocolFeatures:x} host-notifier={Has(fe.ProtocolFeatures, VhostUserProtocolFeature.HOST_NOTIFIER)} vqs={fe.NumVqs} features=0x{fe.GetDeviceFeatures():x}");

        run.Step = "driver-ok";
        using (var drv = new VirtioNetDriver(fe, new VirtioNetDriverOptions { QueuePairs = 1, QueueSize = 256 }))
        {
            var agent = new PingAgent(f => drv.Send(f), drv.Mac, plan.Ip, plan.PeerIp);
            drv.SetFrameHandler(agent.OnFrame);
            // the back-end offers host notifiers once the rings run; give its channel a moment
            SelfTestRun.WaitFor(() => fe.HasHostNotifier(1) || !Has(fe.ProtocolFeatures, VhostUserProtocolFeature.HOST_NOTIFIER), TimeSpan.FromSeconds(5), "no host notifier for the TX queue although HOST_NOTIFIER was negotiated");
            run.Say("driver-ok", $"mac={MacAddress.Format(drv.Mac)} features=0x{drv.Features:x} link={(drv.LinkUp ? "up" : "down")} host-notifier-rx={fe.HasHostNotifier(0)} host-notifier-tx={fe.HasHostNotifier(1)}");

            var (peerRx, peerTx) = run.Traffic(agent, plan);
            var c = drv.Counters;
            var rx = fe.GetVqStats(0);
            run.Say("counters", $"peer-if={plan.PeerIf ?? "-"} peer-rx+={peerRx} peer-tx+={peerTx} rx-frames={c.RxFrames} tx-frames={c.TxFrames} tx-drops={c.TxDrops} " +
                $"rx-call-interrupts={rx.Interrupts} tx-doorbell-writes={fe.HostNotifierKicks(1)} tx-eventfd-kicks={fe.EventFdKicks(1)} rx-doorbell-writes={fe.HostNotifierKicks(0)} rx-eventfd-kicks={fe.EventFdKicks(0)}");
            if (rx.Interrupts == 0)
            {
                throw new StepFailedException("no interrupt arrived on the RX queue's call eventfd");
            }
            if (dirtyLog)
            {
                DirtyLogPhase(run, fe, drv, agent);
            }
            run.Step = "dev-del";
        }
        run.Say("dev-del", "driver stopped");
    }

    /// <summary>
    /// Logging on and off while echoes run, as a migration (and a cancelled one) does it; every echo sent must
    /// be answered. While logging the log must show the RX used ring and RX buffers (the device wrote them) and
    /// no TX buffer (only read); after logging is off nothing is marked.
    /// </summary>
    private static void DirtyLogPhase(SelfTestRun run, VhostUserFrontend fe, VirtioNetDriver drv, PingAgent agent)
    {
        run.Step = "log-on";
        if (!fe.CanLogDirtyPages)
        {
            throw new StepFailedException($"the back-end offers no dirty log (features 0x{fe.BackendFeatures:x}, protocol 0x{fe.ProtocolFeatures:x})");
        }
        var (rxUsed, rxBuf, rxBytes) = drv.QueueArea(0);
        var (txUsed, txBuf, txBytes) = drv.QueueArea(1);
        var (sent, answered) = EchoesAround(agent, fe.StartDirtyLog);
        run.Say("log-on", $"logging={fe.DirtyLogging} log-bytes={fe.DirtyLogBytes} echo-replies={answered}/{sent} host-notifier-tx={fe.HasHostNotifier(1)}");

        run.Step = "log-ping";
        fe.SyncDirtyLog();
        (sent, answered) = EchoesAround(agent, () => { });
        run.Say("log-ping", $"echo-replies={answered}/{sent}");
        var marked = fe.SyncDirtyLog();
        int In(ulong iova, ulong bytes) => marked.Count(p => p >= iova >> 12 && p <= (iova + bytes - 1) >> 12);
        run.Say("log-marks", $"pages={marked.Count} rx-used-ring={marked.Contains(rxUsed >> 12)} tx-used-ring={marked.Contains(txUsed >> 12)} rx-buffer-pages={In(rxBuf, rxBytes)} tx-buffer-pages={In(txBuf, txBytes)}");

        run.Step = "log-off";
        (sent, answered) = EchoesAround(agent, fe.StopDirtyLog);
        run.Say("log-off", $"logging={fe.DirtyLogging} echo-replies={answered}/{sent}");

        run.Step = "unlogged-ping";
        fe.SyncDirtyLog();
        (sent, answered) = EchoesAround(agent, () => { });
        run.Say("unlogged-ping", $"echo-replies={answered}/{sent} pages-marked={fe.SyncDirtyLog().Count}");
    }

    /// <summary>
    /// Echo requests every 50 ms on a thread: three answered, then <paramref name="during"/> runs, then three more;
    /// returns (sent, answered) once every one sent is answered or 5 s passed after the last.
    /// </summary>
    private static (int Sent, int Answered) EchoesAround(PingAgent agent, Action during)
    {
        int start = agent.EchoReplies, sent = 0;
        using var stop = new ManualResetEventSlim();
        var pinger = new Thread(() =>
        {
            while (!stop.IsSet)
            {
                agent.SendEcho();
                Interlocked.Increment(ref sent);
                stop.Wait(50);
            }
        }) { IsBackground = true, Name = "selftest echoes" };
        pinger.Start();
        try
        {
            SelfTestRun.WaitFor(() => agent.EchoReplies - start >= 3, TimeSpan.FromSeconds(10), "no echo answered before the switch");
            during();
            int mark = agent.EchoReplies;
            SelfTestRun.WaitFor(() => agent.EchoReplies - mark >= 3, TimeSpan.FromSeconds(10), "echoes stopped being answered after the switch");
        }
        finally
        {
            stop.Set();
            pinger.Join();
        }
        int total = Volatile.Read(ref sent);
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (agent.EchoReplies - start < total && DateTime.UtcNow < until)
        {
            Thread.Sleep(10);
        }
        return (total, agent.EchoReplies - start);
    }

    private static bool Has(ulong features, int bit) => (features & (1UL << bit)) != 0;
}
