"""How every cost of a mounted volume grows with its size: 1/100, 1/10 and the full 20 TB
target (300K folders, 3M files, 30M segments), side by side (issue 6, not CI).

For each size: a real volume (`usenetfs init --local`) whose index is replaced, before its
first mount, by a synthetic one of that shape (`bench_index.generate`, same volume id),
then, through the CLI and the mount:

  index size on disk (bytes per segment, per file), `usenetfs mount` wall time, VmRSS of the
  mount daemon after mount and after the walk, os.stat of random existing files (fresh
  mount: cold dentries; p50/p99, and each stat's time divided by the FUSE lookups it needed:
  one cold lookup), the same with the file's folder looked up just before
  (one FUSE lookup each), listing the 10K-entry folder (scandir + stat), `find` over
  the whole tree (entries/s; time-boxed by --find-budget), creating and writing 1,000 new
  small files, `usenetfs flush` (their upload), and the unmount: the index backup that
  `usenetfs umount` asks for (requested first on its own, and timed), then `usenetfs
  umount` itself (which finds nothing left to back up), with its kernel time (umount(2)
  evicting every inode the kernel cached: 3.3M after the find at full size), and the CPU
  the mount daemon spends from there until it exits (what usenetfs itself spends). Last,
  a session that only reads (mount, stat 100 files, `usenetfs umount`).

Before all that, each round gives the installed index the past a volume in use has: one
mount whose backup reads the whole index (timed apart as "first backup"), so that the
measured session's backup, like a user's, hashes only the chunks written since.

Then the growth: each figure at full size divided by the same at 1/100, against the goals.
Beside the wall-clock figures, which other work on a shared machine makes noisy, the CPU
the mount daemon spent per operation (from /proc/PID/stat) and the kernel time of `find`
per entry: what the volume's size can change, measured apart from the waiting.

Generated indexes are cached under --dir (default /var/tmp/usenetfs-scale) with the home
holding the volumes and the local INN server, and reused across runs: each round copies
the pristine index into the volume before mounting it.

    python benchmarks/bench_scale.py [--sizes 100,10,1] [--rounds 2] [--find-budget 240]
                                     [--fsck-full] [--dir DIR] [--json FILE]

The first backup of each volume posts its whole index (1.4 GB at full size); later rounds
post only the chunks that changed, as a volume in use does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_index import GENERATOR_VERSION, dbstat, generate  # noqa: E402
from usenetfs.data.staging import MOUNT_SPARES, SPARE_PREFIX  # noqa: E402
from usenetfs.home import Home  # noqa: E402
from usenetfs.index import Index  # noqa: E402
from usenetfs.mountd import control_request  # noqa: E402
from usenetfs.volume import Volume  # noqa: E402

PASSPHRASE = "scale benchmark passphrase"
STAT_SAMPLE = 2000
NEW_FILES = 1000


class Bench:
    def __init__(self, base: Path):
        self.base = base
        self.home_dir = base / "home"
        self.home = Home.resolve(self.home_dir)
        self.passfile = base / "passphrase"
        self.mnt = base / "mnt"

    def cli(self, *args: str, timeout: float = 3600, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "USENETFS_HOME": str(self.home_dir)}
        return subprocess.run([sys.executable, "-m", "usenetfs.cli.main", *args], env=env, check=check,
                              timeout=timeout, capture_output=True, text=True)

    def timed_cli(self, *args: str) -> float:
        started = time.perf_counter()
        result = self.cli(*args, check=False)
        elapsed = time.perf_counter() - started
        if result.returncode:
            raise RuntimeError(f"usenetfs {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
        return elapsed

    def setup(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        if not self.passfile.exists():
            self.passfile.write_text(PASSPHRASE)
        self.cli("server", "start")  # as a machine would have it: not part of any mount

    def volume(self, denominator: int) -> Volume:
        name = f"s{denominator}"
        volume = Volume(self.home, name)
        if not volume.exists():
            self.cli("init", name, "--local", "--group", "alt.binaries.test",
                     "--passphrase-file", str(self.passfile))
        return volume

    def pristine(self, denominator: int, volume: Volume) -> tuple[Path, dict]:
        """The cached generated index of this size (made once), and its shape."""
        vid = volume.load().volume_id
        path = self.base / f"index-g{GENERATOR_VERSION}-{vid[:12]}-s{denominator}.sqlite"
        shape_file = path.with_suffix(".json")
        if not (path.exists() and shape_file.exists()):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            print(f"generating 1/{denominator} ...", flush=True)
            started = time.perf_counter()
            shape = generate(path, 1 / denominator, scope_id=bytes.fromhex(vid))
            shape["generate_s"] = time.perf_counter() - started
            with Index.open(path) as ix:
                shape["tables"] = dbstat(ix)
            shape_file.write_text(json.dumps(shape))
            print(f"  generated in {shape['generate_s']:.0f} s", flush=True)
        return path, json.loads(shape_file.read_text())

    def install(self, pristine: Path, volume: Volume) -> None:
        """The pristine index in place of the volume's, with segment ids that no earlier
        round used: a segment id names articles on the server (their Message-IDs derive
        from it), so a round reusing one would find another round's article there."""
        for suffix in ("-wal", "-shm"):
            Path(f"{volume.index_file}{suffix}").unlink(missing_ok=True)
        tmp = volume.index_file.with_suffix(".copy")
        shutil.copyfile(pristine, tmp)
        used = self.base / f"segment-ids-{volume.name}"
        db = sqlite3.connect(tmp)
        start = max(db.execute("SELECT next_segment FROM counters").fetchone()[0],
                    int(used.read_text()) if used.exists() else 0)
        used.write_text(str(start + 1_000_000))  # a round allocates far fewer
        db.execute("UPDATE counters SET next_segment = ?", (start,))
        db.commit()
        db.close()
        os.replace(tmp, volume.index_file)


