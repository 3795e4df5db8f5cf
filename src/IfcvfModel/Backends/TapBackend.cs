using IfcVdpa.Interop.Primitives;
using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel.Backends;

/// <summary>
/// A Linux TAP interface with a virtio-net header on each frame. Frames read from it go to the RX queue of
/// the pair their flow hashes to (<see cref="FlowHash"/>), so a multiqueue guest sees traffic on every pair.
/// </summary>
internal sealed class TapBackend(string name) : NetBackend
{
    private readonly TapDevice _tap = TapDevice.Open(name, vnetHeader: true);
    private readonly byte[] _in = new byte[VirtioNetHeader.Size + 65536];
    private volatile bool _dead;

    public override string? TapName => _tap.Name;

    private protected override TResult OpenPort<TResult>(INetPortUser<TResult> user) => user.Use(new Port(this));

    public override string ToString() => $"tap:{_tap.Name}";

    private protected override void Close() => _tap.Dispose();

    /// <summary>The TAP's carrier (TUNSETCARRIER); a failure is logged and reported false.</summary>
    internal override bool SetCarrier(bool up)
    {
        if (_dead || Disposed)
        {
            return false;
        }
        int r = _tap.SetCarrier(up);
        if (r < 0)
        {
            Host?.Log($"TAP {_tap.Name}: carrier {(up ? "on" : "off")} failed (errno {-r})");
            return false;
        }
        return true;
    }

    /// <summary>
    /// The TAP interface went away (ip link del) or broke: its fd now polls readable forever with an error.
    /// Stop reading and polling it (else the worker spins), report link down, log once. Frames sent to it are
    /// dropped and counted by the write path.
    /// </summary>
    private void Failed(int errno)
    {
        if (_dead)
        {
            return;
        }
        _dead = true;
        Host?.Log($"TAP {_tap.Name} failed (errno {errno}): link down, no more reads");
        Host?.LinkChanged(false);
    }

    private readonly struct Port(TapBackend self) : INetPort
    {
        public int WakeFd => self._dead ? -1 : self._tap.Fd;

        public bool HoldsWhileStopped => true;

        public bool Transmit<TSink>(ReadOnlySpan<byte> frame, int pair, ref TSink local) where TSink : IFrameSink, allows ref struct =>
            self._tap.Write(frame);

        public void TxBurstDone()
        {
        }

        public int Receive<TSink>(ref TSink sink, int max) where TSink : IFrameSink, allows ref struct
        {
            if (self._dead)
            {
                return 0;
            }
            var buf = self._in;
            int done = 0;
            int pairs = sink.SteeringPairs;
            while (done < max)
            {
                int n = self._tap.Read(buf);
                if (n <= 0)
                {
                    if (n < 0)
                    {
                        self.Failed(-n);
                    }
                    break;
                }
                done++;
                if (n >= VirtioNetHeader.Size)
                {
                    sink.Deliver(buf.AsSpan(0, n), FlowHash.Pair(buf.AsSpan(VirtioNetHeader.Size, n - VirtioNetHeader.Size), pairs));
                }
            }
            return done;
        }

        public void Idle()
        {
        }
    }
}
