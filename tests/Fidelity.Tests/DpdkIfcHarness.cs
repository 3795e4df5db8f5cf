using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using IfcVdpa.Pci;

namespace IfcVdpa.Fidelity.Tests;

/// <summary>How a device access reached the model.</summary>
public enum AccessPath
{
    /// <summary>An IFCVF_READ/WRITE_REG macro of DPDK's base code (through our ifcvf_osdep.h).</summary>
    Macro,

    /// <summary>A plain pointer dereference in DPDK's code, trapped by the harness (page fault + single step).</summary>
    Trapped,

    /// <summary>PCI config space read (PCI_READ_CONFIG_*).</summary>
    Config,
}

/// <summary>One access of DPDK's base code to a device, as the model served it.</summary>
/// <param name="Width">For trapped accesses: the width of the CPU instruction's operand (a 16-byte store arrives
/// as four 32-bit writes, each with Width 16).</param>
public readonly record struct DeviceAccess(int Device, AccessPath Path, bool Write, int Bar, ulong Offset, int Size, uint Value, int Width)
{
    public override string ToString() =>
        $"dev{Device} {Path} {(Write ? "W" : "R")}{Size * 8} {(Path == AccessPath.Config ? "cfg" : $"BAR{Bar}")}+0x{Offset:x} = 0x{Value:x}" +
        (Width > Size ? $" (part of a {Width}-byte access)" : "");
}

/// <summary>
/// The C harness that runs DPDK's UNMODIFIED IFC VF base code (drivers/vdpa/ifc/base/ifcvf.c from
/// `apt-get source dpdk`) in a child process, and this side of its wire: every register access and config
/// read the DPDK code makes arrives here as a request and is served by the software IFC VF it names.
/// The harness is a separate process because it traps DPDK's plain BAR4 dereferences with SIGSEGV and the
/// x86 trap flag, which must not meet the .NET runtime's own signal handling; and a crash in it cannot take the
/// test host down. No P/Invoke: the two processes talk over the child's stdin/stdout.
/// </summary>
public sealed class DpdkIfcHarness : IDisposable
{
    private enum Op : uint
    {
        Bar = 1, Init, Features, Config, Vring, Start, Notify, Stop, Log, Unlog, EnableVring, DisableVring, NotifyOff, Exit, Probe, Drain,
    }

    private static readonly TimeSpan ReplyTimeout = TimeSpan.FromSeconds(30);
    private static readonly Lazy<string> Built = new(Build);
    private readonly Process _process;
    private readonly Stream _toHarness;
    private readonly Stream _fromHarness;
    private readonly IReadOnlyList<IPciFunction> _devices;
    private readonly ConcurrentQueue<string> _log = new();

    /// <summary>Every access, in order (cleared by the tests between phases).</summary>
    public List<DeviceAccess> Trace { get; } = [];

    /// <summary>The harness's stderr: DPDK's DEBUGOUT/WARNINGOUT/RTE_LOG lines and fatal harness errors.</summary>
    public IReadOnlyCollection<string> Log => _log;

    public IEnumerable<string> Warnings => _log.Where(l => l.StartsWith("ifcvf[warning]", StringComparison.Ordinal) || l.StartsWith("ifcvf[ERR]", StringComparison.Ordinal));

