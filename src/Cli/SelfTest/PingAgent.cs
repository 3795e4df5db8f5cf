using System.Buffers.Binary;

namespace IfcVdpa.Cli.SelfTest;

/// <summary>
/// The smallest IPv4 host the self-tests need on top of a frame sender: resolves the peer with ARP, sends
/// echo requests, counts echo replies, and answers the peer's ARP requests and pings. Frames arrive on the
/// driver's worker (<see cref="OnFrame"/>); counters are read from the test thread.
/// </summary>
internal sealed class PingAgent(Func<byte[], bool> send, byte[] mac, byte[] ip, byte[] peerIp)
{
    private const ushort EtherArp = 0x0806;
    private const ushort EtherIpv4 = 0x0800;
    private const ushort EchoIdent = 0x1fc;
    private byte[]? _peerMac;
    private int _echoReplies, _arpAnswered, _icmpAnswered, _sendFailures;
    private ushort _seq;

    public byte[]? PeerMac => Volatile.Read(ref _peerMac);

    public int EchoReplies => Volatile.Read(ref _echoReplies);

    public int ArpAnswered => Volatile.Read(ref _arpAnswered);

    public int IcmpAnswered => Volatile.Read(ref _icmpAnswered);

    public int SendFailures => Volatile.Read(ref _sendFailures);

    public void RequestPeerMac() => Send(ArpFrame(request: true, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], peerIp));

    public void SendEcho()
    {
        byte[] dst = PeerMac ?? throw new InvalidOperationException("the peer's MAC is not known yet");
        Send(IcmpFrame(dst, peerIp, type: 8, EchoIdent, ++_seq, payload: default, payloadLen: 32));
    }

    private void Send(byte[] frame)
    {
        if (!send(frame))
        {
            Interlocked.Increment(ref _sendFailures);
        }
    }

    /// <summary>Handles one received Ethernet frame (no virtio-net header).</summary>
    public void OnFrame(ReadOnlySpan<byte> f)
    {
        if (f.Length < 42)
        {
            return;
        }
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(f[12..]);
        if (type == EtherArp)
        {
            OnArp(f[14..]);
        }
        else if (type == EtherIpv4 && f.Length >= 14 + 20 + 8)
        {
            OnIpv4(f, f[14..]);
        }
    }

    private void OnArp(ReadOnlySpan<byte> a)
    {
        ushort op = BinaryPrimitives.ReadUInt16BigEndian(a[6..]);
        var senderMac = a.Slice(8, 6);
        var senderIp = a.Slice(14, 4);
        var targetIp = a.Slice(24, 4);
        if (op == 2 && senderIp.SequenceEqual(peerIp) && PeerMac is null)
        {
            Volatile.Write(ref _peerMac, senderMac.ToArray());
        }
        else if (op == 1 && targetIp.SequenceEqual(ip))
        {
            Send(ArpFrame(request: false, senderMac.ToArray(), senderIp.ToArray()));
            Interlocked.Increment(ref _arpAnswered);
        }
    }

    private void OnIpv4(ReadOnlySpan<byte> f, ReadOnlySpan<byte> iph)
    {
        int ihl = (iph[0] & 0xf) * 4;
        int total = BinaryPrimitives.ReadUInt16BigEndian(iph[2..]);
        if (iph[9] != 1 || ihl < 20 || total > iph.Length || total < ihl + 8 || !iph.Slice(16, 4).SequenceEqual(ip))
        {
            return;
        }
        var icmp = iph[ihl..total];
        if (icmp[0] == 0 && iph.Slice(12, 4).SequenceEqual(peerIp))
        {
            Interlocked.Increment(ref _echoReplies);
        }
        else if (icmp[0] == 8)
        {
            Send(IcmpFrame(f.Slice(6, 6).ToArray(), iph.Slice(12, 4).ToArray(), type: 0,
                BinaryPrimitives.ReadUInt16BigEndian(icmp[4..]), BinaryPrimitives.ReadUInt16BigEndian(icmp[6..]),
                icmp[8..], icmp.Length - 8));
            Interlocked.Increment(ref _icmpAnswered);
        }
    }

    private byte[] ArpFrame(bool request, byte[] dstMac, byte[] targetIp)
    {
        var f = new byte[60];
        dstMac.CopyTo(f, 0);
        mac.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), EtherArp);
        var a = f.AsSpan(14);
        BinaryPrimitives.WriteUInt16BigEndian(a, 1); // Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(a[2..], EtherIpv4);
        a[4] = 6;
        a[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(a[6..], request ? (ushort)1 : (ushort)2);
        mac.CopyTo(a[8..]);
        ip.CopyTo(a[14..]);
        (request ? new byte[6] : dstMac).CopyTo(a[18..]);
        targetIp.CopyTo(a[24..]);
        return f;
    }

    private byte[] IcmpFrame(byte[] dstMac, byte[] dstIp, byte type, ushort ident, ushort seq, ReadOnlySpan<byte> payload, int payloadLen)
    {
        int icmpLen = 8 + payloadLen;
        var f = new byte[Math.Max(60, 14 + 20 + icmpLen)];
        dstMac.CopyTo(f, 0);
        mac.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), EtherIpv4);
        var iph = f.AsSpan(14);
        iph[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(iph[2..], (ushort)(20 + icmpLen));
        iph[8] = 64;
        iph[9] = 1;
        ip.CopyTo(iph[12..]);
        dstIp.CopyTo(iph[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(iph[10..], Checksum(iph[..20]));
        var icmp = iph.Slice(20, icmpLen);
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
        return f;
    }

    /// <summary>The Internet checksum (RFC 1071).</summary>
    internal static ushort Checksum(ReadOnlySpan<byte> b)
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
}
