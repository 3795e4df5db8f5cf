using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using IfcVdpa.Ifcvf;
using IfcVdpa.Interop.Primitives;
using IfcVdpa.Vdpa;
using IfcVdpa.Vfio;
using IfcVdpa.Virtio;
using static IfcVdpa.Virtio.SplitRing;

namespace IfcVdpa.Cli;

/// <summary>
/// Hidden `ifcvf selftest vfio BDF ip A peer-ip B [peer-if IF] [serve SECONDS] [ready-file PATH]`:
/// the hardware proof run inside a test guest. Opens a vfio-pci function, brings it up through the
/// ifcvf vDPA adapter (generic virtio-net accepted explicitly), sets up one RX and one TX ring of 256
/// entries in memory it DMA-maps through VFIO type1, exchanges ARP and ICMP with the peer, answers the
/// peer's ARP/ping while serving, and removes the device. Every step prints a `VFIO-STEP` line; a
/// failure prints `VFIO-FAIL step: reason` and exits 1.
/// </summary>
public static class SelfTestCommand
{
    private const ushort QueueSize = 256;
    private const int BufSize = 2048;
    private const ulong IovaBase = 0x4000_0000;
    private const ulong MemSize = 0x20_0000;
    private const ulong RingStride = 0x4000;
    private const ulong RxBufOff = 0x1_0000;
    private const ulong TxBufOff = RxBufOff + (QueueSize * BufSize);
    private const int Hdr = VirtioNetHeader.Size;

    public static int Run(string verb, Keywords kv, TextWriter stdout)
    {
        if (verb != "vfio")
        {
            throw new CliException($"unknown self-test \"{verb}\" (known: vfio)");
        }
        string bdf = kv.Positional() ?? throw new CliException("selftest vfio needs a PCI address");
        var ip = ParseIp(kv.Get("ip") ?? "169.254.77.2");
        var peerIp = ParseIp(kv.Get("peer-ip") ?? "169.254.77.1");
        string? peerIf = kv.Get("peer-if");
        int serve = kv.Int("serve", 0);
        string? readyFile = kv.Get("ready-file");
        bool mmap = kv.Get("mmap") switch
        {
            null or "on" => true,
            "off" => false,
            var x => throw new CliException($"mmap must be on or off, not \"{x}\""),
        };
        kv.EnsureAllUsed();
        var t = new Test(stdout, ip, peerIp);
        try
        {
            t.Run(PciSysfs.NormalizeAddress(bdf), peerIf, serve, readyFile, mmap);
            stdout.WriteLine("VFIO-STEP done");
            return 0;
        }
        catch (Exception e) when (e is StepFailed or VfioException or IfcvfProbeException or IfcvfDeviceException or IOException or ArgumentException or InvalidOperationException)
        {
            stdout.WriteLine($"VFIO-FAIL {t.Step}: {e.Message}");
            return 1;
        }
    }

    private static byte[] ParseIp(string s) =>
        IPAddress.TryParse(s, out var a) && a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork
            ? a.GetAddressBytes() : throw new CliException($"\"{s}\" is not an IPv4 address");

    private sealed class StepFailed(string message) : Exception(message);

    /// <summary>One ring as a driver owns it (split layout in the DMA-mapped region).</summary>
    private sealed class Ring(MappedMemory mem, ulong off)
    {
        public ushort AvailIdx;
        public ushort LastUsed;
        public readonly ulong Off = off;

        public Span<byte> Desc => mem.Span(Off, DescTableBytes(QueueSize));
        public Span<byte> Avail => mem.Span(Off + 0x1000, AvailBytes(QueueSize));
        public Span<byte> Used => mem.Span(Off + 0x2000, UsedBytes(QueueSize));

        public void Post(ushort id, ulong addr, uint len, bool write)
        {
            var d = Desc.Slice(id * DescSize, DescSize);
            BinaryPrimitives.WriteUInt64LittleEndian(d[DescAddr..], addr);
            BinaryPrimitives.WriteUInt32LittleEndian(d[DescLen..], len);
            BinaryPrimitives.WriteUInt16LittleEndian(d[DescFlags..], write ? VIRTQ_DESC_F_WRITE : (ushort)0);
            BinaryPrimitives.WriteUInt16LittleEndian(d[DescNext..], 0);
            BinaryPrimitives.WriteUInt16LittleEndian(Avail[(AvailRing + (2 * (AvailIdx % QueueSize)))..], id);
            AvailIdx++;
            SharedIndex.Store16(Avail, AvailIdx_, AvailIdx);
        }

