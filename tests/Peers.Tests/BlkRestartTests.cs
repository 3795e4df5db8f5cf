using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using IfcVdpa.Peers.Tests.Harness;
using Xunit.Abstractions;

namespace IfcVdpa.Peers.Tests;

/// <summary>
/// The back-end killed (SIGKILL) and restarted under guest I/O: QEMU 7.2's vhost-user-blk-pci with
/// <c>reconnect=1</c> on <c>ifcvf serve --class blk</c>, the guest writing known data with O_DIRECT dd on both
/// queues (scripts/guest/init, mode blk-restart). The test watches the inflight buffer QEMU keeps (the memfd
/// serve created for GET_INFLIGHT_FD, read through /proc/QEMU/fd): it freezes serve with SIGSTOP until the
/// buffer shows a request in flight, and kills it then, so every kill leaves a request the next back-end must
/// recover. A new serve starts on the same socket and image; QEMU reconnects and hands it the same buffer
/// (SET_INFLIGHT_FD without GET), and it resubmits what was in flight. Three or more kills; the guest's I/O completes
/// without an error, the disk is never re-probed, and every region the guest wrote holds exactly its data, read
/// back in the guest and on the host.
/// </summary>
public class BlkRestartTests(ITestOutputHelper output)
{
    private const long ImageBytes = 1L << 30;
    private const int PassBytes = 2 << 20;
    private const int Queues = 2;

    /// <summary>
    /// Kills, each with a request marked in flight at the kill; each restart must account for it. A SIGSTOP lands at
    /// a syscall's return: after the request's pwrite (the next back-end resubmits it) or after the interrupt that
    /// follows the used-index store (it is in the used ring: the next back-end clears it). At least
    /// <see cref="MinKills"/>, more (up to <see cref="MaxKills"/>) until one restart has resubmitted a request.
    /// </summary>
    private const int MinKills = 3;
    private const int MaxKills = 8;

    private const string Resubmitted = "were in flight when the back-end stopped";
    private const string AlreadyUsed = "the used ring holds them";

