using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser.Tests;

public class CodecTests
{
    [Theory]
    [InlineData(0x0u, 8u, "version")]
    [InlineData(0x2u, 8u, "version")]
    [InlineData(0x5u, 8u, "REPLY")]
    [InlineData(0x11u, 8u, "unknown flag")]
    [InlineData(0x1u, 4097u, "exceeds")]
    public void HeaderChecksRejectBadFlagsAndSizes(uint flags, uint size, string fragment)
    {
        string? e = VhostUserCodec.CheckHeader(flags, size);
        Assert.NotNull(e);
        Assert.Contains(fragment, e, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0x1u, 0u)]
    [InlineData(0x9u, 40u)]
    [InlineData(0x1u, 4096u)]
    public void HeaderChecksAcceptVersion1Requests(uint flags, uint size) => Assert.Null(VhostUserCodec.CheckHeader(flags, size));

    [Theory]
    [InlineData(VhostUserRequest.SET_FEATURES, 4, false)]
    [InlineData(VhostUserRequest.SET_FEATURES, 8, true)]
    [InlineData(VhostUserRequest.SET_VRING_ADDR, 39, false)]
    [InlineData(VhostUserRequest.SET_VRING_ADDR, 40, true)]
    [InlineData(VhostUserRequest.SET_VRING_NUM, 16, false)]
    [InlineData(VhostUserRequest.GET_FEATURES, 0, true)]
    [InlineData(VhostUserRequest.GET_FEATURES, 3, false)]
    [InlineData(VhostUserRequest.ADD_MEM_REG, 32, false)]
    [InlineData(VhostUserRequest.SET_STATUS, 0, false)]
    public void PayloadSizeIsCheckedPerRequest(VhostUserRequest r, int size, bool ok) =>
        Assert.Equal(ok, VhostUserCodec.CheckPayload(r, new byte[size]) is null);

    [Fact]
    public void MemTableSizeMustMatchItsRegionCount()
    {
        var p = new byte[8 + 32];
        BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
        Assert.Null(VhostUserCodec.CheckPayload(VhostUserRequest.SET_MEM_TABLE, p));
        BinaryPrimitives.WriteUInt32LittleEndian(p, 2);
        Assert.Contains("expected 72", VhostUserCodec.CheckPayload(VhostUserRequest.SET_MEM_TABLE, p), StringComparison.Ordinal);
        var nine = new byte[8 + (9 * 32)];
        BinaryPrimitives.WriteUInt32LittleEndian(nine, 9);
        Assert.Contains("9 regions", VhostUserCodec.CheckPayload(VhostUserRequest.SET_MEM_TABLE, nine), StringComparison.Ordinal);
        BinaryPrimitives.WriteUInt32LittleEndian(p, 0);
        Assert.NotNull(VhostUserCodec.CheckPayload(VhostUserRequest.SET_MEM_TABLE, p));
    }

    [Fact]
    public void ConfigSizeIsBoundedAndMatched()
    {
        var p = new byte[12 + 6];
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), 6);
        Assert.Null(VhostUserCodec.CheckPayload(VhostUserRequest.GET_CONFIG, p));
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), 300);
        Assert.NotNull(VhostUserCodec.CheckPayload(VhostUserRequest.GET_CONFIG, p));
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), 5);
        Assert.NotNull(VhostUserCodec.CheckPayload(VhostUserRequest.SET_CONFIG, p));
    }

    [Fact]
    public void DescriptorCountsFollowTheRequest()
    {
        var u64 = new byte[8];
        Assert.Equal((1, 1), VhostUserCodec.ExpectedFds(VhostUserRequest.SET_VRING_KICK, u64));
        BinaryPrimitives.WriteUInt64LittleEndian(u64, 0x100 | 1);
        Assert.Equal((0, 0), VhostUserCodec.ExpectedFds(VhostUserRequest.SET_VRING_CALL, u64));
        var table = new byte[8 + 64];
        BinaryPrimitives.WriteUInt32LittleEndian(table, 2);
        Assert.Equal((2, 2), VhostUserCodec.ExpectedFds(VhostUserRequest.SET_MEM_TABLE, table));
        Assert.Equal((1, 1), VhostUserCodec.ExpectedFds(VhostUserRequest.ADD_MEM_REG, new byte[40]));
        Assert.Equal((0, 1), VhostUserCodec.ExpectedFds(VhostUserRequest.REM_MEM_REG, new byte[40]));
        Assert.Equal((0, 0), VhostUserCodec.ExpectedFds(VhostUserRequest.SET_FEATURES, u64));
    }

    [Fact]
    public void PayloadStructsRoundTrip()
    {
        var b = new byte[40];
        var a = new VringAddr(3, 0, 0x1000, 0x3000, 0x2000, 0);
        a.Write(b);
        Assert.Equal(0x3000UL, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(16))); // used before avail
        Assert.Equal(a, VringAddr.Read(b));
        var r = new MemoryRegionDesc(1, 2, 3, 4);
        r.Write(b);
        Assert.Equal(r, MemoryRegionDesc.Read(b));
    }
}

public class UnixSocketTests
{
    [Fact]
    public void EventFdCrossesTheSocketAndStillWorks()
    {
        var (a, b) = UnixSocket.CreatePair();
        using var _a = a;
        using var _b = b;
        using var ev = EventFd.Create();
        a.Send([1, 2, 3, 4], [ev.Fd]);
        var fds = new List<SafeFd>();
        var buf = new byte[4];
        b.ReceiveExact(buf, fds, 1000);
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, buf);
        Assert.Single(fds);
        Assert.NotEqual(ev.Fd, fds[0].Fd);
        Assert.True(FdKind.IsEventFd(fds[0].Fd));
        using var received = EventFd.Adopt(fds[0]);
        Assert.True(received.Signal());
        Assert.True(ev.WaitReadable(1000));
    }

    [Fact]
    public void ManyDescriptorsArriveWithTheirMessage()
    {
        var (a, b) = UnixSocket.CreatePair();
        using var _a = a;
        using var _b = b;
        using var ev = EventFd.Create();
        // 28 copies of one eventfd (the receive buffer has room for 32).
        a.Send([9], Enumerable.Repeat(ev.Fd, 28).ToArray());
        var fds = new List<SafeFd>();
        b.ReceiveExact(new byte[1], fds, 1000);
        Assert.Equal(28, fds.Count);
        fds.ForEach(f => f.Dispose());
        Assert.Throws<ArgumentException>(() => a.Send([9], Enumerable.Repeat(ev.Fd, 33).ToArray()));
    }

    [Fact]
    public void ListenSetsModeRemovesStaleSocketAndRefusesLiveOne()
    {
        string dir = Directory.CreateTempSubdirectory("vu").FullName;
        string path = Path.Combine(dir, "s.sock");
        try
        {
            var first = UnixSocket.Listen(path, 0x180);
            Assert.True(FileStatus.OfPath(path)!.Value.IsSocket);
            Assert.Equal(0x180u, FileStatus.OfPath(path)!.Value.Mode & 0x1FF);
            Assert.Throws<IOException>(() => UnixSocket.Listen(path, 0x180)); // live
            first.Handle.Dispose(); // dies without removing its file: a stale socket
            Assert.True(File.Exists(path));
            using var second = UnixSocket.Listen(path, 0x1B0);
            Assert.Equal(0x1B0u, FileStatus.OfPath(path)!.Value.Mode & 0x1FF);
            File.WriteAllText(path + ".txt", "x");
            Assert.Throws<IOException>(() => UnixSocket.Listen(path + ".txt", 0x180)); // not a socket
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