        private const int AvailIdx_ = SplitRing.AvailIdx;

        public bool TryUsed(out ushort id, out uint len)
        {
            ushort used = SharedIndex.Load16(Used, UsedIdx);
            if (used == LastUsed)
            {
                id = 0;
                len = 0;
                return false;
            }
            var e = Used.Slice(UsedRing + (UsedElemSize * (LastUsed % QueueSize)), UsedElemSize);
            id = (ushort)BinaryPrimitives.ReadUInt32LittleEndian(e);
            len = BinaryPrimitives.ReadUInt32LittleEndian(e[4..]);
            LastUsed++;
            return true;
        }
    }

    private sealed class Test(TextWriter o, byte[] ip, byte[] peerIp)
    {
        public string Step { get; private set; } = "start";
        private readonly byte[] _mac = new byte[6];
        private byte[]? _peerMac;
        private long _rxInterrupts;
        private EventFd? _txCall;
        private MappedMemory _mem = null!;
        private Ring _rx = null!;
        private Ring _tx = null!;
        private IfcvfAdapter _dev = null!;
        private ushort _txNext;
        private int _txDone;
        private int _arpAnswered;
        private int _icmpAnswered;
        private int _echoReplies;
        private ushort _icmpSeq;

        private void Say(string step, string details)
        {
            Step = step;
            o.WriteLine($"VFIO-STEP {step} {details}");
            o.Flush();
        }

        public void Run(string bdf, string? peerIf, int serve, string? readyFile, bool mmap)
        {
            Step = "open";
            using var pci = VfioPciFunction.Open(bdf, new VfioOptions { UseMmap = mmap });
            string bars = string.Join(",", pci.Bars.Select(b => $"BAR{b.Index}:{b.Size}{(pci.MappedBars.Contains(b.Index) ? "(mmap)" : "(pread)")}"));
            Say("open", $"address={pci.Address} group={pci.IommuGroup} iommu=type{(pci.IommuType == 3 ? "1v2" : "1")} config={pci.ConfigSize} msix={pci.MsixVectorCount} bars={bars}");

            Step = "identity";
            try
            {
                IfcvfAdapter.CheckIdentity(pci, acceptGenericVirtioNet: false);
                throw new StepFailed("a generic virtio-net function was accepted without the generic-virtio-net option");
            }
            catch (IfcvfProbeException e)
            {
                Say("identity", $"refused-without-option: {e.Message}");
            }

            Step = "probe";
            _dev = IfcvfAdapter.Probe(pci, new IfcvfAdapterOptions { Name = "vdpa0", AcceptGenericVirtioNet = true });
            try
            {
                Say("probe", $"name={_dev.Name} ifc={_dev.IsIfc} vqs={_dev.NumVqs} lm={_dev.HasLiveMigrationBlock} features=0x{_dev.GetDeviceFeatures():x} vq-max={_dev.GetVqNumMax()}");
                BringUp();
                Traffic(peerIf, serve, readyFile);
            }
            finally
            {
                if (_dev is not null)
                {
                    Step = "dev-del";
                    _dev.Dispose();
                }
            }
            Say("dev-del", $"adapter-dma-maps={_dev.DmaMapCount} function-dma-maps={pci.DmaMapCount} msix-enabled={pci.EnabledMsixVectors}");
            if (pci.DmaMapCount != 0 || pci.EnabledMsixVectors != 0)
            {
                throw new StepFailed("dev del left DMA mappings or MSI-X vectors behind");
            }
            _mem.Dispose();
            _txCall?.Dispose();
            pci.Dispose();
            Say("closed", $"address={bdf}");
        }

