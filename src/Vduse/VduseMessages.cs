using System.Buffers.Binary;

namespace IfcVdpa.Vduse;

/// <summary>vduse_req_type: what the kernel asks through read(2) on /dev/vduse/NAME.</summary>
public enum VduseRequestType : uint
{
    GetVqState = 0,
    SetStatus = 1,
    UpdateIotlb = 2,
}

/// <summary>
/// One request from the kernel (struct vduse_dev_request, 152 bytes: type, request_id, reserved[4], then a
/// 128-byte union). Only the union member of <see cref="Type"/> is meaningful.
/// </summary>
public readonly record struct VduseRequest(uint Type, uint RequestId)
{
    /// <summary>GET_VQ_STATE: the queue index.</summary>
    public uint VqIndex { get; init; }

    /// <summary>SET_STATUS: the new status byte.</summary>
    public byte Status { get; init; }

    /// <summary>UPDATE_IOTLB: first IOVA of the range.</summary>
    public ulong IovaStart { get; init; }

    /// <summary>UPDATE_IOTLB: last IOVA of the range (inclusive).</summary>
    public ulong IovaLast { get; init; }

    public override string ToString() => (VduseRequestType)Type switch
    {
        VduseRequestType.GetVqState => $"GET_VQ_STATE #{RequestId} vq {VqIndex}",
        VduseRequestType.SetStatus => $"SET_STATUS #{RequestId} 0x{Status:x2}",
        VduseRequestType.UpdateIotlb => $"UPDATE_IOTLB #{RequestId} [0x{IovaStart:x}, 0x{IovaLast:x}]",
        _ => $"type {Type} #{RequestId}",
    };
}

/// <summary>The wire format of VDUSE control messages (include/uapi/linux/vduse.h): decode requests, encode responses.</summary>
public static class VduseMessages
{
    /// <summary>sizeof(struct vduse_dev_request) == sizeof(struct vduse_dev_response).</summary>
    public const int Size = 152;

    public const uint ResultOk = 0;
    public const uint ResultFailed = 1;

    private const int UnionOffset = 24;

    /// <summary>
    /// Decodes one request. A short read is refused (the kernel always writes the whole struct); the type is
    /// not judged here (an unknown type still has a request id the reply must carry).
    /// </summary>
    public static bool TryDecode(ReadOnlySpan<byte> message, out VduseRequest request, out string? error)
    {
        request = default;
        if (message.Length != Size)
        {
            error = $"request of {message.Length} bytes (struct vduse_dev_request has {Size})";
            return false;
        }
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(message);
        uint id = BinaryPrimitives.ReadUInt32LittleEndian(message[4..]);
        var u = message[UnionOffset..];
        request = new VduseRequest(type, id)
        {
            VqIndex = BinaryPrimitives.ReadUInt32LittleEndian(u),
            Status = u[0],
            IovaStart = BinaryPrimitives.ReadUInt64LittleEndian(u),
            IovaLast = BinaryPrimitives.ReadUInt64LittleEndian(u[8..]),
        };
        error = null;
        return true;
    }

    /// <summary>Encodes a request (the kernel's side; tests build messages with it).</summary>
    public static void EncodeRequest(Span<byte> dest, VduseRequestType type, uint requestId, ReadOnlySpan<byte> union)
    {
        dest[..Size].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(dest, (uint)type);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[4..], requestId);
        union.CopyTo(dest[UnionOffset..]);
    }

    /// <summary>A response with no payload (SET_STATUS, UPDATE_IOTLB, any failure). Reserved fields are zero, as the kernel requires.</summary>
    public static void EncodeResult(Span<byte> dest, uint requestId, bool ok)
    {
        dest[..Size].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(dest, requestId);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[4..], ok ? ResultOk : ResultFailed);
    }

    /// <summary>GET_VQ_STATE response for a split ring: vq_state { index, split.avail_index }.</summary>
    public static void EncodeSplitState(Span<byte> dest, uint requestId, uint index, ushort availIndex)
    {
        EncodeResult(dest, requestId, ok: true);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[UnionOffset..], index);
        BinaryPrimitives.WriteUInt16LittleEndian(dest[(UnionOffset + 4)..], availIndex);
    }

    /// <summary>GET_VQ_STATE response for a packed ring: vq_state { index, packed { avail counter, avail idx, used counter, used idx } }.</summary>
    public static void EncodePackedState(Span<byte> dest, uint requestId, uint index, bool availCounter, ushort availIdx, bool usedCounter, ushort usedIdx)
    {
        EncodeResult(dest, requestId, ok: true);
        var u = dest[UnionOffset..];
        BinaryPrimitives.WriteUInt32LittleEndian(u, index);
        BinaryPrimitives.WriteUInt16LittleEndian(u[4..], availCounter ? (ushort)1 : (ushort)0);
        BinaryPrimitives.WriteUInt16LittleEndian(u[6..], availIdx);
        BinaryPrimitives.WriteUInt16LittleEndian(u[8..], usedCounter ? (ushort)1 : (ushort)0);
        BinaryPrimitives.WriteUInt16LittleEndian(u[10..], usedIdx);
    }
}
