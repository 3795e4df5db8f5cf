using IfcVdpa.Interop.Primitives;
using IfcVdpa.Pci;

namespace IfcVdpa.Vfio.Tests;

/// <summary>The in-process half of VFIO MSI-X: eventfd signals (as the kernel writes them) → sink calls.</summary>
public sealed class MsixEventRelayTests
{
    private static bool WaitUntil(Func<bool> done, int ms = 5000)
    {
        var until = DateTime.UtcNow.AddMilliseconds(ms);
        while (!done())
        {
            if (DateTime.UtcNow > until)
            {
                return false;
            }
            Thread.Sleep(1);
        }
        return true;
    }

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
        var fd = EventFd.Create();
        var relay = new MsixEventRelay("t", [(fd, new CallbackSink(() => Interlocked.Increment(ref calls)))]);
        relay.Dispose();
        Assert.True(fd.Handle.IsClosed);
        Thread.Sleep(20);
        Assert.Equal(0, Volatile.Read(ref calls));
        relay.Dispose(); // idempotent
    }

    [Fact]
    public void A_sink_may_dispose_its_own_relay()
    {
        MsixEventRelay? relay = null;
        int calls = 0;
        var fd = EventFd.Create();
        relay = new MsixEventRelay("t", [(fd, new CallbackSink(() => { Interlocked.Increment(ref calls); relay!.Dispose(); }))]);
        fd.Signal();
        Assert.True(WaitUntil(() => Volatile.Read(ref calls) == 1));
        Thread.Sleep(20);
        Assert.Equal(1, Volatile.Read(ref calls));
    }
}