        private void BringUp()
        {
            Step = "dma-map";
            if (_dev.GetVqNumMax() < QueueSize)
            {
                throw new StepFailed($"device queues hold at most {_dev.GetVqNumMax()} entries, the test needs {QueueSize}");
            }
            _mem = MappedMemory.Allocate(MemSize);
            _dev.DmaMap(IovaBase, MemSize, _mem.Address, writable: true);
            Say("dma-map", $"iova=0x{IovaBase:x} size=0x{MemSize:x} maps={_dev.Function.DmaMapCount}");

            Step = "features";
            ulong want = (1UL << VirtioFeature.F_VERSION_1) | (1UL << VirtioFeature.F_ACCESS_PLATFORM) | (1UL << VirtioFeature.NET_F_MAC);
            ulong features = _dev.GetDeviceFeatures() & want;
            if ((features & (1UL << VirtioFeature.F_VERSION_1)) == 0)
            {
                throw new StepFailed("the device does not offer VERSION_1");
            }
            _dev.SetStatus(VirtioStatus.ACKNOWLEDGE);
            _dev.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
            _dev.SetDriverFeatures(features);
            _dev.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
            if ((_dev.GetStatus() & VirtioStatus.FEATURES_OK) == 0)
            {
                throw new StepFailed("the device cleared FEATURES_OK");
            }
            Say("features", $"driver=0x{_dev.GetDriverFeatures():x}");

            Step = "queues";
            _rx = new Ring(_mem, 0);
            _tx = new Ring(_mem, RingStride);
            foreach (var (q, r) in new[] { (0, _rx), (1, _tx) })
            {
                _dev.SetVqNum(q, QueueSize);
                ulong b = IovaBase + r.Off;
                _dev.SetVqAddress(q, b, b + 0x1000, b + 0x2000);
            }
            // RX: an in-process handler (VFIO eventfd → relay thread → handler); TX: a call eventfd the
            // kernel signals directly, as a vhost-user front-end's call fd would be
            _dev.SetVqCallback(0, VdpaCallback.ForHandler(() => Interlocked.Increment(ref _rxInterrupts)));
            _txCall = EventFd.Create(nonBlocking: true);
            _dev.SetVqCallback(1, VdpaCallback.ForEventFd(_txCall));
            for (ushort i = 0; i < QueueSize; i++)
            {
                _rx.Post(i, IovaBase + RxBufOff + ((ulong)i * BufSize), BufSize, write: true);
            }
            _dev.SetVqReady(0, true);
            _dev.SetVqReady(1, true);
            Say("queues", $"rx=0 tx=1 size={QueueSize} rx-posted={_rx.AvailIdx}");

            Step = "driver-ok";
            _dev.SetStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
            byte s = _dev.GetStatus();
            if ((s & VirtioStatus.DRIVER_OK) == 0 || (s & VirtioStatus.NEEDS_RESET) != 0)
            {
                throw new StepFailed($"device status 0x{s:x2} after DRIVER_OK");
            }
            _dev.KickVq(0);
            _dev.GetConfig(VirtioNetConfig.Mac, _mac);
            Say("driver-ok", $"status=0x{s:x2} irq-mode={_dev.IrqMode} mac={IfcvfAdapter.FormatMac(_mac)}");
        }

        private void Traffic(string? peerIf, int serve, string? readyFile)
        {
            var before = PeerCounters(peerIf);

            Step = "arp";
            SendArp(request: true, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], peerIp);
            WaitFor(() => _peerMac is not null, TimeSpan.FromSeconds(10), "no ARP reply from the peer");
            Say("arp", $"tx-done={_txDone} peer-mac={IfcvfAdapter.FormatMac(_peerMac)}");

            Step = "ping";
            for (int i = 0; i < 3; i++)
            {
                SendEcho();
                int want = i + 1;
                WaitFor(() => _echoReplies >= want, TimeSpan.FromSeconds(5), $"echo reply {want} missing");
            }
            Say("ping", $"replies={_echoReplies}/3 tx-done={_txDone}");

            if (serve > 0)
            {
                Step = "serve";
                if (readyFile is not null)
                {
                    File.WriteAllText(readyFile, "ready\n");
                }
                Say("serve", $"seconds={serve} ip={new IPAddress(ip)}");
                var sw = Stopwatch.StartNew();
                while (sw.Elapsed < TimeSpan.FromSeconds(serve))
                {
                    Poll();
                    Thread.Sleep(1);
                }
                Say("served", $"arp-replies={_arpAnswered} echo-replies={_icmpAnswered}");
                if (_icmpAnswered == 0)
                {
                    throw new StepFailed("the peer's ping never reached the VFIO device");
                }
            }

