using System.Text.Json;
using IfcVdpa.Daemon;

namespace IfcVdpa.Cli;

/// <summary>What every command gets: output mode, writers, and the control socket path (--control).</summary>
public sealed record CliContext(bool Json, TextWriter Out, TextWriter Err, string? ControlPath)
{
    /// <summary>Serves requests in-process instead of over the control socket (the daemon's config file).</summary>
    public Func<string, Action<Utf8JsonWriter>?, JsonElement>? Requester { get; init; }

    /// <summary>The control socket: --control, else IFCVF_CONTROL, else the default.</summary>
    public string ResolveControlPath()
    {
        try
        {
            return ControlPaths.Resolve(ControlPath);
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
    }

    /// <summary>One request to the daemon; its refusal or absence becomes a one-line CLI error.</summary>
    public JsonElement Request(string command, Action<Utf8JsonWriter>? writeArgs = null)
    {
        try
        {
            return Requester is { } local ? local(command, writeArgs) : ControlClient.Request(ResolveControlPath(), command, writeArgs);
        }
        catch (ControlUnavailableException e)
        {
            throw new CliException(e.Message);
        }
        catch (ControlRefusedException e)
        {
            throw new CliException(e.Message);
        }
        catch (JsonException e)
        {
            throw new CliException($"the daemon sent a malformed reply: {e.Message}");
        }
    }

    /// <summary>-j output: the daemon's reply data as it is (already shaped like `vdpa -j`).</summary>
    public void PrintJson(JsonElement data)
    {
        if (data.ValueKind == JsonValueKind.Object && data.EnumerateObject().Any())
        {
            Out.WriteLine(data.GetRawText());
        }
    }
}
