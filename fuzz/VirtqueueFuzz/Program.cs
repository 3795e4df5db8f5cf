using System.Buffers.Binary;
using IfcVdpa.Fuzz;
using IfcVdpa.VhostUser;
using IfcVdpa.Virtio;

// Target: virtqueue processing. A front-end brings the device up over vhost-user (real session, SoftIfcVf,
// datapath engine in Manual mode); then the input fills the rings and buffers and kicks:
//   header [features u8: bit0 packed, bit1 EVENT_IDX, bit2 INDIRECT_DESC, bit3 MRG_RXBUF, bit4 CSUM+GUEST_CSUM]
//          [ring size: 1 << (u8 % 9)]
//   records: 0 raw write [area u8][offset u16][n u8][bytes]  (area: ring q desc/avail/used, buffers q)
//            1 descriptor [q u8][i u8][slot u8][len u16][flags u16][next u16] (slot bit 7: wild address)
//            2 avail push [q u8][head u16] (split ring: slot avail.idx, then avail.idx + 1)
//            3 kick       [q u8][engine polls u8]
// Ends with GET_VRING_BASE on both rings and a disconnect; the stack checks nothing stays mapped.
return FuzzDriver.Run(args, VirtqueueTarget.Run, VirtqueueTarget.Seeds);

internal static class VirtqueueTarget
{
    private const ulong Extra = (1UL << VirtioFeature.F_RING_PACKED) | (1UL << VirtioFeature.NET_F_CSUM) | (1UL << VirtioFeature.NET_F_GUEST_CSUM);

    public static void Run(ReadOnlySpan<byte> input)
    {
        if (input.Length < 2)
        {
            return;
        }
        byte sel = input[0];
        uint num = 1u << (input[1] % 9);
        input = input[2..];
        using var stack = new VhostFuzzStack(Extra);
        ulong features = VhostInputBuilder.NetFeatures;
        if ((sel & 1) != 0) features |= 1UL << VirtioFeature.F_RING_PACKED;
        if ((sel & 2) != 0) features |= 1UL << VirtioFeature.F_RING_EVENT_IDX;
        if ((sel & 4) != 0) features |= 1UL << VirtioFeature.F_RING_INDIRECT_DESC;
        if ((sel & 8) != 0) features |= 1UL << VirtioFeature.NET_F_MRG_RXBUF;
        if ((sel & 16) != 0) features |= (1UL << VirtioFeature.NET_F_CSUM) | (1UL << VirtioFeature.NET_F_GUEST_CSUM);
        features &= stack.Session.OfferedFeatures;
        var prefix = new VhostInputBuilder().Negotiate(features).BringUp(rxBuffers: 0, num: num, ringBase: (sel & 1) != 0 ? 0x8000_8000u : 0).ToArray();
        Execute(stack, prefix);
        if (!stack.Session.Configured)
        {
            throw new InvalidOperationException($"BUG in the harness: the device did not start (features 0x{features:x}, ring size {num})");
        }
        var availIdx = new ushort[2];
        while (input.Length > 0 && stack.Open)
        {
            byte op = input[0];
            input = input[1..];
            switch (op & 3)
            {
                case 0:
                {
                    if (input.Length < 4) return;
                    int area = input[0] % 8;
                    int n = Math.Min(input[3], input.Length - 4);
                    ulong span = area < 6 ? 0x1000UL : 0x1_0000UL;
                    ulong off = BinaryPrimitives.ReadUInt16LittleEndian(input[1..]) % span;
                    n = (int)Math.Min((ulong)n, span - off);
                    ulong baseOff = area < 6 ? Part(area / 3, area % 3) : VhostInputBuilder.BufferOffset(area - 6, 0);
                    input.Slice(4, n).CopyTo(VhostFuzzStack.Guest(baseOff + off, n));
                    input = input[(4 + n)..];
                    break;
                }
                case 1:
                {
                    if (input.Length < 9) return;
                    int q = input[0] & 1;
                    int i = (int)(input[1] % num);
                    byte slot = input[2];
                    ulong addr = (slot & 0x80) != 0 ? (ulong)slot << 28 : VhostFuzzStack.Gpa + VhostInputBuilder.BufferOffset(q, slot % 32);
                    var d = VhostFuzzStack.Guest(Part(q, 0) + (ulong)(16 * i), 16);
                    BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
                    BinaryPrimitives.WriteUInt32LittleEndian(d[8..], BinaryPrimitives.ReadUInt16LittleEndian(input[3..]));
                    input.Slice(5, 4).CopyTo(d[12..]); // flags, next (split) / id, flags (packed)
                    input = input[9..];
                    break;
                }
                case 2:
                {
                    if (input.Length < 3) return;
                    int q = input[0] & 1;
                    ulong avail = Part(q, 1);
                    BinaryPrimitives.WriteUInt16LittleEndian(VhostFuzzStack.Guest(avail + 4 + (ulong)(2 * (availIdx[q] % num)), 2),
                        BinaryPrimitives.ReadUInt16LittleEndian(input[1..]));
                    availIdx[q]++;
                    BinaryPrimitives.WriteUInt16LittleEndian(VhostFuzzStack.Guest(avail + 2, 2), availIdx[q]);
                    input = input[3..];
                    break;
                }
                default:
                    if (input.Length < 2) return;
                    stack.Kick(2 * (input[0] & 1), 1 + (input[1] & 7));
                    input = input[2..];
                    break;
            }
        }
        stack.Poll(4);
        if (Environment.GetEnvironmentVariable("FUZZ_DEBUG") is not null)
        {
            var q0 = stack.Vf.GetQueueCounters(0);
            var q1 = stack.Vf.GetQueueCounters(1);
            Console.WriteLine($"sel 0x{sel:x2}: rx {q0} tx {q1} needs-reset={stack.Vf.NeedsResetReason}");
        }
        Execute(stack, new VhostInputBuilder { Flags = VhostInputBuilder.V1 }
            .State(VhostUserRequest.GET_VRING_BASE, 0, 0).State(VhostUserRequest.GET_VRING_BASE, 1, 0).ToArray());
    }

