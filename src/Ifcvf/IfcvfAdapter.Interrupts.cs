using IfcVdpa.Pci;
using IfcVdpa.Vdpa;
using IfcVdpa.Virtio;

namespace IfcVdpa.Ifcvf;

/// <summary>
/// Interrupts (Linux ifcvf ≥ 5.18): with nr_vring+1 vectors each vq gets vector i and config gets
/// vector nr_vring; with 2..nr_vring vectors all vqs share vector 0 and config uses vector 1; with one
/// vector everything shares it and the handler reads ISR for the config bit. A vq callback that is an
/// eventfd becomes the vector's sink itself (per-vq mode), so the interrupt writes the call fd with no hop.
/// A vq callback that is a handler runs on the thread that raised the interrupt (the device's datapath):
/// it must be short and must not call control ops of this device.
/// </summary>
public sealed partial class IfcvfAdapter
{
    private readonly VdpaCallback?[] _vqCallbacks;
    private VdpaCallback? _configCallback;
    private long _configInterrupts;
    private long _callbackErrors;
    private IfcvfIrqMode _irqMode;

    /// <summary>How the vectors are used right now (None while not DRIVER_OK).</summary>
    public IfcvfIrqMode IrqMode
    {
        get { lock (_ctl) { return _irqMode; } }
    }

    /// <summary>Config-change interrupts handled in-process.</summary>
    public long ConfigInterrupts => Interlocked.Read(ref _configInterrupts);

    /// <summary>Callbacks that threw inside an interrupt handler (contained, counted).</summary>
    public long CallbackErrors => Interlocked.Read(ref _callbackErrors);

    /// <summary>The mode Linux would pick for this many vectors.</summary>
    public static IfcvfIrqMode ChooseIrqMode(int vectors, int numVqs) =>
        vectors >= numVqs + 1 ? IfcvfIrqMode.PerVq :
        vectors >= 2 ? IfcvfIrqMode.SharedVq :
        vectors == 1 ? IfcvfIrqMode.DeviceShared : IfcvfIrqMode.None;

