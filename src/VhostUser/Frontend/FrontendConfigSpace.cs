using System.Buffers.Binary;
using IfcVdpa.Virtio;

namespace IfcVdpa.VhostUser.Frontend;

/// <summary>
/// The virtio-net config space the front-end shows its driver: mac (6), status (2), max_virtqueue_pairs
/// (2), mtu (2). Read from the back-end with GET_CONFIG when it serves config space; otherwise synthesized
/// from the options (as virtio-user does), where only the MAC is writable. The caller serialises calls.
/// </summary>
internal sealed class FrontendConfigSpace
{
    /// <summary>Config bytes exposed.</summary>
    public const int Size = 12;

    private readonly VhostUserClient _client;
    private readonly byte[] _synth = new byte[Size];
    private readonly ushort _defaultMtu;

    public FrontendConfigSpace(VhostUserClient client, VhostUserFrontendOptions options)
    {
        _client = client;
        _defaultMtu = options.Mtu;
        byte[] mac = options.Mac ?? [0x02, 0, 0, 0, 0, 0x01];
        if (mac.Length != 6)
        {
            throw new ArgumentException("Mac must be 6 bytes");
        }
        mac.CopyTo(_synth, VirtioNetConfig.Mac);
        BinaryPrimitives.WriteUInt16LittleEndian(_synth.AsSpan(VirtioNetConfig.Status), VirtioNetConfig.S_LINK_UP);
        BinaryPrimitives.WriteUInt16LittleEndian(_synth.AsSpan(VirtioNetConfig.MaxVirtqueuePairs), 1);
        BinaryPrimitives.WriteUInt16LittleEndian(_synth.AsSpan(VirtioNetConfig.Mtu), options.Mtu);
    }

    private string Name => _client.Name;

    /// <summary>Reads config space: GET_CONFIG from the back-end when it serves it, else the synthesized one.</summary>
    public void Read(uint offset, Span<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        if (buffer.IsEmpty)
        {
            return;
        }
        if (!_client.ConfigFromBackend)
        {
            _synth.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
            return;
        }
        if (!_client.TryGetConfig(offset, buffer))
        {
            throw new InvalidOperationException($"{Name}: the back-end could not read config [{offset}, +{buffer.Length}) (GET_CONFIG answered no data)");
        }
    }

    /// <summary>SET_CONFIG when the back-end serves config space; otherwise only the synthesized MAC is writable.</summary>
    public void Write(uint offset, ReadOnlySpan<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        if (buffer.IsEmpty)
        {
            return;
        }
        if (_client.ConfigFromBackend)
        {
            _client.SetConfig(offset, buffer);
            return;
        }
        for (int i = 0; i < buffer.Length; i++)
        {
            if (offset + i < 6)
            {
                _synth[offset + i] = buffer[i];
            }
        }
    }

    /// <summary>The MTU to tell the back-end (NET_SET_MTU): config space's, or the options' when that is 0.</summary>
    public ushort Mtu()
    {
        Span<byte> c = stackalloc byte[Size];
        Read(0, c);
        ushort mtu = BinaryPrimitives.ReadUInt16LittleEndian(c[VirtioNetConfig.Mtu..]);
        return mtu != 0 ? mtu : _defaultMtu;
    }

    private void CheckRange(uint offset, int length)
    {
        if (length < 0 || offset > Size || (uint)length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"{Name}: config [{offset}, +{length}) beyond the {Size}-byte config space");
        }
    }
}
