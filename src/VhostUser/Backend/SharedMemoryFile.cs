using IfcVdpa.Interop.Primitives;

namespace IfcVdpa.VhostUser;

/// <summary>
/// The checks a memory file from the front-end passes before the device maps it (the dirty log, the inflight
/// buffer): [offset, +size) does not wrap, the fd is a regular (memory) file that holds the whole range, and
/// it is sealed against shrinking, so it cannot be truncated under the device's writes (SIGBUS).
/// </summary>
internal static class SharedMemoryFile
{
    /// <summary>
    /// Returns the file's status; refusals are <see cref="VhostUserRequestException"/> naming the range as
    /// <paramref name="range"/> (e.g. "dirty log") and the file as <paramref name="file"/>.
    /// </summary>
    public static FileStatus Check(SafeFd fd, ulong offset, ulong size, string range, string file)
    {
        if (offset > long.MaxValue || offset + size < offset)
        {
            throw new VhostUserRequestException($"{range} [offset 0x{offset:x}, +0x{size:x}) wraps around");
        }
        FileStatus st;
        try
        {
            st = FileStatus.OfFd(fd.Fd);
        }
        catch (IOException e)
        {
            throw new VhostUserRequestException($"{file} fd: {e.Message}");
        }
        if (!st.IsRegular)
        {
            throw new VhostUserRequestException($"{file} fd is not a memory file (mode 0x{st.Mode:x})");
        }
        if (offset + size > st.Size)
        {
            throw new VhostUserRequestException($"{range} [offset 0x{offset:x}, +0x{size:x}) lies beyond its 0x{st.Size:x}-byte file");
        }
        if (!MappedMemory.IsSealedAgainstShrinking(fd.Fd))
        {
            throw new VhostUserRequestException($"{file} file is not sealed against shrinking (F_SEAL_SHRINK): it could be truncated under the device");
        }
        return st;
    }
}
