using IfcVdpa.Peers.Tests.Harness;

namespace IfcVdpa.Peers.Tests;

/// <summary>The parsers the peer tests rely on, on output captured from the real tools.</summary>
public class HarnessParsingTests
{
    private const string PortStats = """
          ######################## NIC statistics for port 0  ########################
          RX-packets: 12896      RX-missed: 0          RX-bytes:  825344
          RX-errors: 0
          RX-nombuf:  0
          TX-packets: 12960      TX-errors: 0          TX-bytes:  829440

          Throughput (since last show)
          Rx-pps:            0          Rx-bps:            0
          Tx-pps:            0          Tx-bps:            0
          ############################################################################
        """;

    private const string XStats = """
        ###### NIC extended statistics for port 0
        rx_good_packets: 12896
        tx_good_packets: 12960
        rx_q0_good_packets: 6448
        rx_q1_good_packets: 6448
        tx_q0_good_packets: 6480
        tx_q1_good_packets: 6480
        """;

    [Fact]
    public void TestPmdPortAndExtendedCounters()
    {
        var c = TestPmd.ParseCounters(PortStats, XStats);
        Assert.Equal(12896, c.RxPackets);
        Assert.Equal(12960, c.TxPackets);
        Assert.Equal(825344, c.RxBytes);
        Assert.Equal(829440, c.TxBytes);
        Assert.Equal(6448, c.Queue("rx", 1));
        Assert.Equal(6480, c.Queue("tx", 0));
        Assert.Equal(-1, c.Queue("tx", 2));
    }

    [Fact]
    public void TestPmdOutputWithoutCountersIsAnError() =>
        Assert.Throws<FormatException>(() => TestPmd.ParseCounters("show port stats 0\n", ""));

    [Fact]
    public void ServeJsonSnapshotsByQueuePair()
    {
        string transcript = """
            12:00:00.000 /tmp/x.sock: listening on /tmp/x.sock (mode 600)
            {"time_ms":1,"connected":false,"running":false,"connections":0,"queues":[{"qidx":0,"type":"rx","packets":0,"bytes":0,"kicks":0,"interrupts":0,"errors":0,"drops":0},{"qidx":1,"type":"tx","packets":0,"bytes":0,"kicks":0,"interrupts":0,"errors":0,"drops":0},{"qidx":2,"type":"rx","packets":0,"bytes":0,"kicks":0,"interrupts":0,"errors":0,"drops":0},{"qidx":3,"type":"tx","packets":0,"bytes":0,"kicks":0,"interrupts":0,"errors":0,"drops":0}]}
            {"time_ms":2,"connected":true,"running":true,"connections":1,"queues":[{"qidx":0,"type":"rx","packets":10,"bytes":640,"kicks":0,"interrupts":3,"errors":0,"drops":2},{"qidx":1,"type":"tx","packets":12,"bytes":768,"kicks":4,"interrupts":0,"errors":0,"drops":0},{"qidx":2,"type":"rx","packets":7,"bytes":448,"kicks":0,"interrupts":1,"errors":0,"drops":1},{"qidx":3,"type":"tx","packets":8,"bytes":512,"kicks":2,"interrupts":0,"errors":0,"drops":0}]}
            {"time_ms":3,"connected":tr
            """;
        var s = ServeBackend.ParseSnapshots(transcript, 2);
        Assert.Equal(2, s.Count);
        Assert.Equal([0L, 0L], s[0].FromFrontEnd);
        Assert.Equal([12L, 8L], s[1].FromFrontEnd);
        Assert.Equal([10L, 7L], s[1].ToFrontEnd);
        Assert.Equal(3L, s[1].Drops);
        Assert.Equal(20L, s[1].TotalFromFrontEnd);
    }
}
