using System.Globalization;

namespace IfcVdpa.Daemon;

/// <summary>
/// Who may connect to a vhost-user server socket, one set of rules for both forms (`vhost add ... owner U
/// group G mode OCTAL` in the daemon, `serve --owner U --group G --mode OCTAL`; the Cli references this
/// layer): libvirt runs QEMU as its own user (Debian: libvirt-qemu, group kvm), which a root-only 0600
/// socket refuses. World-writable modes are refused: give the front-end's user or group access instead.
/// </summary>
public sealed record SocketAccess(uint Mode, uint? Owner, uint? Group)
{
    public static SocketAccess Default { get; } = new(0x180, null, null);

    /// <summary>Parses the three optional values (names from /etc/passwd and /etc/group, or numeric ids).</summary>
    /// <exception cref="ArgumentException">a value is malformed, unknown or world-writable (the message says which)</exception>
    public static SocketAccess Parse(string? owner, string? group, string? mode)
    {
        uint m = 0x180;
        if (mode is not null)
        {
            if (mode.Length is 0 or > 4 || mode.Any(c => c is < '0' or > '7'))
            {
                throw new ArgumentException($"mode must be octal permission bits like 0660, not \"{mode}\"");
            }
            m = Convert.ToUInt32(mode, 8);
            if (m > 0x1FF)
            {
                throw new ArgumentException($"mode {mode}: only permission bits (at most 0777)");
            }
            if ((m & 0x2) != 0)
            {
                throw new ArgumentException($"mode {mode} is world-writable: any local user could drive the guest's NIC; give the front-end's group access instead (group G, mode 0660)");
            }
        }
        return new SocketAccess(m, owner is null ? null : Resolve(owner, "/etc/passwd", "owner"), group is null ? null : Resolve(group, "/etc/group", "group"));
    }

    /// <summary>A numeric id, or the id of a name in a passwd/group-format file (name:x:id:...).</summary>
    private static uint Resolve(string name, string file, string what)
    {
        if (uint.TryParse(name, NumberStyles.None, CultureInfo.InvariantCulture, out uint id))
        {
            return id;
        }
        if (name.Length is 0 or > 32 || name.Contains(':', StringComparison.Ordinal))
        {
            throw new ArgumentException($"{what} \"{name}\" is not a valid name");
        }
        foreach (string line in File.Exists(file) ? File.ReadLines(file) : [])
        {
            string[] f = line.Split(':');
            if (f.Length >= 3 && f[0] == name && uint.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out id))
            {
                return id;
            }
        }
        throw new ArgumentException($"{what} \"{name}\" not found in {file}");
    }

    public override string ToString() =>
        $"mode 0{Convert.ToString(Mode, 8)}{(Owner is { } o ? $" owner {o}" : "")}{(Group is { } g ? $" group {g}" : "")}";
}
