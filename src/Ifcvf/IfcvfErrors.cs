namespace IfcVdpa.Ifcvf;

/// <summary>The function is not a usable IFC VF (bad or incomplete capability list, wrong identity).</summary>
public sealed class IfcvfProbeException(string message) : Exception(message);

/// <summary>The device did not behave as the driver needs (reset timeout, refused FEATURES_OK, vector refused...).</summary>
public sealed class IfcvfDeviceException(string message) : Exception(message);
