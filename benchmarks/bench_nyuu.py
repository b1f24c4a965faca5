"""End-to-end posting speed: usenetfs beside Nyuu, the fastest open-source poster.

Posts the same random file (from /dev/shm) to the same private INN on loopback with the same
number of posting connections and the same article size (716,800-byte payloads, Nyuu's 700K):

  raw POST            bench_nntp.raw_run: pre-built yEnc articles, one blocking thread per
                      connection (INN's ceiling for a Python client; Nyuu can beat it)
  Nyuu                `nyuu -n N -a 700K --post-chunk-size 0` (see NYUU_ATTEMPTS), NZB to a
                      temp file
  Nyuu + post-check   the same with `--check-connections K`: Nyuu STATs every article after
                      posting (existence only; K extra connections besides the N)
  usenetfs            cp into the mount + `usenetfs umount`, which returns once every byte is
                      compressed (skipped for random data after a probe), encrypted, posted and
                      read back by BODY and compared byte for byte, on a volume capped at N
                      connections (POST and BODY share them)
  the bound           (what any filesystem here could reach) cp of the file into a FUSE
                      filesystem that does no work at all (memfs.py --sink) while the raw
                      client POSTs and reads back by BODY as many fresh articles on N
                      connections: the copy and the posting share the cores with INN, as a
                      filesystem's would (bench_nntp.copy_beside_post_and_body)

Every step starts with os.sync(), so none pays for the dirty pages of the step before.

Each Nyuu run is checked, so a misconfigured one cannot report a speed: exit status 0, the NZB
lists the expected number of distinct segments, INN filed that many new articles, and (checked
run) Nyuu's debug log confirms a post-check of each.

Figures are MB/s (10^6 bytes) of file data. "CPU s/GB" are core-seconds per GB posted,
sampled from /proc every 0.2 s: "tool" the poster's own processes (this process for raw POST;
node for Nyuu; for usenetfs the mount daemon, the cp in this process and `usenetfs umount`),
"INN" innd and its nnrpd. "innd" is innd's CPU as a share of one core (it files every article,
in one process). "busy" is the share of all cores busy during the step (/proc/stat: anyone's
work). The machine is shared, so each step also prints the other users' load ("others": share
of all cores busy in the idle second before it), the MB of written data the kernel had not yet
put on disk ("dirty": near vm.dirty_ratio it throttles every writer) and the load average;
compare figures of one run, and only steps whose "others" stayed low.

Needs Nyuu: `bash benchmarks/setup_nyuu.sh` (installs it into benchmarks/.nyuu).

    python benchmarks/bench_nyuu.py [--size-mb 1024] [--connections 4] [--rounds 1] [--touch-memory GIB]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_nntp import PAYLOAD, copy_beside_post_and_body, make_articles, raw_run  # noqa: E402
from common import (GROUP, CpuMeter, CpuSampler, Volume, background_load, children,  # noqa: E402
                    dirty_mb, load_average, random_source, touch_memory)
from usenetfs.innserver import InnServer  # noqa: E402
import memfs  # noqa: E402

NYUU = HERE / ".nyuu" / "node_modules" / "nyuu" / "bin" / "nyuu.js"
# Nyuu 0.4.0 sends each article in 192 KiB chunks by default, and then often dies on this
# machine with "Error: Timer already set" (NNTP._setTimer): when INN's 240 arrives before the
# socket's 'drain' event, Nyuu runs its drain handler by hand but leaves it registered, and the
# stale handler arms a timer in the middle of the next article's chunks. 10 of 12 attempts to
# post 1 GiB with 4 connections crashed so; with `--post-chunk-size 0` (one write per article;
# the chunks serve its rate limiting and per-chunk send timeouts) none of 44 did. That is the
# default here; --nyuu-chunked restores Nyuu's. A run that crashes anyway measures nothing and
# is run again.
NYUU_ATTEMPTS = 3
NZB_NS = "{http://www.newzbin.com/DTD/2003/nzb}"


def nyuu_command(args) -> list[str]:
    """How to run Nyuu, or a one-line exit telling how to install it."""
    script = Path(args.nyuu)
    node = shutil.which("node")
    if node is None or not script.is_file():
        sys.exit(f"Nyuu not found ({script}): run benchmarks/setup_nyuu.sh, or pass --nyuu PATH")
    probe = subprocess.run([node, script, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit(f"Nyuu does not run ({script}): {probe.stderr.strip().splitlines()[-1:]}; "
                 "run benchmarks/setup_nyuu.sh")
    return [node, str(script)]


def nzb_segments(path: Path) -> list[str]:
    """Message-IDs of every segment listed in a Nyuu NZB."""
    return [seg.text for seg in ET.parse(path).getroot().iter(f"{NZB_NS}segment")]


class Nyuu:
    """Runs Nyuu against one INN and checks that each run really posted."""

    def __init__(self, command: list[str], server: InnServer, tmp: Path, connections: int, chunked: bool):
        self.command, self.server, self.tmp = command, server, tmp
        self.connections, self.chunked = connections, chunked
        self.crashes = 0

    def post(self, source: Path, check_connections: int = 0) -> float:
        """Post `source`; seconds from start to exit, once the result is checked."""
        nzb = self.tmp / f"nyuu-{time.monotonic_ns()}.nzb"
        check = (["--check-connections", str(check_connections),
                  # The defaults wait 5 s before the first STAT and 30 s between tries, for a
                  # provider's propagation; a loopback INN files an article before answering 240.
                  "--check-delay", "0s", "--check-retry-delay", "1s", "--check-tries", "2"]
                 if check_connections else [])
        server = self.server
        command = [*self.command, "--host", server.host, "--port", str(server.port),
                   "--connections", str(self.connections), "--article-size", "700K", "--groups", GROUP,
                   "--out", str(nzb), "--overwrite", "--progress", "none",
                   # Debug logging names each article the post-check found (a line per article).
                   "--log-level", "4" if check_connections else "2", *check,
                   *([] if self.chunked else ["--post-chunk-size", "0"]), str(source)]
        for attempt in range(1, NYUU_ATTEMPTS + 1):
            before = server.article_count()
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            elapsed = time.perf_counter() - started
            if result.returncode == 0:
                break
            lines = (result.stderr or result.stdout).strip().splitlines()
            error = next((line for line in lines if line.startswith("Error")), lines[-1] if lines else "")
            if attempt == NYUU_ATTEMPTS:
                sys.exit(f"Nyuu failed {attempt} times; the last exit {result.returncode}: {error}")
            self.crashes += 1
            print(f"  (Nyuu failed, exit {result.returncode}: {error}; running it again)", flush=True)
        expected = -(-source.stat().st_size // PAYLOAD)
        segments = nzb_segments(nzb)
        posted = server.article_count() - before
        if len(segments) != expected or len(set(segments)) != expected or posted != expected:
            sys.exit(f"Nyuu did not post what it should have: {expected} articles expected, its NZB "
                     f"lists {len(segments)} ({len(set(segments))} distinct), INN filed {posted}")
        checked = result.stderr.count("Post check successful")
        if check_connections and checked != expected:
            sys.exit(f"Nyuu's post-check confirmed {checked} of {expected} articles")
        nzb.unlink()
        return elapsed


class Measurement:
    """One timed step, with the CPU it cost and what else the machine was doing."""

    def __init__(self, fn, tool_pids, inn_pids, innd_pids, daemon_pids=set):
        self.others = background_load()  # the other users' load, in the second before
        self.dirty = dirty_mb()
        meter = CpuMeter().start()
        sampler = CpuSampler({"tool": tool_pids, "INN": inn_pids, "innd": innd_pids,
                              "daemon": daemon_pids}).start()
        self.marks: list[dict[str, float]] = []  # CPU used up to each mark() the step makes
        result = fn(lambda: self.marks.append(sampler.used()))
        self.cpu = sampler.stop()
        self.busy = meter.stop()  # share of all cores busy: everyone's work, ours included
        # usenetfs's step returns (cp seconds, umount seconds); the others, seconds.
        self.parts = result if isinstance(result, tuple) else (result,)
        self.seconds = sum(self.parts)

    def usenetfs_split_per_gb(self, nbytes: int) -> tuple[float, float, float]:
        """usenetfs's core-seconds per GB: the tool's before the step's one mark() (the cp)
        and after it (the umount), and the mount daemon's share of the whole."""
        gb = nbytes / 1e9
        before = self.marks[0]["tool"]
        return before / gb, (self.cpu["tool"] - before) / gb, self.cpu["daemon"] / gb

    def per_gb(self, nbytes: int) -> tuple[float, float]:
        """Core-seconds per GB of the tool and of INN."""
        return self.cpu["tool"] / (nbytes / 1e9), self.cpu["INN"] / (nbytes / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="MiB to post (default 1024)")
    parser.add_argument("--connections", type=int, default=4, help="posting connections (default 4)")
    parser.add_argument("--check-connections", type=int, default=1,
                        help="Nyuu's extra post-check connections in the checked run (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything (default 1)")
    parser.add_argument("--nyuu-chunked", action="store_true",
                        help="leave Nyuu's default 192K post chunks (crash-prone, see NYUU_ATTEMPTS)")
    parser.add_argument("--nyuu", default=str(NYUU), help=f"nyuu.js (default {NYUU})")
    parser.add_argument("--touch-memory", type=int, default=0, metavar="GIB",
                        help="touch this much memory first (common.touch_memory: comparable runs on a VM)")
    args = parser.parse_args()
    if args.size_mb < 1 or args.connections < 1 or args.rounds < 1 or args.check_connections < 1:
        parser.error("--size-mb, --connections, --rounds and --check-connections must be at least 1")
    if args.touch_memory:
        print(f"touched {args.touch_memory} GiB of memory first: {touch_memory(args.touch_memory):.1f} s")
    nyuu_cmd = nyuu_command(args)
    size = args.size_mb << 20
    count = -(-size // PAYLOAD)

    tmp = Path(tempfile.mkdtemp(prefix="bench-nyuu-"))
    os.chmod(tmp, 0o755)  # INN runs as news
    names = ("raw POST (bench_nntp client)", "Nyuu, no check",
             f"Nyuu + post-check (+{args.check_connections} conn)", "usenetfs cp + umount, verified",
             "the bound: no-op FUSE cp + POST+BODY")
    rates: dict[str, list[float]] = {name: [] for name in names}
    volume = nyuu = None
    print(f"{args.size_mb} MiB of random data, {count} articles of {PAYLOAD} bytes, "
          f"{args.connections} posting connections, {os.cpu_count()} cores")
    print(f"\n{'':34}{'':13}{'CPU s/GB':^12}")
    print(f"{'':34}{'MB/s':>7}{'s':>6}{'tool':>6}{'INN':>6}{'innd':>6}{'busy':>6}{'others':>7}{'dirty':>7}"
          "  load average")
    try:
        with InnServer(tmp / "inn") as server, random_source(size, "bench-nyuu") as source, \
                memfs.mounted(tmp / "sink", sink=True) as sink:
            volume = Volume(tmp, server.url, args.connections)
            nyuu = Nyuu(nyuu_cmd, server, tmp, args.connections, args.nyuu_chunked)
            for round_no in range(args.rounds):
                articles = make_articles(count)
                fresh = make_articles(count)  # for the bound: built here, outside its timing
                payload = count * PAYLOAD
                steps = {
                    names[0]: (payload, lambda mark: raw_run(server.host, server.port, args.connections,
                                                             lambda c, a: c.post(a[1]), articles)),
                    names[1]: (size, lambda mark: nyuu.post(source)),
                    names[2]: (size, lambda mark: nyuu.post(source, args.check_connections)),
                    names[3]: (size, lambda mark: volume.copy_and_umount(source, f"big{round_no}", mark)),
                    names[4]: (size, lambda mark: copy_beside_post_and_body(
                        source, sink, server.host, server.port, args.connections, fresh)),
                }
                me = os.getpid()
                server_pids = lambda: server.pids  # noqa: E731
                # innd files every article itself, in one process: is it the bottleneck?
                innd_pid = lambda: {server.innd_pid}  # noqa: E731
                tool_pids = {  # raw POST and cp run in this process; `usenetfs umount` and Nyuu in a child
                    names[0]: lambda: {me},
                    names[1]: lambda: children(me),
                    names[2]: lambda: children(me),
                    names[3]: lambda: {me} | children(me) | volume.daemon_pids(),
                    names[4]: lambda: {me} | children(me),  # the sink's daemon is a child
                }
                # Rotate the order each round, so no tool always runs on the emptiest spool.
                for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                    nbytes, fn = steps[name]
                    os.sync()
                    if name == names[3]:
                        volume.mount()  # not timed
                    m = Measurement(fn, tool_pids[name], server_pids, innd_pid,
                                    volume.daemon_pids if name == names[3] else set)
                    rates[name].append(nbytes / m.seconds / 1e6)
                    split = ""
                    if len(m.parts) == 2:
                        split = ("  (cp {:.1f} s + umount {:.1f} s; tool CPU s/GB {:.1f} + {:.1f}, "
                                 "daemon {:.1f})".format(*m.parts, *m.usenetfs_split_per_gb(nbytes)))
                    tool, inn = m.per_gb(nbytes)
                    print(f"{name:34}{rates[name][-1]:7.1f}{m.seconds:6.1f}{tool:6.1f}{inn:6.1f}"
                          f"{m.cpu['innd'] / m.seconds:6.0%}{m.busy:6.0%}{m.others:7.0%}{m.dirty:7.0f}"
                          f"  {load_average()}{split}", flush=True)
                articles = fresh = steps = None  # free the pre-built articles before the next round's
                print()
    finally:
        if volume is not None:
            volume.force_unmount()
        shutil.rmtree(tmp, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"MB/s, {'median of ' + str(args.rounds) + ' rounds' if args.rounds > 1 else 'one round'}:")
    for name in names:
        print(f"  {name:42}{median[name]:8.1f}   x{median[name] / median[names[0]]:.2f} of raw POST")
    if nyuu is not None and nyuu.crashes:
        print(f"  Nyuu crashed {nyuu.crashes} time(s) and was run again")
    ours = median[names[3]]
    print(f"  usenetfs / Nyuu (no check)      {ours / median[names[1]]:.2f}")
    print(f"  usenetfs / Nyuu (post-check)    {ours / median[names[2]]:.2f}")
    print(f"  the bound / Nyuu (no check)     {median[names[4]] / median[names[1]]:.2f}")
    print(f"  usenetfs / the bound            {ours / median[names[4]]:.2f}")


if __name__ == "__main__":
    main()
