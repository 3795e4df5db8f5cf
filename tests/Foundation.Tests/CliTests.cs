using IfcVdpa.Cli;

namespace IfcVdpa.Foundation.Tests;

/// <summary>The `ifcvf` command line in-process (the launcher runs the same entry point).</summary>
public class CliTests
{
    private static async Task<(int Code, string Out, string Err)> Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = await CommandLine.RunAsync(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public async Task HelpListsSimDump()
    {
        var (code, output, _) = await Run("--help");
        Assert.Equal(0, code);
        Assert.Contains("sim dump", output);
    }

    [Fact]
    public async Task SimDumpShowsIdentityCapabilitiesAndBars()
    {
        var (code, output, _) = await Run("sim", "dump");
        Assert.Equal(0, code);
        Assert.Contains("[1af4:1041]", output);
        Assert.Contains("[8086:001a]", output);
        Assert.Contains("MSI-X: Enable- Count=4", output);
        Assert.Contains("VirtIO: CommonCfg", output);
        Assert.Contains("VirtIO: Notify", output);
        Assert.Contains("MultiplierOff=4096", output);
        Assert.Contains("VirtIO: ISR", output);
        Assert.Contains("VirtIO: DeviceCfg", output);
        Assert.Contains("Region 4: Memory at", output);
    }

    [Fact]
    public async Task SimDumpTransitionalAndJson()
    {
        var (code, output, _) = await Run("-j", "sim", "dump", "transitional", "queues", "2");
        Assert.Equal(0, code);
        using var doc = System.Text.Json.JsonDocument.Parse(output);
        Assert.Equal("1000", doc.RootElement.GetProperty("device").GetString());
        Assert.Equal("0001", doc.RootElement.GetProperty("subsystem_device").GetString());
        Assert.Equal(5, doc.RootElement.GetProperty("num_queues").GetInt32());
    }

    [Theory]
    [InlineData("sim", "dump", "queues", "x")]
    [InlineData("sim", "dump", "queues", "99")]
    [InlineData("sim", "dump", "bogus")]
    [InlineData("frobnicate")]
    public async Task BadArgumentsGiveOneLineAndNonZeroExit(params string[] args)
    {
        var (code, _, err) = await Run(args);
        Assert.NotEqual(0, code);
        Assert.StartsWith("ifcvf: ", err);
        Assert.Single(err.TrimEnd().Split('\n'));
    }
}
