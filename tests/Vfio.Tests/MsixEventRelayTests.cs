using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;

namespace IfcVdpa.Vfio.Tests;

/// <summary>The in-process half of VFIO MSI-X: eventfd signals (as the kernel writes them) → sink calls.</summary>
public sealed class MsixEventRelayTests
{
    private static bool WaitUntil(Func<bool> done) => SpinWait.SpinUntil(done, 5000);

    [Fact]
    public void Each_vector_runs_its_own_sink()
    {
        int a = 0, b = 0;
        var fa = EventFd.Create();
        var fb = EventFd.Create();
        using var relay = new MsixEventRelay("t", [(fa, new CallbackSink(() => Interlocked.Increment(ref a))), (fb, new CallbackSink(() => Interlocked.Increment(ref b)))]);
        fa.Signal();
        Assert.True(WaitUntil(() => Volatile.Read(ref a) == 1));
        fb.Signal();
        Assert.True(WaitUntil(() => Volatile.Read(ref b) == 1));
        fa.Signal();
        Assert.True(WaitUntil(() => Volatile.Read(ref a) == 2));
        Assert.Equal(1, Volatile.Read(ref b));
        Assert.Equal(3, relay.Signals);
    }

    [Fact]
    public void A_throwing_sink_is_counted_and_the_others_keep_working()
    {
        int ok = 0;
        var bad = EventFd.Create();
        var good = EventFd.Create();
        using var relay = new MsixEventRelay("t", [(bad, new CallbackSink(() => throw new InvalidOperationException("consumer bug"))), (good, new CallbackSink(() => Interlocked.Increment(ref ok)))]);
        bad.Signal();
        Assert.True(WaitUntil(() => relay.SinkErrors == 1));
        good.Signal();
        Assert.True(WaitUntil(() => Volatile.Read(ref ok) == 1));
    }

    [Fact]
    public void No_sink_runs_after_dispose_and_the_eventfds_are_closed()
    {
        int calls = 0;
        Thread? relayThread = null;
        var fd = EventFd.Create();
        var relay = new MsixEventRelay("t", [(fd, new CallbackSink(() =>
        {
            relayThread = Thread.CurrentThread;
            Interlocked.Increment(ref calls);
        }))]);
        fd.Signal();
        Assert.True(WaitUntil(() => Volatile.Read(ref calls) == 1));
        fd.Signal(); // pending when Dispose starts: it may run before Dispose returns, never after
        relay.Dispose();
        int atDispose = Volatile.Read(ref calls);
        Assert.True(fd.Handle.IsClosed);
        // The thread that runs the sinks has ended: no sink can run again (no wait needed to know it).
        Assert.False(relayThread!.IsAlive, "the relay thread still runs after Dispose returned");
        Assert.Equal(atDispose, Volatile.Read(ref calls));
        relay.Dispose(); // idempotent
    }

    [Fact]
    public void A_sink_may_dispose_its_own_relay()
    {
        MsixEventRelay? relay = null;
        int calls = 0;
        var fd = EventFd.Create();
        Thread? relayThread = null;
        relay = new MsixEventRelay("t", [(fd, new CallbackSink(() =>
        {
            relayThread = Thread.CurrentThread;
            Interlocked.Increment(ref calls);
            relay!.Dispose();
        }))]);
        fd.Signal();
        Assert.True(WaitUntil(() => Volatile.Read(ref calls) == 1));
        // The relay's thread ends after its sink disposed it: once it has, no sink can run again.
        Assert.True(relayThread!.Join(5000), "the relay thread kept running after its sink disposed the relay");
        Assert.Equal(1, Volatile.Read(ref calls));
        Assert.True(fd.Handle.IsClosed);
    }
}
