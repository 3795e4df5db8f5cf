using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// What contrib/systemd ships: the unit passes `systemd-analyze verify` without a single warning (an
/// unknown or misspelt hardening key is a warning there, so it cannot slip in), and the example config
/// starts a real daemon with the state it describes.
/// </summary>
public class SystemdUnitTests(ITestOutputHelper output)
{
    private static string Contrib(string file) => Path.Combine(PeerEnvironment.RepoRoot, "contrib", "systemd", file);

    [Fact]
    public void UnitFileVerifiesCleanly()
    {
        const string analyze = "/usr/bin/systemd-analyze";
        PeerEnvironment.Require(analyze, PeerEnvironment.Ifcvf);
        string dir = PeerEnvironment.NewRunDir();
        try
        {
            // verify checks that ExecStart's binary exists: point it at the launcher instead of /usr/local/bin
            string unit = Path.Combine(dir, "ifcvf.service");
            File.WriteAllText(unit, File.ReadAllText(Contrib("ifcvf.service")).Replace("/usr/local/bin/ifcvf", PeerEnvironment.Ifcvf, StringComparison.Ordinal));
            var (code, text) = PeerEnvironment.Run(analyze, ["verify", unit], TimeSpan.FromSeconds(60));
            output.WriteLine(text);
            Assert.True(code == 0 && text.Trim().Length == 0, $"systemd-analyze verify ({code}):\n{text}");
            string body = File.ReadAllText(unit);
            Assert.Contains("Type=notify", body, StringComparison.Ordinal);
            Assert.Contains("RuntimeDirectory=ifcvf", body, StringComparison.Ordinal);
            Assert.Contains("--config /etc/ifcvf/ifcvf.conf", body, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void ExampleConfigStartsTheDaemon()
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf);
        string dir = PeerEnvironment.NewRunDir();
        string tap = PeerEnvironment.Unique("ifce");
        string config = Path.Combine(dir, "ifcvf.conf");
        File.WriteAllText(config, File.ReadAllText(Contrib("ifcvf.conf"))
            .Replace("/run/ifcvf/", dir + "/", StringComparison.Ordinal).Replace("ifcvf-host0", tap, StringComparison.Ordinal));
        string control = Path.Combine(dir, "ctl.sock");
        using var daemon = new PeerProcess("daemon", PeerEnvironment.Ifcvf, ["--control", control, "daemon", "--config", config], TimeSpan.FromMinutes(5));
        try
        {
            Assert.True(PeerEnvironment.Eventually(() => File.Exists(control) || daemon.HasExited, TimeSpan.FromSeconds(240)) && !daemon.HasExited,
                "daemon did not start from the example config\n" + daemon.Describe());
            var (code, show) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["--control", control, "dev", "show"], TimeSpan.FromSeconds(240));
            output.WriteLine(show);
            Assert.Equal(0, code);
            Assert.Contains($"consumer vhost socket {dir}/vm0.sock", show, StringComparison.Ordinal);
            Assert.Contains($"consumer virtio tap {tap}", show, StringComparison.Ordinal);
        }
        finally
        {
            if (!daemon.HasExited)
            {
                daemon.Signal("TERM", TimeSpan.FromSeconds(10));
            }
            Directory.Delete(dir, recursive: true);
        }
    }
}