            Step = "counters";
            var after = PeerCounters(peerIf);
            long rxDelta = after.Rx - before.Rx;
            long txDelta = after.Tx - before.Tx;
            _txCall!.TryConsume(out ulong txCalls);
            Say("counters", $"peer-if={peerIf ?? "-"} peer-rx+={rxDelta} peer-tx+={txDelta} rx-interrupts={Interlocked.Read(ref _rxInterrupts)} tx-call-eventfd={txCalls} vq0-irqs={_dev.GetVqStats(0).Interrupts} vq1-kicks={_dev.GetKickCount(1)} tx-done={_txDone}");
            if (peerIf is not null && (rxDelta <= 0 || txDelta <= 0))
            {
                throw new StepFailed($"the peer interface's counters did not move both ways (rx +{rxDelta}, tx +{txDelta})");
            }
            if (Interlocked.Read(ref _rxInterrupts) == 0)
            {
                throw new StepFailed("no MSI-X interrupt arrived for the RX queue");
            }
            if (txCalls == 0)
            {
                throw new StepFailed("the TX queue's call eventfd was never signalled");
            }
        }

        private static (long Rx, long Tx) PeerCounters(string? dev)
        {
            if (dev is null)
            {
                return (0, 0);
            }
            string d = Path.Combine("/sys/class/net", Path.GetFileName(dev), "statistics");
            return (long.Parse(File.ReadAllText(Path.Combine(d, "rx_packets")).Trim(), CultureInfo.InvariantCulture),
                    long.Parse(File.ReadAllText(Path.Combine(d, "tx_packets")).Trim(), CultureInfo.InvariantCulture));
        }

        private void WaitFor(Func<bool> done, TimeSpan timeout, string failure)
        {
            var sw = Stopwatch.StartNew();
            while (!done())
            {
                if (sw.Elapsed > timeout)
                {
                    throw new StepFailed(failure);
                }
                Poll();
                Thread.Sleep(1);
            }
        }

        // ---- frames ------------------------------------------------------------------------------

        private Span<byte> TxBuffer(out ushort id)
        {
            ReclaimTx();
            if ((ushort)(_tx.AvailIdx - _tx.LastUsed) >= QueueSize)
            {
                throw new StepFailed("TX ring full: the device does not consume TX buffers");
            }
            id = (ushort)(_txNext++ % QueueSize);
            var b = _mem.Span(TxBufOff + ((ulong)id * BufSize), BufSize);
            b[..Hdr].Clear();
            return b[Hdr..];
        }

        /// <summary>Counts the TX buffers the device has finished with (their slots become reusable).</summary>
        private void ReclaimTx()
        {
            while (_tx.TryUsed(out _, out _))
            {
                _txDone++;
            }
        }

        private void Send(ushort id, int frameLen)
        {
            _tx.Post(id, IovaBase + TxBufOff + ((ulong)id * BufSize), (uint)(Hdr + frameLen), write: false);
            _dev.KickVq(1);
        }

        private void SendArp(bool request, byte[] dstMac, byte[] targetIp)
        {
            var f = TxBuffer(out ushort id);
            dstMac.CopyTo(f);
            _mac.CopyTo(f[6..]);
            BinaryPrimitives.WriteUInt16BigEndian(f[12..], 0x0806);
            var a = f[14..];
            BinaryPrimitives.WriteUInt16BigEndian(a, 1);        // Ethernet
            BinaryPrimitives.WriteUInt16BigEndian(a[2..], 0x0800);
            a[4] = 6;
            a[5] = 4;
            BinaryPrimitives.WriteUInt16BigEndian(a[6..], request ? (ushort)1 : (ushort)2);
            _mac.CopyTo(a[8..]);
            ip.CopyTo(a[14..]);
            (request ? new byte[6] : dstMac).CopyTo(a[18..]);
            targetIp.CopyTo(a[24..]);
            Send(id, 60);
        }

        private void SendEcho()
        {
            var f = TxBuffer(out ushort id);
            int payload = 32;
            int len = IcmpFrame(f, _peerMac!, peerIp, type: 8, ident: 0x1fc, seq: ++_icmpSeq, payload: null, payloadLen: payload);
            Send(id, len);
        }