def wait_for_spares(volume, timeout: float = 120.0) -> None:
    """Until the mount's reservoir of spare staging files is full, as a volume in use has
    it: the trickle that fills it must not run during the figures."""
    staging = volume.data_dir / "staging"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for name in os.listdir(staging) if name.startswith(SPARE_PREFIX)) >= MOUNT_SPARES:
            return
        time.sleep(0.2)
    print(f"  (the spare pool did not fill within {timeout:.0f} s)", flush=True)


def rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024 / 1e6
    return fields["VmRSS"], fields["VmHWM"]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (10 ms ticks; exited threads
    included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ThreadsCPU:
    """The CPU a process's threads use from now until `seconds()`, in nanoseconds from
    /proc/PID/task/*/schedstat: at 10 ms ticks, 10,000 entries listed in 30 or 40 ms of
    CPU read as 3 or 4 µs an entry. A thread that exits meanwhile counts for nothing
    (trio's idle worker threads exit after 10 s; none does within one figure)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.start = self._sample()

    def _sample(self) -> dict[str, int]:
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as stat:
                    out[tid] = int(stat.read().split()[0])
            except (OSError, IndexError, ValueError):
                pass
        return out

    def seconds(self) -> float:
        now = self._sample()
        return sum(ns - self.start.get(tid, 0) for tid, ns in now.items()) / 1e9


class DaemonCPU:
    """The CPU a process uses from now until it exits, sampled from another thread (a
    process gone from /proc has nothing left to read: the last sample is within 20 ms)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.start = self.last = cpu_s(pid)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.last = cpu_s(self.pid)
            except (OSError, IndexError):
                return

    def until_exit(self, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        self.done.set()
        self.thread.join()
        return self.last - self.start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def find_walk(root: Path, budget: float) -> tuple[int, float, bool]:
    """`find ROOT` (one byte of output per entry): (entries, seconds, finished)."""
    started = time.perf_counter()
    proc = subprocess.Popen(["find", str(root), "-printf", "."], stdout=subprocess.PIPE)
    count = 0
    finished = True
    while True:
        chunk = proc.stdout.read1(1 << 16)
        if not chunk:
            break
        count += len(chunk)
        if time.perf_counter() - started > budget:
            finished = False
            proc.kill()
            break
    elapsed = time.perf_counter() - started
    proc.wait()
    return count, elapsed, finished


def backup_seconds(log_file: Path, after: int) -> tuple[float | None, str]:
    """The duration and summary of the last index backup the daemon logged past byte `after`."""
    with open(log_file, "rb") as log:
        log.seek(after)
        text = log.read().decode(errors="replace")
    found = re.findall(r"index backup (\d+): (.*?), ([\d.]+) s", text)
    if not found:
        return None, "no backup logged"
    seq, summary, seconds = found[-1]
    return float(seconds), f"backup {seq}: {summary}"


def run_size(bench: Bench, denominator: int, round_no: int, args) -> dict:
    volume = bench.volume(denominator)
    pristine, shape = bench.pristine(denominator, volume)
    out: dict = {"size": f"1/{denominator}" if denominator > 1 else "full", "round": round_no,
                 "load_before": os.getloadavg()[0]}
    index_bytes = pristine.stat().st_size
    out["index_mb"] = index_bytes / 1e6
    out["bytes_per_segment"] = index_bytes / shape["segments"]
    out["bytes_per_file"] = index_bytes / shape["files"]
    if denominator == 100 or (denominator == 1 and args.fsck_full and round_no == 1):
        with Index.open(pristine) as ix:
            started = time.perf_counter()
            problems = ix.fsck()
            out["fsck_s"] = time.perf_counter() - started
        out["fsck_problems"] = len(problems)
        if problems:
            print(f"  fsck: {len(problems)} problems, e.g. {problems[:3]}", flush=True)
    bench.install(pristine, volume)
    mnt = bench.mnt
    # The session before: a volume in use was backed up when it was last unmounted, and
    # that backup's chunks and the pages written since carry over (backup/current.py).
    # The installed index has no such past: one mount whose backup hashes all of it
    # (timed apart: a volume's first backup, or the first after a crash) gives it one.
    bench.cli("mount", volume.name, str(mnt), "--passphrase-file", str(bench.passfile))
    try:
        started = time.perf_counter()
        trio.run(control_request, volume, "backup")
        out["first_backup_s"] = time.perf_counter() - started
        wait_for_spares(volume)
    finally:
        bench.cli("umount", str(mnt))
    log_mark = volume.log_file.stat().st_size if volume.log_file.exists() else 0

    out["mount_s"] = bench.timed_cli("mount", volume.name, str(mnt), "--passphrase-file", str(bench.passfile))
    pid = volume.mount_info()["pid"]
    try:
        out["rss_mount_mb"] = rss_mb(pid)[0]
        # the big folder: scandir + stat of every entry (cold: nothing of it looked up yet)
        big = mnt / shape["big_folder"].lstrip("/")
        cpu = ThreadsCPU(pid)
        started = time.perf_counter()
        entries = 0
        with os.scandir(big) as listing:
            for entry in listing:
                entry.stat(follow_symlinks=False)
                entries += 1
        out["list_10k_s"] = time.perf_counter() - started
        out["list_cpu_us"] = cpu.seconds() / entries * 1e6
        assert entries == shape["big_folder_files"], entries
        # stat of random existing files elsewhere (cold dentries: fresh mount, fresh paths)
        candidates = [p for p in shape["sample_files"] if not p.startswith(shape["big_folder"] + "/")]
        sample = candidates[(round_no - 1) * STAT_SAMPLE:round_no * STAT_SAMPLE]
        latencies = []
        # FUSE lookups each stat needs: the path components this mount has not looked up
        # yet (the kernel keeps the dentries of those it has). At full size almost every
        # sampled file sits in a folder of its own; at 1/100 the samples share folders, so
        # a stat there needs fewer lookups: the figures below compare different work.
        # So each stat's time is also divided by the lookups it needed: the latency of one
        # cold lookup, the per-operation figure, the same work at every size.
        looked_up = {shape["big_folder"]}
        lookups = 0
        needed = []  # per stat: the FUSE lookups it needed
        cpu = ThreadsCPU(pid)
        for rel in sample:
            parts = rel.strip("/").split("/")
            fresh = ["/" + "/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
            fresh = [prefix for prefix in fresh if prefix not in looked_up]
            path = str(mnt) + rel
            t = time.perf_counter_ns()
            os.stat(path)
            latencies.append((time.perf_counter_ns() - t) / 1000)
            looked_up.update(fresh)
            lookups += len(fresh)
            needed.append(len(fresh))
        out["stat_lookups"] = lookups / len(sample)
        out["stat_cpu_us"] = cpu.seconds() / len(sample) * 1e6
        out["stat_cpu_per_lookup_us"] = out["stat_cpu_us"] / out["stat_lookups"]
        out["stat_p50_us"] = percentile(latencies, 0.5)
        out["stat_p99_us"] = percentile(latencies, 0.99)
        slowest = sorted(range(len(sample)), key=latencies.__getitem__)[-max(1, len(sample) // 100):]
        out["stat_p99_lookups"] = sum(needed[i] for i in slowest) / len(slowest)
        per_lookup = [latency / n for latency, n in zip(latencies, needed) if n]
        out["cold_lookup_p50_us"] = percentile(per_lookup, 0.5)
        out["cold_lookup_p99_us"] = percentile(per_lookup, 0.99)
        # one FUSE lookup each: stat of a random file whose folder was looked up just before
        latencies = []
        for rel in candidates[-round_no * STAT_SAMPLE:][:STAT_SAMPLE]:
            path = str(mnt) + rel
            os.stat(os.path.dirname(path))
            t = time.perf_counter_ns()
            os.stat(path)
            latencies.append((time.perf_counter_ns() - t) / 1000)
        out["lookup_p50_us"] = percentile(latencies, 0.5)
        out["lookup_p99_us"] = percentile(latencies, 0.99)
        # find over the whole tree
        cpu = ThreadsCPU(pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        count, seconds, finished = find_walk(mnt, args.find_budget)
        out["find_cpu_us"] = cpu.seconds() / count * 1e6
        out["find_kernel_us"] = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - children.ru_stime) / count * 1e6
        out["find_entries"] = count
        out["find_s"] = seconds
        out["find_rate"] = count / seconds
        out["find_complete"] = finished
        if finished:
            assert count == shape["entries"] + 1, (count, shape["entries"])
        out["rss_walk_mb"], out["hwm_walk_mb"] = rss_mb(pid)
        # 1,000 new small files in a new folder
        new_dir = mnt / f"new files {round_no}"
        payload = os.urandom(4096)
        cpu = ThreadsCPU(pid)
        started = time.perf_counter()
        new_dir.mkdir()
        for i in range(NEW_FILES):
            with open(new_dir / f"new-{i:05d}.dat", "wb") as f:
                f.write(payload)
        out["create_rate"] = NEW_FILES / (time.perf_counter() - started)
        out["create_cpu_us"] = cpu.seconds() / NEW_FILES * 1e6
        out["rss_end_mb"] = rss_mb(pid)[0]
        out["flush_s"] = bench.timed_cli("flush", str(mnt))
        # What `usenetfs umount` asks for first (after the flush): the index backup. Asked
        # here, it is timed alone; umount's own request then finds nothing changed.
        started = time.perf_counter()
        out["backup_seq"] = trio.run(control_request, volume, "backup")["backup"]
        out["backup_s"] = time.perf_counter() - started
    finally:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        daemon_cpu = DaemonCPU(pid)
        started = time.perf_counter()
        result = bench.cli("umount", str(mnt), check=False)
        out["umount_rest_s"] = time.perf_counter() - started
        out["umount_daemon_cpu_s"] = daemon_cpu.until_exit()
        # kernel time of the CLI and fusermount3: mostly umount(2) evicting what the kernel cached
        out["umount_kernel_s"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - children.ru_stime
        if result.returncode:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
            raise RuntimeError(f"umount failed: {result.stderr.strip()}")
    out["umount_s"] = out.get("backup_s", 0) + out["umount_rest_s"]
    out["backup_log_s"], out["backup"] = backup_seconds(volume.log_file, log_mark)
    # A session that only reads: mount again, stat a few files, unmount (the index has not
    # changed since the backup above, so there is nothing to back up).
    log_mark = volume.log_file.stat().st_size
    bench.timed_cli("mount", volume.name, str(mnt), "--passphrase-file", str(bench.passfile))
    try:
        for rel in shape["sample_files"][:100]:
            os.stat(str(mnt) + rel)
    finally:
        out["umount_readonly_s"] = bench.timed_cli("umount", str(mnt))
    out["readonly_backed_up"] = backup_seconds(volume.log_file, log_mark)[0] is not None
    if out.get("find_complete"):
        out.update(kernel_ceiling(bench.mnt, shape))
        out["umount_over_ceiling"] = out["umount_rest_s"] / out["ceiling_umount_s"]
        out["umount_excess_s"] = out["umount_rest_s"] - out["ceiling_umount_s"]
    out["load_after"] = os.getloadavg()[0]
    return out


def kernel_ceiling(mnt: Path, shape: dict) -> dict:
    """The kernel's own share of an unmount after a `find`: a no-op filesystem of the same
    number of folders and files (treefs.py) walked by `find`, then unmounted. umount(2)
    evicts every inode and dentry the walk left cached, whoever serves them."""
    ready = mnt.parent / "treefs.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("treefs.py")), str(mnt),
                             str(shape["dirs"]), str(shape["files"]), str(ready)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("treefs did not start")
            time.sleep(0.05)
        count, _, _ = find_walk(mnt, 3600)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        out = {"ceiling_umount_s": time.perf_counter() - started,
               "ceiling_umount_kernel_s": resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - children.ru_stime,
               "ceiling_entries": count}
        proc.wait(timeout=60)
        return out
    finally:
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
            proc.kill()
            proc.wait()
        ready.unlink(missing_ok=True)


# name, label, unit, "lower"/"higher" is better, growth goal (None: no ratio goal), absolute goal at full
METRICS = [
    ("index_mb", "index on disk", "MB", "lower", None, ("<", 1500)),
    ("bytes_per_segment", "  bytes per segment", "B", "lower", None, None),
    ("bytes_per_file", "  bytes per file", "B", "lower", None, None),
    ("mount_s", "usenetfs mount (wall)", "s", "lower", None, ("<", 3.0)),
    ("rss_mount_mb", "daemon VmRSS after mount", "MB", "lower", None, ("<", 500)),
    # A stat of a random cold path needs more lookups at full size (its folders are cold
    # too): the per-operation goal is on one cold lookup, the stat's are shown beside it.
    ("stat_p50_us", "stat random file p50", "µs", "lower", None, None),
    ("stat_cpu_us", "  daemon CPU per stat", "µs", "lower", None, None),
    ("stat_lookups", "  FUSE lookups per stat", "n", "lower", None, None),
    ("stat_p99_us", "stat random file p99", "µs", "lower", None, None),
    ("stat_p99_lookups", "  lookups per stat, slowest 1%", "n", "lower", None, None),
    ("cold_lookup_p50_us", "one cold lookup p50", "µs", "lower", 1.25, None),
    ("cold_lookup_p99_us", "one cold lookup p99", "µs", "lower", 1.25, None),
    ("stat_cpu_per_lookup_us", "  daemon CPU per lookup", "µs", "lower", 1.25, None),
    ("lookup_p50_us", "stat, folder cached p50", "µs", "lower", 1.25, None),
    ("lookup_p99_us", "stat, folder cached p99", "µs", "lower", 1.25, None),
    ("list_10k_s", "scandir+stat 10K folder", "s", "lower", 1.25, None),
    ("list_cpu_us", "  daemon CPU per entry", "µs", "lower", 1.25, None),
    ("find_rate", "find whole tree", "entries/s", "higher", 1.25, None),
    ("find_cpu_us", "  daemon CPU per entry", "µs", "lower", 1.25, None),
    ("find_kernel_us", "  find's kernel time per entry", "µs", "lower", 1.25, None),
    ("rss_walk_mb", "daemon VmRSS after find", "MB", "lower", None, ("<", 500)),
    ("create_rate", "create+write 1,000 files", "files/s", "higher", 1.25, None),
    ("create_cpu_us", "  daemon CPU per file", "µs", "lower", 1.25, None),
    ("flush_s", "flush (post the 1,000)", "s", "lower", 1.25, None),
    ("umount_s", "umount: backup + usenetfs umount", "s", "lower", 1.25, None),
    ("backup_s", "  index backup (requested)", "s", "lower", None, None),
    ("umount_rest_s", "  usenetfs umount after it", "s", "lower", None, None),
    ("umount_kernel_s", "    its kernel (sys) time", "s", "lower", None, None),
    ("umount_daemon_cpu_s", "  the daemon's CPU in it", "s", "lower", 1.25, None),
    ("ceiling_umount_s", "  no-op fs: umount after find", "s", "lower", None, None),
    ("ceiling_umount_kernel_s", "    its kernel (sys) time", "s", "lower", None, None),
    ("umount_over_ceiling", "  usenetfs umount ÷ no-op's", "x", "lower", None, None),
    ("umount_excess_s", "  usenetfs umount − no-op's", "s", "lower", 1.25, None),
    ("first_backup_s", "first backup (whole index)", "s", "lower", None, None),
    ("umount_readonly_s", "umount after a read-only mount", "s", "lower", 1.25, None),
]


def best(runs: list[dict], key: str, better: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None
    return min(values) if better == "lower" else max(values)


def report(results: dict[int, list[dict]]) -> None:
    sizes = sorted(results, reverse=True)
    print("\nbest of rounds per figure (all rounds are in the JSON)")
    head = f"{'':30}" + "".join(f"{('1/' + str(d)) if d > 1 else 'full':>12}" for d in sizes)
    if 100 in results and 1 in results:
        head += f"{'full/(1/100)':>14}  goal"
    print(head)
    for key, label, unit, better, growth_goal, absolute in METRICS:
        values = {d: best(results[d], key, better) for d in sizes}
        line = f"{label + ' [' + unit + ']':30}"
        for d in sizes:
            v = values[d]
            line += f"{'-' if v is None else (f'{v:,.1f}' if v < 1e5 else f'{v:,.0f}'):>12}"
        if 100 in results and 1 in results and values.get(1) is not None and values.get(100):
            ratio = values[1] / values[100]
            growth = ratio if better == "lower" else 1 / ratio  # >1: worse at full size
            line += f"{ratio:>14.2f}"
            goals = []
            if growth_goal is not None:
                goals.append(f"cost x{growth:.2f} (goal <= {growth_goal}) {'ok' if growth <= growth_goal else 'MISSED'}")
            if absolute is not None:
                op, limit = absolute
                ok = values[1] < limit
                goals.append(f"full {values[1]:,.1f} {op} {limit} {'ok' if ok else 'MISSED'}")
            line += "  " + "; ".join(goals)
        print(line)
    for d in sizes:
        for r in results[d]:
            extra = [f"load {r['load_before']:.1f}->{r['load_after']:.1f}", r.get("backup", "")]
            if r.get("readonly_backed_up"):
                extra.append("the read-only mount was backed up again")
            if not r.get("find_complete", True):
                extra.append(f"find time-boxed: {r['find_entries']:,} entries in {r['find_s']:.0f} s")
            if "fsck_s" in r:
                extra.append(f"fsck {r['fsck_s']:.1f} s, {r['fsck_problems']} problems")
            print(f"  {r['size']} round {r['round']}: " + "; ".join(e for e in extra if e))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,10,1", help="denominators: 100 = 1/100, 1 = full")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--find-budget", type=float, default=240.0, help="seconds before find is cut short")
    parser.add_argument("--fsck-full", action="store_true", help="also time fsck of the full-size index")
    parser.add_argument("--prepare", action="store_true", help="only make the volumes and the indexes")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/usenetfs-scale"))
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    bench = Bench(args.dir)
    bench.setup()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}, {args.dir}", flush=True)
    for d in sizes:
        bench.pristine(d, bench.volume(d))
    if args.prepare:
        return
    results: dict[int, list[dict]] = {d: [] for d in sizes}
    for round_no in range(1, args.rounds + 1):
        for d in sizes:
            r = run_size(bench, d, round_no, args)
            results[d].append(r)
            print(json.dumps(r), flush=True)
            if args.json:
                args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    report(results)


if __name__ == "__main__":
    main()
