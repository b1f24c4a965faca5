"""What the end-to-end benchmarks share: driving a usenetfs volume through the CLI, random
source files in /dev/shm, timing, and how busy the (shared) machine was.

    volume = Volume(tmp, server.url, connections=4)   # init, in a private USENETFS_HOME
    volume.mount()
    seconds = volume.copy_and_umount(source, "big")   # cp + umount: posted and read back
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PASSPHRASE = "benchmark passphrase"
GROUP = "alt.binaries.test"


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@contextlib.contextmanager
def random_source(size_bytes: int, name: str) -> Iterator[Path]:
    """A file of random bytes in /dev/shm, so reading the source costs no disk time."""
    path = Path("/dev/shm") / f"{name}-{os.getpid()}"
    try:
        with open(path, "wb") as f:
            for start in range(0, size_bytes, 64 << 20):
                f.write(os.urandom(min(64 << 20, size_bytes - start)))
        yield path
    finally:
        path.unlink(missing_ok=True)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """Share of all cores busy (anyone's work) between start() and stop()."""

    def start(self) -> CpuMeter:
        self._busy, self._total = _cpu_times()
        return self

    def stop(self) -> float:
        busy, total = _cpu_times()
        return (busy - self._busy) / max(1, total - self._total)


_TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> tuple[int, float] | None:
    """(start time, CPU seconds so far) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" that ends the command name: utime, stime are fields 12, 13; starttime 20.
    return int(fields[19]), (int(fields[11]) + int(fields[12])) / _TICK


class CpuSampler:
    """CPU seconds that groups of processes used between start() and stop().

    `groups` maps a label to a function returning the PIDs of that group right now. A thread
    samples /proc every `interval` seconds; a process that exits loses at most its last
    interval (INN's nnrpd lives as long as its connection, Nyuu until the end). A group that
    holds this process is not charged for the sampling itself (~0.5% of a core per 1,000
    processes on the machine).
    """

    def __init__(self, groups: dict[str, Callable[[], set[int]]], interval: float = 0.2):
        self.groups, self.interval = groups, interval
        self._base: dict[tuple[int, int], float] = {}
        self._last: dict[tuple[str, int, int], float] = {}
        self._stop = threading.Event()
        self._own = 0.0  # CPU seconds spent sampling, in whichever thread did it
        self._holding_me: set[str] = set()

    def _sample(self, baseline: bool = False) -> None:
        started = time.thread_time()
        for label, pids in self.groups.items():
            found = pids()
            if os.getpid() in found:
                self._holding_me.add(label)
            for pid in found:
                got = _process_cpu(pid)
                if got is None:
                    continue
                key = (pid, got[0])
                if baseline:
                    self._base[key] = got[1]
                self._last[(label, *key)] = got[1]
        if not baseline:
            self._own += time.thread_time() - started

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> CpuSampler:
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.used()

    def used(self) -> dict[str, float]:
        """CPU seconds per group since start(), as of now."""
        self._sample()
        used = dict.fromkeys(self.groups, 0.0)
        for (label, pid, started), cpu in self._last.items():
            used[label] += cpu - self._base.get((pid, started), 0.0)
        for label in self._holding_me:
            used[label] -= self._own
        return used


def children(pid: int) -> set[int]:
    """Direct children of `pid`."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry.name))
            except OSError:
                continue
    return found


def background_load(seconds: float = 1.0) -> float:
    """Share of all cores busy while this benchmark sits idle: the other users' load."""
    meter = CpuMeter().start()
    time.sleep(seconds)
    return meter.stop()


def touch_memory(gib: int) -> float:
    """Write one byte in every page of `gib` GiB of anonymous memory, then free it; returns
    the seconds it took. On these VMs the copies into fresh page-cache pages (a copy into a
    FUSE file, the staging file, INN's spool) ran several times slower in some runs than in
    others, and a run that followed this was fast again (docs/performance.md, "Tenth
    session": the cause was not found). Touching memory first makes runs comparable."""
    import mmap
    started = time.perf_counter()
    with mmap.mmap(-1, gib << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as memory:
        for offset in range(0, gib << 30, mmap.PAGESIZE):
            memory[offset] = 1
    return time.perf_counter() - started


def dirty_mb() -> float:
    """MB of file data waiting to be written to disk (Dirty + Writeback in /proc/meminfo):
    past vm.dirty_ratio the kernel throttles every writer, INN's spool and our staging alike."""
    kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(("Dirty:", "Writeback:")):
                kib += int(line.split()[1])
    return kib * 1024 / 1e6


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Volume:
    """A usenetfs volume in a private home under `tmp`, driven by the CLI of this checkout."""

    def __init__(self, tmp: Path, server_url: str, connections: int, name: str = "bench"):
        self.home, self.mnt, self.name = tmp / "home", tmp / "mnt", name
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        self.passphrase_file = tmp / "pass"
        self.passphrase_file.write_text(PASSPHRASE)
        self.run("init", name, "--server", server_url, "--group", GROUP,
                 "--connections", str(connections), "--passphrase-file", str(self.passphrase_file))

    def run(self, *args: str) -> None:
        """One usenetfs command. Its output goes to a file, not a pipe: `mount` leaves a daemon
        behind that would hold a pipe open. On failure the output is shown and we stop."""
        env = {**os.environ, "USENETFS_HOME": str(self.home)}
        log_path = self.logs / f"{args[0]}.log"
        with open(log_path, "a") as log:
            start = log.tell()
            result = subprocess.run([sys.executable, "-m", "usenetfs.cli.main", *args], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, timeout=3600)
        if result.returncode != 0:
            with open(log_path) as log:
                log.seek(start)
                output = log.read().strip()
            sys.exit(f"usenetfs {' '.join(args[:2])} failed (exit {result.returncode}): {output}")

    def mount(self, *options: str) -> None:
        self.run("mount", self.name, str(self.mnt), "--passphrase-file", str(self.passphrase_file), *options)

    def umount(self) -> None:
        self.run("umount", str(self.mnt))

    def cache_clear(self) -> None:
        self.run("cache", "clear", self.name)

    def copy_and_umount(self, source: Path, name: str, between: Callable[[], object] = lambda: None
                        ) -> tuple[float, float]:
        """Seconds to copy `source` into the mount, and then to unmount: `umount` returns once
        every byte is compressed, encrypted, posted and read back by BODY. `between` is called
        (untimed) between the two."""
        # coreutils cp, as users copy: it writes st_blksize (1 MiB) at a time. Every write()
        # into a FUSE file costs a GETXATTR security.capability round trip (libfuse 3.14
        # cannot negotiate FUSE_HANDLE_KILLPRIV_V2, which would let the kernel skip it), so
        # shutil.copyfile's 64 KiB sendfile writes took twice as long (docs/performance.md).
        copy_seconds = timed(lambda: subprocess.run(["cp", "--", str(source), str(self.mnt / name)], check=True))
        between()
        return copy_seconds, timed(self.umount)

    def daemon_pids(self) -> set[int]:
        """The mount daemon: the process still running `usenetfs ... mount NAME MOUNTPOINT`."""
        wanted = ["mount", self.name, str(self.mnt)]
        found = set()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        argv = f.read().decode(errors="replace").split("\0")
                except OSError:
                    continue
                if "usenetfs.cli.main" in argv and any(argv[i:i + 3] == wanted for i in range(len(argv))):
                    found.add(int(entry.name))
        return found

    def force_unmount(self) -> None:
        """Clean-up after a failure: detach whatever is still mounted."""
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
