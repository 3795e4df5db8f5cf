namespace IfcVdpa.Peers.Tests.Harness;

/// <summary>A network namespace the test creates (and deletes, with whatever was moved into it).</summary>
public sealed class NetNamespace : IDisposable
{
    public string Name { get; }

    public NetNamespace()
    {
        Name = PeerEnvironment.Unique("ifcvf-ns");
        PeerEnvironment.RunChecked("ip", "netns", "add", Name);
        PeerEnvironment.RunChecked("ip", "-n", Name, "link", "set", "lo", "up");
    }

    /// <summary>Moves a host interface (e.g. the back-end's TAP) into the namespace, addresses it and sets it up.</summary>
    public void Adopt(string ifname, string cidr)
    {
        PeerEnvironment.RunChecked("ip", "link", "set", ifname, "netns", Name);
        PeerEnvironment.RunChecked("ip", "-n", Name, "addr", "add", cidr, "dev", ifname);
        PeerEnvironment.RunChecked("ip", "-n", Name, "link", "set", ifname, "up");
    }

    /// <summary>Runs a command inside the namespace to completion.</summary>
    public (int Code, string Output) Exec(TimeSpan timeout, params string[] command) =>
        PeerEnvironment.Run("ip", ["netns", "exec", Name, .. command], timeout);

    /// <summary>Starts a long-running command inside the namespace.</summary>
    public PeerProcess Start(string name, TimeSpan lifetime, params string[] command) =>
        new(name, "ip", ["netns", "exec", Name, .. command], lifetime);

    /// <summary>Interface statistics in the namespace (for messages).</summary>
    public string Links() => Exec(TimeSpan.FromSeconds(10), "ip", "-s", "link").Output;

    public void Dispose()
    {
        // deleting the namespace destroys the TAP moved into it
        PeerEnvironment.Run("ip", ["netns", "del", Name]);
    }
}
