using System.Runtime.InteropServices;

namespace IfcVdpa.Cli;

/// <summary>SIGINT and SIGTERM both ask a foreground command (daemon, serve) to stop cleanly.</summary>
internal sealed class ShutdownSignal : IDisposable
{
    private readonly PosixSignalRegistration _sigint;
    private readonly PosixSignalRegistration _sigterm;

    public ShutdownSignal(Action onSignal)
    {
        void Handle(PosixSignalContext c)
        {
            c.Cancel = true; // we exit by ourselves, after cleaning up
            onSignal();
        }
        _sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle);
        _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle);
    }

    public void Dispose()
    {
        _sigint.Dispose();
        _sigterm.Dispose();
    }
}