        private int IcmpFrame(Span<byte> f, byte[] dstMac, byte[] dstIp, byte type, ushort ident, ushort seq, ReadOnlySpan<byte> payload, int payloadLen)
        {
            dstMac.CopyTo(f);
            _mac.CopyTo(f[6..]);
            BinaryPrimitives.WriteUInt16BigEndian(f[12..], 0x0800);
            var iph = f[14..];
            int icmpLen = 8 + payloadLen;
            iph[..20].Clear();
            iph[0] = 0x45;
            BinaryPrimitives.WriteUInt16BigEndian(iph[2..], (ushort)(20 + icmpLen));
            iph[8] = 64;
            iph[9] = 1;
            ip.CopyTo(iph[12..]);
            dstIp.CopyTo(iph[16..]);
            BinaryPrimitives.WriteUInt16BigEndian(iph[10..], Checksum(iph[..20]));
            var icmp = iph.Slice(20, icmpLen);
            icmp.Clear();
            icmp[0] = type;
            BinaryPrimitives.WriteUInt16BigEndian(icmp[4..], ident);
            BinaryPrimitives.WriteUInt16BigEndian(icmp[6..], seq);
            if (payload.Length > 0)
            {
                payload.CopyTo(icmp[8..]);
            }
            else
            {
                for (int i = 0; i < payloadLen; i++)
                {
                    icmp[8 + i] = (byte)i;
                }
            }
            BinaryPrimitives.WriteUInt16BigEndian(icmp[2..], Checksum(icmp));
            return Math.Max(60, 14 + 20 + icmpLen);
        }

        private static ushort Checksum(ReadOnlySpan<byte> b)
        {
            uint sum = 0;
            for (int i = 0; i + 1 < b.Length; i += 2)
            {
                sum += (uint)((b[i] << 8) | b[i + 1]);
            }
            if ((b.Length & 1) != 0)
            {
                sum += (uint)(b[^1] << 8);
            }
            while ((sum >> 16) != 0)
            {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            return (ushort)~sum;
        }

        /// <summary>Takes every received frame, handles it and gives the buffer back to the device.</summary>
        private void Poll()
        {
            ReclaimTx();
            bool any = false;
            while (_rx.TryUsed(out ushort id, out uint len))
            {
                any = true;
                if (id < QueueSize && len >= Hdr && len <= BufSize)
                {
                    Handle(_mem.Span(RxBufOff + ((ulong)id * BufSize), (int)len)[Hdr..]);
                }
                else
                {
                    o.WriteLine($"VFIO-WARN bad used element id={id} len={len}");
                }
                if (id < QueueSize)
                {
                    _rx.Post(id, IovaBase + RxBufOff + ((ulong)id * BufSize), BufSize, write: true);
                }
            }
            if (any)
            {
                _dev.KickVq(0);
            }
        }

        private void Handle(ReadOnlySpan<byte> f)
        {
            if (f.Length < 42)
            {
                return;
            }
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(f[12..]);
            if (type == 0x0806)
            {
                var a = f[14..];
                ushort op = BinaryPrimitives.ReadUInt16BigEndian(a[6..]);
                var senderMac = a.Slice(8, 6);
                var senderIp = a.Slice(14, 4);
                var targetIp = a.Slice(24, 4);
                if (op == 2 && senderIp.SequenceEqual(peerIp) && _peerMac is null)
                {
                    _peerMac = senderMac.ToArray();
                }
                else if (op == 1 && targetIp.SequenceEqual(ip))
                {
                    SendArp(request: false, senderMac.ToArray(), senderIp.ToArray());
                    _arpAnswered++;
                }
                return;
            }
            if (type != 0x0800 || f.Length < 14 + 20 + 8)
            {
                return;
            }
            var iph = f[14..];
            int ihl = (iph[0] & 0xf) * 4;
            int total = BinaryPrimitives.ReadUInt16BigEndian(iph[2..]);
            if (iph[9] != 1 || ihl < 20 || total > iph.Length || total < ihl + 8 || !iph.Slice(16, 4).SequenceEqual(ip))
            {
                return;
            }
            var icmp = iph[ihl..total];
            if (icmp[0] == 0 && iph.Slice(12, 4).SequenceEqual(peerIp))
            {
                _echoReplies++;
            }
            else if (icmp[0] == 8)
            {
                var buf = TxBuffer(out ushort id);
                int len = IcmpFrame(buf, f.Slice(6, 6).ToArray(), iph.Slice(12, 4).ToArray(), type: 0,
                    BinaryPrimitives.ReadUInt16BigEndian(icmp[4..]), BinaryPrimitives.ReadUInt16BigEndian(icmp[6..]),
                    icmp[8..], icmp.Length - 8);
                Send(id, len);
                _icmpAnswered++;
            }
        }
    }
}
