namespace IfcVdpa.Vdpa;

/// <summary>
/// The error contract of the vDPA layer: a device refused an operation or could not carry it out (a queue
/// that will not enable, a reset that times out, a DMA range its IOMMU domain refuses, a queue size or
/// feature set it does not accept, a function that is not the device a driver expects). It is a condition
/// to report to whoever asked, not a bug: each consumer turns it into its own error reply (vhost-user: a
/// NACK with the reason, the control socket: an error reply, the CLI: one line). Any other exception from a
/// device (an out-of-range queue index a consumer should have checked, a use after removal) is a
/// programming error and surfaces as such.
/// </summary>
public class VdpaException : Exception
{
    public VdpaException()
    {
    }

    public VdpaException(string message)
        : base(message)
    {
    }

    public VdpaException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>
/// The device does not implement the operation at all (suspend on a device without a device-wide stop,
/// get_vq_state without a place to read it from); the message says why and what to do instead.
/// </summary>
public sealed class VdpaNotSupportedException : VdpaException
{
    public VdpaNotSupportedException()
    {
    }

    public VdpaNotSupportedException(string message)
        : base(message)
    {
    }

    public VdpaNotSupportedException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