    [Fact]
    public void BackEndKilledDuringGuestIoLosesNoRequest()
    {
        string dir = PeerEnvironment.NewRunDir();
        string socket = Path.Combine(dir, "blk.sock");
        string image = Path.Combine(dir, "disk.img");
        using (var f = File.Create(image))
        {
            f.SetLength(ImageBytes);
        }
        var o = new GuestOptions { Ip = "none", Peer = "none", Mode = "blk-restart", Bytes = PassBytes, TimeoutSeconds = 300 };
        ServeBackend? serve = null;
        QemuGuest? guest = null;
        try
        {
            serve = StartServe(socket, image);
            guest = QemuGuest.OnVhostUserBlk(socket, o, Queues, reconnect: true);
            var src = guest.WaitFor(@"^GUEST-BLK-SRC sha256=(\w+) max=(\d+)", TimeSpan.FromSeconds(120));
            guest.WaitFor(@"^GUEST-BLK-PASS n=1 ", TimeSpan.FromSeconds(120));
            string memfd = InflightMemfd(guest.Process.Pid);
            output.WriteLine($"QEMU's inflight buffer: {memfd} -> {File.ResolveLinkTarget(memfd, false)?.FullName}");

            int resubmitted = 0;
            int kill = 0;
            while (kill < MaxKills && (kill < MinKills || resubmitted == 0))
            {
                kill++;
                // Kill at a moment the buffer says a request is in flight (the back-end took it, the used ring does not hold it yet).
                string? seen = KillWhenInflight(memfd, serve, guest, TimeSpan.FromSeconds(90));
                Assert.True(seen is not null, $"kill {kill}: no request was seen in flight within 90 s\n{guest.Describe()}\n{serve.Describe()}");
                string before = serve.Process.Transcript;
                serve.Dispose(); // the dead process's socket file goes, so the wait below is for the new one
                Assert.DoesNotContain("GUEST-RESULT", guest.Process.Transcript, StringComparison.Ordinal);
                serve = StartServe(socket, image);
                // QEMU reconnects on its own and starts the device again with the buffer it kept.
                serve.Process.WaitFor(@"device \S+ running: 2 rings", TimeSpan.FromSeconds(60));
                Assert.True(PeerEnvironment.Eventually(() => Moving(serve, 0) && Moving(serve, 1), TimeSpan.FromSeconds(60)),
                    $"kill {kill}: the restarted back-end serves no requests on both queues\n{guest.Describe()}\n{serve.Describe()}");
                string t = serve.Process.Transcript;
                Assert.Contains("inflight buffer set", t, StringComparison.Ordinal);
                Assert.DoesNotContain("inflight buffer created", t, StringComparison.Ordinal); // QEMU's own buffer, not a new one
                output.WriteLine($"kill {kill}: in flight at the kill: {seen}; the old process's last counters: {LastCounters(before)}");
                var lines = t.Split('\n').Where(l => l.Contains(Resubmitted, StringComparison.Ordinal) || l.Contains(AlreadyUsed, StringComparison.Ordinal))
                    .Select(l => l.Trim()).ToList();
                foreach (var l in lines)
                {
                    output.WriteLine($"  restarted back-end: {l}");
                }
                // Every kill left a mark in the buffer, so every restart accounts for it: resubmitted, or (a kill right
                // after the used index was published) found in the used ring already.
                Assert.True(lines.Count > 0, $"kill {kill}: the restarted back-end did not account for the request in flight ({seen})\n{serve.Describe()}");
                if (lines.Any(l => l.Contains(Resubmitted, StringComparison.Ordinal)))
                {
                    resubmitted++;
                }
                Assert.DoesNotMatch(new Regex("^GUEST-BLK-PASS .*ok=0", RegexOptions.Multiline), guest.Process.Transcript);
            }
            output.WriteLine($"{kill} kills, {resubmitted} with requests resubmitted from the inflight buffer");
            Assert.True(resubmitted >= 1, $"no restart resubmitted a request in flight in {kill} kills\n{serve.Describe()}");

            // The disk is the mailbox: STOP in its last sector ends the guest's passes.
            using (var f = new FileStream(image, FileMode.Open, FileAccess.Write))
            {
                f.Position = ImageBytes - 512;
                f.Write("STOP"u8);
                f.Flush(flushToDisk: true);
            }
            guest.WaitFor("^GUEST-DONE", TimeSpan.FromSeconds(240)); // after the result line: it is complete
            var r = guest.WaitFor(@"^GUEST-RESULT blk-restart passes=(\d+) dd=(\d) ioerrors=(\d+) read=([0-9a-f ]+)", TimeSpan.FromSeconds(1));
            int passes = int.Parse(r.Groups[1].Value, CultureInfo.InvariantCulture);
            output.WriteLine($"guest: {passes} passes of {PassBytes >> 20} MiB, dd ok {r.Groups[2].Value}, kernel I/O errors {r.Groups[3].Value}");
            Assert.Equal("1", r.Groups[2].Value);
            Assert.Equal("0", r.Groups[3].Value);
            Assert.Single(Regex.Matches(guest.Process.Transcript, "^GUEST-BLK size=", RegexOptions.Multiline)); // never re-probed
            Assert.True(passes > kill, $"{passes} passes for {kill} kills");
            string want = src.Groups[1].Value;
            string[] read = r.Groups[4].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(passes, read.Length);
            for (int i = 0; i < passes; i++)
            {
                Assert.True(want == read[i], $"region {i}: the guest read back {read[i]}, it wrote {want}");
                Assert.True(want == HostSha(image, (long)i * PassBytes, PassBytes), $"region {i} on the host differs from what the guest wrote");
            }
            // Nothing between the last region and the mailbox was written.
            using (var fs = File.OpenRead(image))
            {
                fs.Position = (long)passes * PassBytes;
                var chunk = new byte[1 << 20];
                for (long left = ImageBytes - 512 - fs.Position; left > 0; left -= chunk.Length)
                {
                    var c = chunk.AsSpan(0, (int)Math.Min(left, chunk.Length));
                    fs.ReadExactly(c);
                    Assert.True(c.IndexOfAnyExcept((byte)0) < 0, $"bytes written beyond the guest's regions (before offset {fs.Position})");
                }
            }
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new InvalidOperationException($"{e.Message}\n{guest?.Describe()}\n{serve?.Describe()}", e);
        }
        finally
        {
            guest?.Dispose();
            serve?.Dispose();
            Directory.Delete(dir, recursive: true);
        }
    }

