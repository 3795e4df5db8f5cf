using System.Text;
using System.Text.Json;

namespace IfcVdpa.Cli;

/// <summary>A tiny JSON writer (AOT-friendly, no reflection) for `-j` output.</summary>
public sealed class JsonText
{
    private readonly MemoryStream _ms = new();
    private readonly Utf8JsonWriter _w;

    public JsonText() => _w = new Utf8JsonWriter(_ms);

    public void Begin() => _w.WriteStartObject();
    public void End() => _w.WriteEndObject();
    public void BeginObject(string? name = null)
    {
        if (name is null) { _w.WriteStartObject(); } else { _w.WriteStartObject(name); }
    }
    public void EndObject() => _w.WriteEndObject();
    public void BeginArray(string name) => _w.WriteStartArray(name);
    public void EndArray() => _w.WriteEndArray();
    public void Str(string name, string value) => _w.WriteString(name, value);
    public void Num(string name, long value) => _w.WriteNumber(name, value);
    public void Bool(string name, bool value) => _w.WriteBoolean(name, value);
    public void StrValue(string value) => _w.WriteStringValue(value);

    public override string ToString()
    {
        _w.Flush();
        return Encoding.UTF8.GetString(_ms.ToArray());
    }
}
