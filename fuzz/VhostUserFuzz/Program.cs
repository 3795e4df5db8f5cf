using System.Buffers.Binary;
using IfcVdpa.Fuzz;
using IfcVdpa.VhostUser;

// Target: vhost-user message handling. The input is a sequence of records, each one of
//   0: a message   [request u8][flags u8][fd spec u8][length u16][payload]  (tag bit 7: size field
//      claims more than sent = truncated; tag bit 6: size field claims less = desynchronised stream);
//      fd spec: bits 0-2 count, bits 3-5 kind (0 eventfd, 1 guest memfd, 2 4-KiB memfd, 3 /dev/null,
//      4 socket, 5 eventfd/memfd alternating)
//   1: a guest-memory write [gpa offset u32][n u8][bytes]
//   2: a kick               [eventfd index u8][engine polls u8]
//   3: engine polls         [n u8]
// fed through a socketpair into a VhostUserSession bound to SoftIfcVf + IfcvfAdapter.
return FuzzDriver.Run(args, VhostUserTarget.Run, VhostUserTarget.Seeds);

internal static class VhostUserTarget
{
    public static void Run(ReadOnlySpan<byte> input)
    {
        using var stack = new VhostFuzzStack(1UL << IfcVdpa.Virtio.VirtioFeature.F_RING_PACKED); // packed offered too
        int messages = 0;
        while (input.Length > 0 && stack.Open && messages < VhostFuzzStack.MaxMessages)
        {
            byte tag = input[0];
            input = input[1..];
            switch (tag & 3)
            {
                case 0:
                {
                    if (input.Length < 5)
                    {
                        return;
                    }
                    uint request = input[0];
                    uint flags = input[1];
                    byte fdSpec = input[2];
                    int len = Math.Min(BinaryPrimitives.ReadUInt16LittleEndian(input[3..]), input.Length - 5);
                    var payload = input.Slice(5, len);
                    input = input[(5 + len)..];
                    int sizeField = (tag & 0x80) != 0 ? len + 1 + ((tag >> 2) & 0xF)
                        : (tag & 0x40) != 0 ? Math.Max(0, len - 1 - ((tag >> 2) & 0xF)) : len;
                    stack.Message(request, flags, payload, sizeField, fdSpec);
                    messages++;
                    break;
                }
                case 1:
                {
                    if (input.Length < 5)
                    {
                        return;
                    }
                    ulong off = BinaryPrimitives.ReadUInt32LittleEndian(input) % VhostFuzzStack.Size;
                    int n = Math.Min(input[4], input.Length - 5);
                    n = (int)Math.Min((ulong)n, VhostFuzzStack.Size - off);
                    input.Slice(5, n).CopyTo(VhostFuzzStack.Guest(off, n));
                    input = input[(5 + n)..];
                    break;
                }
                case 2:
                    if (input.Length < 2)
                    {
                        return;
                    }
                    stack.Kick(input[0], Math.Min((int)input[1], 8));
                    input = input[2..];
                    break;
                default:
                    if (input.Length < 1)
                    {
                        return;
                    }
                    stack.Poll(1 + (input[0] & 7));
                    input = input[1..];
                    break;
            }
        }
        if (Environment.GetEnvironmentVariable("FUZZ_DEBUG") is not null)
        {
            Console.WriteLine($"configured={stack.Session.Configured} messages={stack.Session.Messages} errors={stack.Session.Errors} open={stack.Open} " +
                $"rx used={BinaryPrimitives.ReadUInt16LittleEndian(VhostFuzzStack.Guest(VhostInputBuilder.RingOffset(0).Used + 2, 2))} " +
                $"tx used={BinaryPrimitives.ReadUInt16LittleEndian(VhostFuzzStack.Guest(VhostInputBuilder.RingOffset(1).Used + 2, 2))}");
        }
    }

