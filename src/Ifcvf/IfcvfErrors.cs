using IfcVdpa.Vdpa;

namespace IfcVdpa.Ifcvf;

/// <summary>The function is not a usable IFC VF (bad or incomplete capability list, wrong identity).</summary>
public sealed class IfcvfProbeException(string message) : VdpaException(message);

/// <summary>The device did not behave as the driver needs (reset timeout, refused FEATURES_OK, vector refused...).</summary>
public sealed class IfcvfDeviceException : VdpaException
{
    public IfcvfDeviceException(string message)
        : base(message)
    {
    }

    public IfcvfDeviceException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
