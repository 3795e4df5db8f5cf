using System.Buffers.Binary;
using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>One received vhost-user message: header fields, the exact payload and the descriptors it carried.</summary>
public sealed class VhostUserMessage : IDisposable
{
    public VhostUserMessage(VhostUserRequest request, uint flags, byte[] payload, List<SafeFd> fds)
    {
        Request = request;
        Flags = flags;
        Payload = payload;
        Fds = fds;
    }

    public VhostUserRequest Request { get; }

    public uint Flags { get; }

    public byte[] Payload { get; }

    /// <summary>Descriptors received with the message; owned here until taken with <see cref="TakeFd"/>.</summary>
    public List<SafeFd> Fds { get; }

    public bool NeedReply => (Flags & VhostUserWire.FlagNeedReply) != 0;

    public ulong U64 => BinaryPrimitives.ReadUInt64LittleEndian(Payload);

    public VringState State => VringState.Read(Payload);

    /// <summary>Transfers ownership of descriptor <paramref name="i"/> to the caller.</summary>
    public SafeFd TakeFd(int i)
    {
        var fd = Fds[i];
        Fds[i] = new SafeFd(-1, ownsHandle: false);
        return fd;
    }

    /// <summary>Closes every descriptor not taken.</summary>
    public void Dispose()
    {
        foreach (var fd in Fds)
        {
            fd.Dispose();
        }
        Fds.Clear();
    }

    public override string ToString() => $"{VhostUserCodec.Name(Request)} (flags 0x{Flags:x}, {Payload.Length} bytes, {Fds.Count} fds)";
}

