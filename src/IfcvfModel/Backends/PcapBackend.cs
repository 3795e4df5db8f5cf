using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Backends;

/// <summary>Everything the VF sends is appended to a pcap file; nothing is received.</summary>
internal sealed class PcapBackend(string path) : NetBackend
{
    private readonly PcapWriter _writer = new(path);

    private protected override TResult OpenPort<TResult>(INetPortUser<TResult> user) => user.Use(new Port(_writer));

    public override string ToString() => $"pcap:{_writer.Path}";

    private protected override void Close() => _writer.Dispose();

    private readonly struct Port(PcapWriter writer) : INetPort
    {
        public int WakeFd => -1;

        public bool HoldsWhileStopped => false;

        public bool Transmit<TSink>(ReadOnlySpan<byte> frame, int pair, ref TSink local) where TSink : IFrameSink, allows ref struct
        {
            writer.Write(frame[VirtioNetHeader.Size..]);
            return true;
        }

        public void TxBurstDone()
        {
        }

        public int Receive<TSink>(ref TSink sink, int max) where TSink : IFrameSink, allows ref struct => 0;

        public void Idle() => writer.Flush();
    }
}