    /// <summary>
    /// Inputs that once found a bug (also written by --seeds into corpus/; copied to regressions/):
    /// packed SET_VRING_BASE 0x70007000|wrap before SET_VRING_NUM 256 (the engine threw on every poll).
    /// </summary>
    public static byte[] PackedBaseBeforeNum()
    {
        var b = new VhostInputBuilder().Negotiate(VhostInputBuilder.NetFeatures | (1UL << IfcVdpa.Virtio.VirtioFeature.F_RING_PACKED));
        b.MemTable(VhostFuzzStack.Region);
        for (uint q = 0; q < 2; q++)
        {
            b.State(VhostUserRequest.SET_VRING_BASE, q, 0x8000_8000 | 0x7000 | (0x7000u << 16));
            b.State(VhostUserRequest.SET_VRING_NUM, q, 256);
            var (d, a, u) = VhostInputBuilder.RingOffset((int)q);
            var p = new byte[40];
            new VringAddr(q, 0, VhostFuzzStack.Va + d, VhostFuzzStack.Va + u, VhostFuzzStack.Va + a, 0).Write(p);
            b.Msg(VhostUserRequest.SET_VRING_ADDR, p);
            b.U64(VhostUserRequest.SET_VRING_KICK, q, VhostInputBuilder.FdEvent | 1);
            b.U64(VhostUserRequest.SET_VRING_CALL, q, VhostInputBuilder.FdEvent | 1);
            b.State(VhostUserRequest.SET_VRING_ENABLE, q, 1);
        }
        return b.U64(VhostUserRequest.SET_STATUS, 0xF).Kick(0, 4).Kick(2, 4).ToArray();
    }

    public static IEnumerable<(string, byte[])> Seeds()
    {
        yield return ("regression-packed-base-before-num", PackedBaseBeforeNum());
        yield return ("negotiate", new VhostInputBuilder().Negotiate().ToArray());
        yield return ("negotiate-noack", new VhostInputBuilder().Negotiate(protocol: 0).ToArray());
        yield return ("bringup-tx", new VhostInputBuilder().Negotiate().BringUp().Tx(0, 60).Tx(1, 1514).ToArray());
        yield return ("bringup-nostatus", new VhostInputBuilder().Negotiate(protocol: VhostUserProtocolFeature.Supported & ~(1UL << VhostUserProtocolFeature.STATUS))
            .BringUp(status: false).Tx(0, 100).ToArray());
        var b = new VhostInputBuilder().Negotiate().BringUp().Tx(0, 64);
        b.State(VhostUserRequest.GET_VRING_BASE, 0, 0).State(VhostUserRequest.GET_VRING_BASE, 1, 0);
        yield return ("bringup-getbase", b.ToArray());
        var r = VhostFuzzStack.Region;
        ulong half = r.Size / 2;
        var add = new VhostInputBuilder().Negotiate();
        foreach (var d in new[] { r with { Size = half }, new MemoryRegionDesc(r.GuestPhysAddr + half, half, r.UserAddr + half, r.MmapOffset + half) })
        {
            var p = new byte[40];
            d.Write(p.AsSpan(8));
            add.Msg(VhostUserRequest.ADD_MEM_REG, p, VhostInputBuilder.FdGuest | 1);
        }
        var rem = new byte[40];
        (r with { Size = half }).Write(rem.AsSpan(8));
        add.Msg(VhostUserRequest.REM_MEM_REG, rem);
        yield return ("add-rem-memreg", add.ToArray());
        yield return ("memtable-twice", new VhostInputBuilder().Negotiate().BringUp().Tx(0, 64).MemTable(r).MemTable(r with { Size = half }).Tx(1, 64).ToArray());
        yield return ("overlap", new VhostInputBuilder().Negotiate().MemTable(r, r with { UserAddr = r.UserAddr + 0x1000_0000 }).ToArray());
        var cfg = new byte[12 + 8];
        BinaryPrimitives.WriteUInt32LittleEndian(cfg.AsSpan(4), 8);
        yield return ("config-status", new VhostInputBuilder().Negotiate().Msg(VhostUserRequest.GET_CONFIG, cfg)
            .Msg(VhostUserRequest.GET_STATUS, []).Msg(VhostUserRequest.GET_QUEUE_NUM, []).Msg(VhostUserRequest.GET_MAX_MEM_SLOTS, [])
            .U64(VhostUserRequest.NET_SET_MTU, 1500).U64(VhostUserRequest.SET_BACKEND_REQ_FD, 0, 4 << 3 | 1).ToArray());
        yield return ("packed-bringup", new VhostInputBuilder().Negotiate(VhostInputBuilder.NetFeatures | (1UL << IfcVdpa.Virtio.VirtioFeature.F_RING_PACKED))
            .BringUp(rxBuffers: 0, ringBase: 0x8000_8000).Kick(2, 3).ToArray());
        yield return ("reset-owner", new VhostInputBuilder().Negotiate().BringUp().Msg(VhostUserRequest.RESET_OWNER, []).U64(VhostUserRequest.SET_FEATURES, VhostInputBuilder.NetFeatures).BringUp().Tx(0, 64).ToArray());
    }
}