    /// <summary>set_vq_cb. In per-vq mode with interrupts up, the vector's sink is replaced at once.</summary>
    public void SetVqCallback(int qid, VdpaCallback? callback)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            CheckQueue(qid);
            var old = _vqCallbacks[qid];
            Volatile.Write(ref _vqCallbacks[qid], callback);
            if (_irqMode == IfcvfIrqMode.PerVq && old?.EventFd != callback?.EventFd)
            {
                _pci.EnableMsix(BuildSinks(_irqMode));
            }
        }
    }

    /// <summary>set_config_cb.</summary>
    public void SetConfigCallback(VdpaCallback? callback)
    {
        lock (_ctl)
        {
            ThrowIfRemoved();
            var old = _configCallback;
            Volatile.Write(ref _configCallback, callback);
            if (_irqMode is IfcvfIrqMode.PerVq or IfcvfIrqMode.SharedVq && old?.EventFd != callback?.EventFd)
            {
                _pci.EnableMsix(BuildSinks(_irqMode));
            }
        }
    }

    /// <summary>ifcvf_request_irq: enable MSI-X with a sink per vector, then program and verify the vectors.</summary>
    private void RequestIrqs()
    {
        var mode = ChooseIrqMode(_pci.MsixVectorCount, NumVqs);
        if (mode == IfcvfIrqMode.None)
        {
            throw new IfcvfDeviceException($"{Name}: {_pci.Address} has no MSI-X vectors; cannot enter DRIVER_OK");
        }
        _pci.EnableMsix(BuildSinks(mode));
        _irqMode = mode;
        try
        {
            ushort configVector = mode switch
            {
                IfcvfIrqMode.PerVq => (ushort)NumVqs,
                IfcvfIrqMode.SharedVq => 1,
                _ => 0,
            };
            if (_hw.SetConfigVector(configVector) != configVector)
            {
                throw new IfcvfDeviceException($"{Name}: device refused config vector {configVector}");
            }
            for (int q = 0; q < NumVqs; q++)
            {
                // A queue enabled before DRIVER_OK got its vector then (set_vq_ready): VIRTIO 1.2 §4.1.4.3.2,
                // the driver configures a queue before queue_enable and not after; here it is only checked.
                ushort v = VqVector(mode, q);
                ushort got = _hw.GetVqReady(q) ? _hw.GetVqVector(q) : _hw.SetVqVector(q, v);
                if (got != v)
                {
                    throw new IfcvfDeviceException($"{Name}: device refused vector {v} for queue {q}");
                }
            }
        }
        catch
        {
            QuiesceIrqs();
            throw;
        }
    }

    /// <summary>The vector queue <paramref name="q"/> uses in <paramref name="mode"/> (per-vq: its own; otherwise shared vector 0).</summary>
    private static ushort VqVector(IfcvfIrqMode mode, int q) => mode == IfcvfIrqMode.PerVq ? (ushort)q : (ushort)0;

    /// <summary>The vector a queue gets when it is enabled (the mode the function's MSI-X table allows).</summary>
    private ushort VqVectorAtEnable(int q) => VqVector(ChooseIrqMode(_pci.MsixVectorCount, NumVqs), q);

    /// <summary>
    /// ifcvf_stop's interrupt half: every vector NO_VECTOR, then MSI-X off (no sink runs after). An enabled
    /// queue keeps its vector (VIRTIO 1.2 §4.1.4.3.2: not reconfigured while enabled; the reset that follows
    /// clears it) and can no longer signal anyway: MSI-X is off.
    /// </summary>
    private void QuiesceIrqs()
    {
        _hw.SetConfigVector(VirtioPci.NoVector);
        for (int q = 0; q < NumVqs; q++)
        {
            if (!_hw.GetVqReady(q))
            {
                _hw.SetVqVector(q, VirtioPci.NoVector);
            }
        }
        _pci.DisableMsix();
        _irqMode = IfcvfIrqMode.None;
    }

    private void QuiesceIrqsBestEffort()
    {
        try
        {
            QuiesceIrqs();
        }
        catch (IfcvfDeviceException)
        {
            _pci.DisableMsix();
            _irqMode = IfcvfIrqMode.None;
        }
    }

    private IMsixSink?[] BuildSinks(IfcvfIrqMode mode)
    {
        switch (mode)
        {
            case IfcvfIrqMode.PerVq:
            {
                var sinks = new IMsixSink?[NumVqs + 1];
                for (int q = 0; q < NumVqs; q++)
                {
                    int queue = q;
                    sinks[q] = _vqCallbacks[q]?.EventFd is { } fd
                        ? new EventFdSink(fd)
                        : new CallbackSink(() => OnVqInterrupt(queue));
                }
                sinks[NumVqs] = ConfigSink();
                return sinks;
            }
            case IfcvfIrqMode.SharedVq:
                return [new CallbackSink(OnSharedVqInterrupt), ConfigSink()];
            default:
                return [new CallbackSink(OnDeviceSharedInterrupt)];
        }
    }

    private IMsixSink ConfigSink() =>
        _configCallback?.EventFd is { } fd ? new EventFdSink(fd) : new CallbackSink(OnConfigInterrupt);

    /// <summary>Per-vq handler: run the vq's callback, if any.</summary>
    private void OnVqInterrupt(int q)
    {
        Interlocked.Increment(ref _interrupts[q]);
        Invoke(Volatile.Read(ref _vqCallbacks[q]));
    }

    /// <summary>Shared-vq handler: no per-queue cause, so every vq callback runs.</summary>
    private void OnSharedVqInterrupt()
    {
        for (int q = 0; q < _vqCallbacks.Length; q++)
        {
            var cb = Volatile.Read(ref _vqCallbacks[q]);
            if (cb is not null)
            {
                Interlocked.Increment(ref _interrupts[q]);
                Invoke(cb);
            }
        }
    }

    /// <summary>Device-shared handler: ISR bit 1 means config changed; then the shared-vq handler.</summary>
    private void OnDeviceSharedInterrupt()
    {
        if ((_hw.ReadIsr() & VirtioPci.IsrConfig) != 0)
        {
            OnConfigInterrupt();
        }
        OnSharedVqInterrupt();
    }

    /// <summary>
    /// Config handler. An eventfd is written at once; an in-process handler runs on the thread pool,
    /// because the device may raise the config interrupt while holding its register lock and a config
    /// handler's first act is usually GetConfig (which needs that lock: running it inline could deadlock
    /// against a control op holding the adapter lock). Config changes are rare; the hop costs nothing.
    /// </summary>
    private void OnConfigInterrupt()
    {
        Interlocked.Increment(ref _configInterrupts);
        var cb = Volatile.Read(ref _configCallback);
        if (cb is null)
        {
            return;
        }
        if (cb.EventFd is not null)
        {
            Invoke(cb);
        }
        else
        {
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.Adapter.Invoke(s.Callback), (Adapter: this, Callback: cb), preferLocal: false);
        }
    }

    private void Invoke(VdpaCallback? cb)
    {
        if (cb is null)
        {
            return;
        }
        try
        {
            cb.Invoke();
        }
#pragma warning disable CA1031 // An interrupt handler runs on the device's thread: a consumer bug must not kill it.
        catch (Exception)
#pragma warning restore CA1031
        {
            Interlocked.Increment(ref _callbackErrors);
        }
    }
}