    public DpdkIfcHarness(IReadOnlyList<IPciFunction> devices)
    {
        _devices = devices;
        var psi = new ProcessStartInfo(Built.Value)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        _process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start the DPDK ifcvf harness");
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                _log.Enqueue(e.Data);
            }
        };
        _process.BeginErrorReadLine();
        _toHarness = _process.StandardInput.BaseStream;
        _fromHarness = _process.StandardOutput.BaseStream;
        for (int d = 0; d < devices.Count; d++)
        {
            foreach (var bar in devices[d].Bars)
            {
                Check(Run(Op.Bar, d, (ulong)bar.Index, bar.Size, bar.Address).Result, $"BAR{bar.Index} window");
            }
        }
    }

    /// <summary>Builds the harness once per test run (DPDK source fetched and cached by the script).</summary>
    private static string Build()
    {
        string root = RepoRoot();
        string outDir = Path.Combine(Path.GetTempPath(), $"ifcvf-dpdk-harness-{Environment.ProcessId}");
        var psi = new ProcessStartInfo(Path.Combine(root, "scripts", "dpdk-ifc", "build-harness.sh"), outDir)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot run build-harness.sh");
        var err = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(10)))
        {
            p.Kill(entireProcessTree: true);
            throw new InvalidOperationException("build-harness.sh did not finish in 10 minutes");
        }
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"build-harness.sh failed ({p.ExitCode}):\n{err.Result}\n{stdout}");
        }
        string exe = stdout.Trim().Split('\n')[^1];
        return File.Exists(exe) ? exe : throw new InvalidOperationException($"build-harness.sh printed no executable: {stdout}");
    }

    public static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "IfcVdpa.slnx")))
        {
            d = d.Parent;
        }
        return d?.FullName ?? throw new InvalidOperationException("repository root (IfcVdpa.slnx) not found");
    }

    /// <summary>Where the capability walk put a structure: BAR and offset (null: not found).</summary>
    public readonly record struct Location(int Bar, ulong Offset);

    /// <summary>What ifcvf_init_hw found.</summary>
    public sealed record InitResult(int Rc, Location? Common, Location? Notify, Location? Isr, Location? Device,
        uint NotifyOffMultiplier, int NotifyRegion, Location? Lm, Location? Mq);

    public InitResult InitHw(int dev)
    {
        var (rc, extra) = Run(Op.Init, dev);
        Location? At(int key)
        {
            ulong v = extra.Single(m => m.Key == key).Value;
            return v == ~0UL ? null : v == ~1UL ? throw new InvalidOperationException($"info {key} outside every BAR") : new Location((int)(v >> 56), v & ((1UL << 56) - 1));
        }
        ulong Raw(int key) => extra.Single(m => m.Key == key).Value;
        return new InitResult((int)rc, At(1), At(2), At(3), At(4), (uint)Raw(5), (int)Raw(6), At(7), At(8));
    }

    /// <summary>What the probe of DPDK's ifc vDPA driver reads besides ifcvf_init_hw (harness.c: probe).</summary>
    /// <param name="Type">The type DPDK's ID table gives the function: 0 IFCVF_NET, 1 IFCVF_BLK, -1 no match.</param>
    public sealed record ProbeResult(ushort Vendor, ushort Device, ushort SubsystemVendor, ushort SubsystemDevice, int Type,
        ulong Capacity, uint SizeMax, uint SegMax, ushort Cylinders, byte Heads, byte Sectors, uint BlkSize, ushort NumQueues);

    public const int IfcvfNet = 0;
    public const int IfcvfBlk = 1;

    /// <summary>Call after <see cref="InitHw"/> (the block config is read through hw->blk_cfg).</summary>
    public ProbeResult Probe(int dev)
    {
        var (rc, extra) = Run(Op.Probe, dev);
        ulong V(int key) => extra.SingleOrDefault(m => m.Key == key).Value;
        var r = new ProbeResult((ushort)V(10), (ushort)V(11), (ushort)V(12), (ushort)V(13), (int)(long)V(14),
            V(20), (uint)V(21), (uint)V(22), (ushort)V(23), (byte)V(24), (byte)V(25), (uint)V(26), (ushort)V(27));
        return (long)rc == r.Type ? r : throw new InvalidOperationException($"harness: probe failed ({(long)rc})");
    }

    /// <summary>
    /// The block drain DPDK's driver runs before ifcvf_stop_hw (harness.c: drain): per vring, read the live
    /// LM ring state and ring the doorbell until last_avail == last_used. Returns the doorbells rung, or
    /// -1 - q when vring q did not drain within <paramref name="tries"/> reads.
    /// </summary>
    public long Drain(int dev, int tries = 200) => (long)Run(Op.Drain, dev, (ulong)tries).Result;

    public ulong GetFeatures(int dev) => Run(Op.Features, dev).Result;

    /// <summary>What the DPDK driver would put in struct ifcvf_hw before starting: requested features, vrings, type.</summary>
    public void Configure(int dev, ulong requestedFeatures, int vrings, bool block = false) =>
        Check(Run(Op.Config, dev, requestedFeatures, (ulong)vrings, block ? 1UL : 0UL).Result, "config");

    /// <summary>hw->vring[q] as ifcvf_vdpa.c fills it from vhost (addresses are IOVAs = guest physical).</summary>
    public void SetVring(int dev, int q, ushort size, ulong desc, ulong avail, ulong used, ushort lastAvail, ushort lastUsed, bool enable) =>
        Check(Run(Op.Vring, dev, (uint)q | ((ulong)size << 16) | ((ulong)lastAvail << 32) | ((ulong)lastUsed << 48), desc, avail, used, enable ? 1UL : 0UL).Result, "vring");

    public int StartHw(int dev) => (int)Run(Op.Start, dev).Result;

    public void NotifyQueue(int dev, int q) => Check(Run(Op.Notify, dev, (ulong)q).Result, $"notify {q}");

    /// <summary>ifcvf_stop_hw; returns hw->vring[q].last_avail_idx / last_used_idx as DPDK read them back.</summary>
    public (ushort LastAvail, ushort LastUsed)[] StopHw(int dev)
    {
        var (_, extra) = Run(Op.Stop, dev);
        return extra.Where(m => m.Type == 'S').OrderBy(m => m.Key).Select(m => ((ushort)m.Value, (ushort)(m.Value >> 16))).ToArray();
    }

    public void EnableLogging(int dev, ulong logBase, ulong logSize) => Run(Op.Log, dev, logBase, logSize);

    public void DisableLogging(int dev) => Run(Op.Unlog, dev);

    public int EnableVringHw(int dev, int q) => (int)Run(Op.EnableVring, dev, (ulong)q).Result;

    public (ushort LastAvail, ushort LastUsed) DisableVringHw(int dev, int q)
    {
        var (rc, extra) = Run(Op.DisableVring, dev, (ulong)q);
        Check(rc, $"disable vring {q}");
        var s = extra.Single(m => m.Type == 'S').Value;
        return ((ushort)s, (ushort)(s >> 16));
    }

    public ulong QueueNotifyOff(int dev, int q) => Run(Op.NotifyOff, dev, (ulong)q).Result;

    private static void Check(ulong rc, string what)
    {
        if (rc != 0)
        {
            throw new InvalidOperationException($"harness: {what} failed ({(long)rc})");
        }
    }

    private readonly record struct Extra(char Type, int Key, ulong Value);

    /// <summary>Sends one command and serves the harness's device requests until it reports the result.</summary>
    private (ulong Result, List<Extra> Extra) Run(Op op, int dev, ulong a = 0, ulong b = 0, ulong c = 0, ulong d = 0, ulong e = 0)
    {
        Span<byte> cmd = stackalloc byte[48];
        BinaryPrimitives.WriteUInt32LittleEndian(cmd, (uint)op);
        BinaryPrimitives.WriteUInt32LittleEndian(cmd[4..], (uint)dev);
        BinaryPrimitives.WriteUInt64LittleEndian(cmd[8..], a);
        BinaryPrimitives.WriteUInt64LittleEndian(cmd[16..], b);
        BinaryPrimitives.WriteUInt64LittleEndian(cmd[24..], c);
        BinaryPrimitives.WriteUInt64LittleEndian(cmd[32..], d);
        BinaryPrimitives.WriteUInt64LittleEndian(cmd[40..], e);
        _toHarness.Write(cmd);
        _toHarness.Flush();
        var extra = new List<Extra>();
        var msg = new byte[32];
        var replyBuf = new byte[8];
        while (true)
        {
            ReadExactly(msg);
            char type = (char)BinaryPrimitives.ReadUInt32LittleEndian(msg);
            int mdev = (int)BinaryPrimitives.ReadUInt32LittleEndian(msg.AsSpan(4));
            int bar = (int)BinaryPrimitives.ReadUInt32LittleEndian(msg.AsSpan(8));
            int size = (int)BinaryPrimitives.ReadUInt32LittleEndian(msg.AsSpan(12));
            ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(msg.AsSpan(16));
            ulong value = BinaryPrimitives.ReadUInt64LittleEndian(msg.AsSpan(24));
            switch (type)
            {
                case 'D':
                    return (value, extra);
                case 'S' or 'I':
                    extra.Add(new Extra(type, bar, value));
                    continue;
                case 'E':
                    throw new InvalidOperationException($"harness failed: {string.Join('\n', _log.TakeLast(5))}");
            }
            var fn = _devices[mdev];
            uint reply = 0;
            switch (type)
            {
                case 'C':
                    reply = size switch { 1 => fn.ReadConfig8((int)offset), 2 => fn.ReadConfig16((int)offset), _ => fn.ReadConfig32((int)offset) };
                    Trace.Add(new DeviceAccess(mdev, AccessPath.Config, false, 0, offset, size, reply, size));
                    break;
                case 'R' or 'r':
                    reply = ReadBar(fn, bar, offset, size);
                    Trace.Add(new DeviceAccess(mdev, type == 'R' ? AccessPath.Macro : AccessPath.Trapped, false, bar, offset, size, reply, type == 'R' ? size : (int)value));
                    break;
                case 'p':
                    reply = ReadBar(fn, bar, offset, size); // the current value under a trapped store; not a driver access
                    break;
                case 'W' or 'w':
                    WriteBar(fn, bar, offset, size, (uint)value);
                    Trace.Add(new DeviceAccess(mdev, type == 'W' ? AccessPath.Macro : AccessPath.Trapped, true, bar, offset, size, (uint)value, type == 'W' ? size : (int)(value >> 32)));
                    break;
                default:
                    throw new InvalidOperationException($"harness sent an unknown message '{type}'");
            }
            BinaryPrimitives.WriteUInt64LittleEndian(replyBuf, reply);
            _toHarness.Write(replyBuf);
            _toHarness.Flush();
        }
    }

    private static uint ReadBar(IPciFunction fn, int bar, ulong offset, int size) => size switch
    {
        1 => fn.ReadBar8(bar, offset),
        2 => fn.ReadBar16(bar, offset),
        _ => fn.ReadBar32(bar, offset),
    };

    private static void WriteBar(IPciFunction fn, int bar, ulong offset, int size, uint value)
    {
        switch (size)
        {
            case 1: fn.WriteBar8(bar, offset, (byte)value); break;
            case 2: fn.WriteBar16(bar, offset, (ushort)value); break;
            default: fn.WriteBar32(bar, offset, value); break;
        }
    }

    private void ReadExactly(byte[] buf)
    {
        var read = _fromHarness.ReadExactlyAsync(buf).AsTask();
        bool done;
        try
        {
            done = read.Wait(ReplyTimeout);
        }
        catch (AggregateException e)
        {
            _process.WaitForExit(TimeSpan.FromSeconds(5));
            throw new InvalidOperationException($"the DPDK ifcvf harness went away; its log:\n{string.Join('\n', _log)}", e.InnerException);
        }
        if (!done)
        {
            _process.Kill();
            throw new TimeoutException($"the DPDK ifcvf harness did not answer in {ReplyTimeout.TotalSeconds} s; log:\n{string.Join('\n', _log)}");
        }
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                Span<byte> cmd = stackalloc byte[48];
                BinaryPrimitives.WriteUInt32LittleEndian(cmd, (uint)Op.Exit);
                _toHarness.Write(cmd);
                _toHarness.Flush();
                if (!_process.WaitForExit(TimeSpan.FromSeconds(10)))
                {
                    _process.Kill();
                }
            }
        }
        catch (IOException)
        {
            // the harness already went away; its log says why
        }
        _process.Dispose();
    }
}
