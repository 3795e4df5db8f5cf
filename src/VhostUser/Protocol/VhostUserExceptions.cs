namespace IfcVdpa.VhostUser;

/// <summary>A protocol violation after which the stream cannot be trusted: the connection is closed.</summary>
public sealed class VhostUserProtocolException(string message) : Exception(message);

/// <summary>
/// A request the back-end refuses (bad value, wrong state, unsupported): answered with a failed REPLY_ACK
/// when the front-end asked for one; the connection survives when it can.
/// </summary>
public sealed class VhostUserRequestException(string message) : Exception(message);

/// <summary>
/// A reply that breaks the rules (wrong code, flags or size, descriptors attached, late, cut off): the
/// stream it came on cannot be trusted any more. <see cref="VhostUserReplyReader"/> throws it.
/// </summary>
public sealed class VhostUserReplyException(string message) : Exception(message);