    private static ulong Part(int q, int part)
    {
        var (d, a, u) = VhostInputBuilder.RingOffset(q);
        return part switch { 0 => d, 1 => a, _ => u };
    }

    /// <summary>Runs builder records (messages only) against the stack.</summary>
    private static void Execute(VhostFuzzStack stack, ReadOnlySpan<byte> records)
    {
        while (records.Length > 0)
        {
            if (records[0] == 1)
            {
                int n = records[5];
                VhostFuzzStack.Guest(BinaryPrimitives.ReadUInt32LittleEndian(records[1..]), n);
                records.Slice(6, n).CopyTo(VhostFuzzStack.Guest(BinaryPrimitives.ReadUInt32LittleEndian(records[1..]), n));
                records = records[(6 + n)..];
                continue;
            }
            int len = BinaryPrimitives.ReadUInt16LittleEndian(records[4..]);
            stack.Message(records[1], records[2], records.Slice(6, len), len, records[3]);
            records = records[(6 + len)..];
        }
    }

    public static IEnumerable<(string, byte[])> Seeds()
    {
        // One TX frame and RX buffers, for each feature mix the unit tests use.
        foreach (byte sel in new byte[] { 0, 2, 4, 6, 8, 16, 1, 3 })
        {
            var s = new MemoryStream();
            s.WriteByte(sel);
            s.WriteByte(8); // 256 entries
            bool packed = (sel & 1) != 0;
            for (int i = 0; i < 4; i++)
            {
                // RX buffer i: device-writable (packed: avail bit set, used bit clear, id i)
                Desc(s, 0, (byte)i, (byte)i, 2048, packed ? (ushort)i : (ushort)2, packed ? (ushort)(0x80 | 2) : (ushort)0);
                if (!packed)
                {
                    Avail(s, 0, (ushort)i);
                }
            }
            // TX: one 64-byte frame (12-byte header + 52) in buffer slot 0
            var frame = new byte[76];
            frame[12] = 0x02;
            frame[17] = 0x01;
            s.WriteByte(0);
            s.WriteByte(6 + 1); // area: ring 1 buffers
            s.Write(new byte[2]);
            s.WriteByte((byte)frame.Length);
            s.Write(frame);
            Desc(s, 1, 0, 0, (ushort)frame.Length, packed ? (ushort)0 : (ushort)0, packed ? (ushort)0x80 : (ushort)0);
            if (!packed)
            {
                Avail(s, 1, 0);
            }
            s.WriteByte(3);
            s.WriteByte(1);
            s.WriteByte(3);
            yield return ($"tx-rx-{sel:x2}", s.ToArray());
        }
    }

    private static void Desc(MemoryStream s, int q, byte i, byte slot, ushort len, ushort w0, ushort w1)
    {
        Span<byte> b = stackalloc byte[10];
        b[0] = 1;
        b[1] = (byte)q;
        b[2] = i;
        b[3] = slot;
        BinaryPrimitives.WriteUInt16LittleEndian(b[4..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(b[6..], w0);
        BinaryPrimitives.WriteUInt16LittleEndian(b[8..], w1);
        s.Write(b);
    }

    private static void Avail(MemoryStream s, int q, ushort head)
    {
        s.WriteByte(2);
        s.WriteByte((byte)q);
        Span<byte> h = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(h, head);
        s.Write(h);
    }
}
