using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>`./ifcvf demo`, the README's end-to-end run: it must succeed and leave nothing behind.</summary>
public class DemoTests(ITestOutputHelper output)
{
    [Fact]
    public void DemoPingsBothWaysAndCleansUp()
    {
        PeerEnvironment.Require(PeerEnvironment.Ifcvf, PeerEnvironment.Qemu, PeerEnvironment.Kernel);
        var (code, text) = PeerEnvironment.Run(PeerEnvironment.Ifcvf, ["demo"], TimeSpan.FromMinutes(5));
        output.WriteLine(text);
        Assert.True(code == 0, text);
        Assert.Contains("demo: OK, pings went both ways", text, StringComparison.Ordinal);
        Assert.Matches(@"namespace -> guest ping: 3 packets transmitted, 3 received", text);
        Assert.Matches(@"GUEST-RESULT ping ok (\d+)/\1", text);
        var m = System.Text.RegularExpressions.Regex.Match(text, @"namespace (ifcvf-demo-\d+)");
        Assert.True(m.Success, text);
        Assert.DoesNotContain(m.Groups[1].Value, PeerEnvironment.Run("ip", ["netns", "list"]).Output, StringComparison.Ordinal);
    }
}