    private static ServeBackend StartServe(string socket, string image) =>
        ServeBackend.Start(socket, "file:" + image, Queues, ["--class", "blk"]);

    private static bool Moving(ServeBackend serve, int q) => BlkGuestTests.LastPackets(serve.Process.Transcript, q) > 0;

    private static string LastCounters(string transcript) =>
        string.Join(", ", Enumerable.Range(0, Queues).Select(q => $"q{q} {BlkGuestTests.LastPackets(transcript, q)} requests"));

    /// <summary>QEMU's fd of the inflight buffer (the memfd serve created: /proc/PID/fd/N naming memfd:vhost-inflight).</summary>
    private static string InflightMemfd(int qemuPid)
    {
        foreach (string fd in Directory.GetFileSystemEntries($"/proc/{qemuPid}/fd"))
        {
            string? target = null;
            try
            {
                target = File.ResolveLinkTarget(fd, false)?.FullName;
            }
            catch (IOException)
            {
            }
            if (target is not null && target.Contains("memfd:vhost-inflight", StringComparison.Ordinal))
            {
                return fd;
            }
        }
        throw new InvalidOperationException($"QEMU (pid {qemuPid}) holds no memfd:vhost-inflight: inflight tracking was not negotiated");
    }

    /// <summary>
    /// Freezes the back-end (SIGSTOP, until every thread is stopped), reads the inflight buffer (vhost-user.rst
    /// split-ring layout: per queue a 16-byte header with desc_num at offset 10, then 16 bytes per descriptor
    /// whose first byte is the inflight flag) and, when a descriptor is in flight, SIGKILLs the frozen back-end:
    /// what the buffer says is exactly what the next back-end finds. Otherwise lets it go on (SIGCONT) and looks
    /// again. Returns what was in flight, or null on timeout.
    /// </summary>
    private static string? KillWhenInflight(string memfd, ServeBackend serve, QemuGuest guest, TimeSpan timeout)
    {
        using var h = File.OpenHandle(memfd, FileMode.Open, FileAccess.Read);
        long size = RandomAccess.GetLength(h);
        var buf = new byte[size];
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var p = serve.Process;
        int probes = 0;
        while (sw.Elapsed < timeout && !guest.Process.HasExited && !p.HasExited)
        {
            p.Post("STOP");
            probes++;
            var frozen = System.Diagnostics.Stopwatch.StartNew();
            while (!p.IsStopped())
            {
                if (frozen.Elapsed > TimeSpan.FromSeconds(10))
                {
                    throw new InvalidOperationException($"the back-end (pid {p.Pid}) did not stop on SIGSTOP within 10 s");
                }
                Thread.Yield();
            }
            RandomAccess.Read(h, buf, 0);
            int descNum = BinaryPrimitives.ReadUInt16LittleEndian(buf.AsSpan(10));
            int region = (16 + (16 * descNum) + 63) & ~63;
            var inflight = new List<string>();
            for (int q = 0; descNum > 0 && q < Queues && (q + 1) * region <= size; q++)
            {
                for (int d = 0; d < descNum; d++)
                {
                    if (buf[(q * region) + 16 + (16 * d)] == 1)
                    {
                        inflight.Add($"q{q} head {d}");
                    }
                }
            }
            if (inflight.Count > 0)
            {
                p.Kill();
                return $"{string.Join(", ", inflight)} (probe {probes}, {sw.ElapsedMilliseconds} ms)";
            }
            p.Post("CONT");
            Thread.Yield();
        }
        return null;
    }

    private static string HostSha(string image, long offset, int bytes)
    {
        using var fs = File.OpenRead(image);
        fs.Position = offset;
        var b = new byte[bytes];
        fs.ReadExactly(b);
        return Convert.ToHexStringLower(SHA256.HashData(b));
    }
}
