namespace IfcVdpa.VhostUser.Tests;

/// <summary>
/// The error contract end to end: a device refusal (a VdpaException from the driver) becomes a NACK with the
/// reason in the log, the connection survives, and nothing of the failed start is left mapped or running.
/// </summary>
public sealed class ErrorContractTests : IDisposable
{
    private readonly RealDevice _dev = new(refuseQueueEnable: new HashSet<int> { 1 });
    private readonly GuestMemoryFixture _mem = new();
    private readonly SessionHarness _h;
    private readonly VirtioNetFrontEnd _fe;

    public ErrorContractTests()
    {
        _h = new SessionHarness(_dev.Adapter);
        _fe = new VirtioNetFrontEnd(_h.Fe, _mem);
    }

    public void Dispose()
    {
        _h.Dispose();
        _fe.Dispose();
        _dev.Dispose();
        _mem.Dispose();
    }

    [Fact]
    public void AQueueThatWillNotEnableIsANackAndTheConnectionSurvives()
    {
        _fe.Start(driverOk: false);
        ulong? ack = _h.Fe.SetU64(VhostUserRequest.SET_STATUS, 0xF);
        Assert.NotNull(ack);
        Assert.NotEqual(0UL, ack!.Value);
        Assert.True(_h.Logged("queue 1 did not enable"), _h.LogText);
        Assert.False(_h.Session.Configured);
        Assert.Equal(0, _dev.Vf.DmaMapCount); // the failed start left nothing mapped
        Assert.False(_dev.Vf.IsQueueRunning(0));

        // The same connection still answers.
        Assert.NotEqual(0UL, _h.Fe.GetU64(VhostUserRequest.GET_FEATURES));
        Assert.False(_h.WaitEnded(0));
        Assert.DoesNotContain("   at ", _h.LogText, StringComparison.Ordinal); // a reason, not a stack trace
    }
}
