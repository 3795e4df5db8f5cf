using IfcVdpa.Virtio;

namespace IfcVdpa.IfcvfModel;

/// <summary>
/// The spec checker: every driver-side virtio 1.x violation the device sees is counted per rule (always) and
/// logged once per rule and device; with <see cref="SoftIfcVfOptions.Strict"/> it also sets NEEDS_RESET
/// (with the config interrupt), except for the IFC VF's own extensions (<see cref="SpecRuleInfo.Extension"/>).
/// Counting is lock-free, so the doorbell and the datapath report without the register lock.
/// </summary>
public sealed partial class SoftIfcVf
{
    private readonly long[] _violations = new long[SpecRules.Count];
    private readonly int[] _violationLogged = new int[SpecRules.Count];

    /// <summary>Whether violations set NEEDS_RESET (<c>sim add ... strict</c>, <c>serve --strict</c>).</summary>
    public bool Strict => _options.Strict;

    /// <summary>Times the driver broke <paramref name="rule"/> since the device was created (a reset keeps the count).</summary>
    public long ViolationCount(SpecRule rule) => Interlocked.Read(ref _violations[(int)rule]);

    /// <summary>All violations since the device was created.</summary>
    public long ViolationTotal
    {
        get
        {
            long n = 0;
            for (int i = 1; i < _violations.Length; i++)
            {
                n += Interlocked.Read(ref _violations[i]);
            }
            return n;
        }
    }

    /// <summary>The rules broken at least once, with their counts, in table order.</summary>
    public IReadOnlyList<(SpecRuleInfo Rule, long Count)> Violations
    {
        get
        {
            var list = new List<(SpecRuleInfo, long)>();
            foreach (var r in SpecRules.All)
            {
                long n = ViolationCount(r.Rule);
                if (n != 0)
                {
                    list.Add((r, n));
                }
            }
            return list;
        }
    }

    /// <summary>
    /// Counts a violation and logs the first of its kind. Returns whether the device must now need a reset
    /// (strict and not an IFC VF extension); the caller raises it (the register file under its lock, the
    /// datapath through its ring-error path). Lock-free.
    /// </summary>
    public bool ReportViolation(SpecRule rule, string detail)
    {
        if (rule == SpecRule.None)
        {
            return false;
        }
        Interlocked.Increment(ref _violations[(int)rule]);
        var info = SpecRules.Get(rule);
        bool reset = _options.Strict && !info.Extension;
        if (Interlocked.Exchange(ref _violationLogged[(int)rule], 1) == 0)
        {
            string outcome = info.Extension ? "IFC VF extension: executed, counted" : reset ? "device needs reset (strict)" : "tolerated, counted";
            _options.Log?.Invoke($"{Address}: virtio spec violation {info.Counter} (VIRTIO 1.2 §{info.Section}): {info.Text}: {detail}; {outcome} (reported once)");
        }
        return reset;
    }

    /// <summary>Reports a violation and, in strict mode, sets NEEDS_RESET (takes the register lock for that).</summary>
    private void Violation(SpecRule rule, string detail)
    {
        if (ReportViolation(rule, detail))
        {
            RaiseNeedsReset($"virtio spec violation {SpecRules.Get(rule).Counter}: {detail}", evenIfReset: true);
        }
    }
}
