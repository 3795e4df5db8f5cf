using IfcVdpa.VhostUser.Frontend;
using IfcVdpa.VhostUser;
using IfcVdpa.Virtio;
using IfcVdpa.VirtioNet;

namespace IfcVdpa.Cli.SelfTest;

/// <summary>
/// Hidden `ifcvf selftest vhost-user SOCKET ip A peer-ip B [peer-if IF] [serve SECONDS] [ready-file PATH]`:
/// the front-end half of the "true vDPA over vhost-user" proof. The in-process virtio-net driver runs over
/// the project's vhost-user front-end connected to SOCKET (served by the daemon on a VFIO function), so
/// every frame moves by DMA between this process's memory and the device: the back-end only maps memory,
/// hands over eventfds and, with host notifiers, the doorbell pages. Prints `VHOST-STEP` lines (and
/// `VHOST-FAIL step: reason`, exit 1).
/// </summary>
internal static class VhostUserSelfTest
{
    public static int Run(Keywords kv, TextWriter stdout)
    {
        string socket = kv.Positional() ?? throw new CliException("selftest vhost-user needs a socket path");
        var plan = TrafficPlan.Parse(kv);
        kv.EnsureAllUsed();
        var run = new SelfTestRun(stdout, "VHOST");
        return run.Execute(() => Proof(run, socket, plan),
            e => e is IOException or ArgumentException or InvalidOperationException or NotSupportedException or TimeoutException);
    }

    private static void Proof(SelfTestRun run, string socket, TrafficPlan plan)
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
            run.Step = "dev-del";
        }
        run.Say("dev-del", "driver stopped");
    }

    private static bool Has(ulong features, int bit) => (features & (1UL << bit)) != 0;
}
