using IfcVdpa.Daemon;
using IfcVdpa.Vdpa;
using IfcVdpa.Vduse;

namespace IfcVdpa.Cli;

/// <summary>`ifcvf serve --vduse NAME`: the single-device form of the VDUSE consumer.</summary>
public static partial class ServeCommand
{
    private static int ServeVduse(CliContext ctx, ServedDevice device, string name, double? period, DaemonLog log, CancellationToken stop)
    {
        using var done = new ManualResetEventSlim(); // signals handled before the device exists (see ServeCommand.Run)
        using var signals = new ShutdownSignal(done.Set);
        using var onStop = stop.Register(done.Set);
        VduseDevice vduse;
        try
        {
            vduse = VduseDevice.Create(device.Adapter, new VduseOptions { Name = name, Log = log.Lines(LogLevel.Info) });
        }
        catch (VdpaException e)
        {
            throw new CliException(e.Message);
        }
        using (vduse)
        {
            log.Info($"{device.Adapter.Name} ({device.Describe}) is VDUSE device {name}: bind it with `vdpa dev add name {name} mgmtdev vduse`");
            SystemdNotify.Notify($"READY=1\nMAINPID={Environment.ProcessId}\nSTATUS=VDUSE device {name}", log);
            int waitMs = period is { } p ? (int)Math.Max(100, p * 1000) : -1;
            while (!done.Wait(waitMs, CancellationToken.None))
            {
                PrintVduseStats(ctx, device, vduse);
            }
            log.Info("stopping");
            SystemdNotify.Notify("STOPPING=1", log);
            if (vduse.OnBus)
            {
                log.Warn($"{name} is still on the vDPA bus: the kernel driver loses its device (`vdpa dev del {name}` first next time)");
            }
        }
        device.StopDatapath();
        return 0;
    }

    private static void PrintVduseStats(CliContext ctx, ServedDevice device, VduseDevice vduse)
    {
        var s = vduse.Session;
        var line = new System.Text.StringBuilder();
        line.Append($"vduse {vduse.Name} status 0x{s.Status:x2} running {s.Running} regions {s.MappedRegions} interrupts {s.Interrupts} kicks {s.KicksRelayed}");
        for (int q = 0; q < vduse.Spec.VqNum; q++)
        {
            var st = device.Adapter.GetVqStats(q);
            line.Append($" q{q} pkts {st.Packets} bytes {st.Bytes}");
        }
        ctx.Out.WriteLine(line.ToString());
        ctx.Out.Flush();
    }
}
