using IfcVdpa.Interop.Native;

namespace IfcVdpa.Interop.Primitives;

/// <summary>Process identity queries.</summary>
public static class ProcessIdentity
{
    public static uint EffectiveUid => Libc.geteuid();
}
