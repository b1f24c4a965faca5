"""Level 5: real mounts through mount(8) and /sbin/mount.usenetfs: `mount -t usenetfs`, a test
fstab (`mount -T FILE`), `mount -a`, umount(8) (which cannot wait for uploads), an empty
environment as systemd gives, the foreground mode with sd_notify, and failures that must leave
nothing mounted.

The helper is installed in /sbin by the real `usenetfs install-mount-helper` (we run as root),
under a lock shared by every checkout on the machine, and the previous file is put back after.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from t5_mount_test import Mount
from usenetfs.innserver import free_port
from usenetfs.process import process_alive

HELPER = Path("/sbin/mount.usenetfs")
USENETFS = [sys.executable, "-m", "usenetfs.cli.main"]


@pytest.fixture(scope="module")
def installed_helper():
    if os.geteuid() != 0:
        pytest.fail("mount(8) with /sbin/mount.usenetfs needs root", pytrace=False)
    with open("/run/lock/usenetfs-mount-helper.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # scripts/setup.sh of another checkout installs its own: not mid-test
        previous = HELPER.read_bytes() if HELPER.exists() else None
        result = subprocess.run([*USENETFS, "install-mount-helper"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        try:
            yield HELPER
        finally:
            if previous is None:
                HELPER.unlink(missing_ok=True)
            elif HELPER.read_bytes() != previous:
                HELPER.write_bytes(previous)


def helper_options(volume: Mount) -> str:
    return f"home={volume.home},passphrase_file={volume.passphrase_file}"


def run(*argv, env=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, env=env, timeout=timeout)


def mounts_at(path: Path) -> list[list[str]]:
    with open("/proc/self/mounts") as table:
        return [line.split() for line in table if line.split()[1] == str(path)]


def wait_for_exit(pid: int, volume: Mount) -> float:
    """Seconds until the daemon `pid` is gone (a hang bound, not a timing claim)."""
    started = time.monotonic()
    while process_alive(pid):
        assert time.monotonic() - started < 120, "the daemon did not exit" + volume.log_tail()
        time.sleep(0.05)
    return time.monotonic() - started


def assert_failed_cleanly(result: subprocess.CompletedProcess, volume: Mount, message: str) -> None:
    assert result.returncode == 32, result
    assert result.stderr.startswith(f"mount.usenetfs: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert not os.path.ismount(volume.mountpoint) and mounts_at(volume.mountpoint) == []
    assert not (volume.home / "data/volumes/vol/mount.json").exists()


def test_mount_minus_t_usenetfs_and_umount8(installed_helper, inn, tmp_path):
    volume = Mount(tmp_path, inn.url)
    try:
        mounted = run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o",
                      f"{helper_options(volume)},_netdev,nofail,allow_other,uid=1234,gid=2345,umask=027,"
                      "nosuid,noexec,noatime")
        assert (mounted.returncode, mounted.stderr) == (0, ""), mounted.stderr + volume.log_tail()
        [entry] = mounts_at(volume.mountpoint)
        assert entry[0] == "vol" and entry[2] == "fuse.usenetfs"  # the source is the fstab SPEC
        assert {"nosuid", "noexec", "noatime", "allow_other"} <= set(entry[3].split(","))
        note = volume.mountpoint / "note.txt"
        note.write_text("written before umount(8)\n")
        st = note.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 2345, 0o640)

        twice = run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o", helper_options(volume))
        assert (twice.returncode, twice.stderr) == (32, f"mount.usenetfs: {volume.mountpoint} is already a mountpoint\n")

        pid = volume.daemon_pid()
        unmounted = run("umount", volume.mountpoint)
        assert (unmounted.returncode, unmounted.stderr) == (0, "")
        wait_for_exit(pid, volume)
        assert mounts_at(volume.mountpoint) == []
        assert not (volume.home / "data/volumes/vol/mount.json").exists()

        again = run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o", helper_options(volume))
        assert again.returncode == 0, again.stderr
        assert note.read_text() == "written before umount(8)\n"
        volume.umount()
    finally:
        volume.cleanup()


def test_mount_through_a_test_fstab_and_mount_a(installed_helper, inn, tmp_path):
    volume = Mount(tmp_path, inn.url)
    config = tmp_path / "vol.conf"
    config.write_text(f"# options of the test volume\nhome={volume.home}\n"
                      f"passphrase_file={volume.passphrase_file}\nallow_other\n")
    on_demand = tmp_path / "fstab"
    on_demand.write_text(f"vol {volume.mountpoint} usenetfs noauto,nofail,_netdev,x-systemd.automount,"
                         f"x-systemd.idle-timeout=600,x-gvfs-show,comment=usenetfs-test,config={config} 0 0\n")
    at_boot = tmp_path / "fstab.auto"
    at_boot.write_text(f"vol {volume.mountpoint} usenetfs nofail,_netdev,config={config} 0 0\n")
    try:
        by_dir = run("mount", "-T", on_demand, volume.mountpoint)
        assert (by_dir.returncode, by_dir.stderr) == (0, ""), by_dir.stderr + volume.log_tail()
        (volume.mountpoint / "from-fstab").write_text("hello\n")
        skipped = run("mount", "-a", "-T", on_demand)  # noauto: mount -a leaves it alone
        assert skipped.returncode == 0
        pid = volume.daemon_pid()
        assert run("umount", volume.mountpoint).returncode == 0
        wait_for_exit(pid, volume)

        for _ in range(2):  # the second `mount -a` sees it mounted (same source) and does nothing
            booted = run("mount", "-a", "-T", at_boot)
            assert (booted.returncode, booted.stderr) == (0, ""), booted.stderr + volume.log_tail()
            assert len(mounts_at(volume.mountpoint)) == 1
        assert (volume.mountpoint / "from-fstab").read_text() == "hello\n"
        volume.umount()

        at_boot.write_text(f"vol {volume.mountpoint} usenetfs nofail,config={config},frobnicate 0 0\n")
        assert_failed_cleanly(run("mount", "-T", at_boot, volume.mountpoint), volume,
                              "unknown mount option 'frobnicate'\n")
    finally:
        volume.cleanup()


def test_failures_through_mount8_leave_nothing_mounted(installed_helper, inn, tmp_path):
    volume = Mount(tmp_path / "a", inn.url)
    options = helper_options(volume)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    assert_failed_cleanly(run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o", f"{options},frobnicate"),
                          volume, "unknown mount option 'frobnicate'\n")
    assert_failed_cleanly(run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o",
                              f"home={volume.home},passphrase_file={wrong}"), volume, "wrong passphrase\n")
    assert_failed_cleanly(run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o", f"{options},passphrase=x"),
                          volume, "mount option 'passphrase' refused")

    unreachable = Mount(tmp_path / "b", f"nntp://127.0.0.1:{free_port()}")
    assert_failed_cleanly(run("mount", "-t", "usenetfs", "vol", unreachable.mountpoint, "-o",
                              helper_options(unreachable)), unreachable, "server check failed: ")


def test_empty_environment_as_systemd_gives(installed_helper, inn, tmp_path):
    volume = Mount(tmp_path, inn.url)
    try:
        no_home = run("env", "-i", "/usr/bin/mount", "-t", "usenetfs", "vol", volume.mountpoint)
        assert (no_home.returncode, no_home.stderr) == (32, "mount.usenetfs: no volume named 'vol' in "
                                                        "/var/lib/usenetfs/config (give home=DIR, or create "
                                                        "it with 'usenetfs init')\n")
        mounted = run("env", "-i", "/usr/bin/mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o",
                      helper_options(volume))
        assert (mounted.returncode, mounted.stderr) == (0, ""), mounted.stderr + volume.log_tail()
        data = os.urandom(1_500_000)
        (volume.mountpoint / "blob").write_bytes(data)
        # What a service's ExecStop= runs: `usenetfs umount` without PATH still finds fusermount3.
        usenetfs = Path(sys.executable).parent / "usenetfs"
        stopped = run("env", "-i", usenetfs, "--home", volume.home, "umount", volume.mountpoint)
        assert (stopped.returncode, stopped.stderr) == (0, ""), stopped.stderr
        assert not os.path.ismount(volume.mountpoint) and volume.staging_files() == []
        volume.run("cache", "clear", "vol")
        volume.mount()
        assert (volume.mountpoint / "blob").read_bytes() == data
    finally:
        volume.cleanup()


class Service:
    """mount.usenetfs as a Type=notify service runs it: foreground, no PATH or HOME, NOTIFY_SOCKET."""

    def __init__(self, volume: Mount, log_path: Path):
        self.volume = volume
        self.directory = tempfile.mkdtemp(prefix="usenetfs-notify-")  # short: AF_UNIX paths are limited
        self.socket_path = os.path.join(self.directory, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.socket_path)
        self.notify.settimeout(120)
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [HELPER, "vol", volume.mountpoint, "-o", f"{helper_options(volume)},foreground"],
                env={"NOTIFY_SOCKET": self.socket_path}, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def wait_ready(self) -> None:
        try:
            message = self.notify.recv(4096)
        except TimeoutError:
            pytest.fail("no READY=1: " + self.log_path.read_text())
        assert message == b"READY=1"
        assert os.path.ismount(self.volume.mountpoint)  # READY means mounted and answering
        assert self.process.poll() is None  # still serving, in the foreground

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.notify.close()
        os.unlink(self.socket_path)
        os.rmdir(self.directory)


def test_foreground_mode_notifies_systemd_and_stops_by_execstop_or_sigterm(installed_helper, inn, tmp_path):
    volume = Mount(tmp_path, inn.url)
    data = {"by-execstop.bin": os.urandom(800_000), "by-sigterm.bin": os.urandom(800_000)}
    try:
        service = Service(volume, tmp_path / "service.log")
        try:
            service.wait_ready()
            (volume.mountpoint / "by-execstop.bin").write_bytes(data["by-execstop.bin"])
            stopped = volume.run("umount", str(volume.mountpoint))  # the unit's ExecStop=
            assert stopped.returncode == 0
            assert service.process.wait(timeout=120) == 0, service.log_path.read_text()
            assert volume.staging_files() == []  # ExecStop waited for the uploads
        finally:
            service.close()

        service = Service(volume, tmp_path / "service2.log")
        try:
            service.wait_ready()
            (volume.mountpoint / "by-sigterm.bin").write_bytes(data["by-sigterm.bin"])
            service.process.terminate()  # what systemd sends once TimeoutStopSec has passed
            assert service.process.wait(timeout=120) == 0, service.log_path.read_text()
            assert mounts_at(volume.mountpoint) == []
        finally:
            service.close()

        volume.mount()  # posts whatever SIGTERM left
        volume.umount()
        volume.run("cache", "clear", "vol")
        volume.mount()
        for name, content in data.items():
            assert (volume.mountpoint / name).read_bytes() == content
    finally:
        volume.cleanup()


def test_umount8_with_uploads_pending_stops_at_once_and_the_next_mount_resumes(installed_helper, make_inn,
                                                                               tmp_path):
    server = make_inn()
    volume = Mount(tmp_path, server.url)
    try:
        assert run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o", helper_options(volume)).returncode == 0
        server.stop()  # nothing can be posted: every file is still pending at umount(8)
        files = {"big.bin": os.urandom(2_500_000), "medium.bin": os.urandom(400_000),
                 **{f"small{i}.txt": f"small file {i}\n".encode() * (i + 1) for i in range(5)}}
        for name, content in files.items():
            with open(volume.mountpoint / name, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
        time.sleep(1.0)  # uploads start and fail against the stopped server meanwhile
        pid = volume.daemon_pid()
        unmounted = run("umount", volume.mountpoint)
        assert (unmounted.returncode, unmounted.stderr) == (0, "")
        seconds = wait_for_exit(pid, volume)
        print(f"daemon gone {seconds:.2f} s after umount(8) returned")
        assert mounts_at(volume.mountpoint) == []
        assert not (volume.home / "data/volumes/vol/mount.json").exists()
        assert len(volume.staging_files()) == len(files)  # kept for the next mount
        log = volume.log_tail()
        assert f"unmounted with {len(files)} files" in log and "Traceback" not in log

        server.start()
        assert_resumed_and_intact(volume, files)
    finally:
        volume.cleanup()


def assert_resumed_and_intact(volume: Mount, files: dict[str, bytes]) -> None:
    """Mount again through mount(8): the uploads umount(8) left are resumed; then every
    byte comes back from the server (cache cleared) and the index is clean."""
    assert run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o", helper_options(volume)).returncode == 0
    volume.umount()  # waits until the resumed uploads are posted and read back
    assert volume.staging_files() == []
    volume.run("cache", "clear", "vol")
    volume.mount()
    for name, content in files.items():
        assert (volume.mountpoint / name).read_bytes() == content
    volume.umount()
    fsck = volume.run("fsck", "vol", "--no-repair", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_umount8_in_the_middle_of_uploads_loses_nothing(installed_helper, make_inn, tmp_path):
    """The server up this time: umount(8) lands while segments are being posted and read back."""
    server = make_inn()
    volume = Mount(tmp_path, server.url)
    try:
        assert run("mount", "-t", "usenetfs", "vol", volume.mountpoint, "-o", helper_options(volume)).returncode == 0
        files = {f"part{i}.bin": os.urandom(1_500_000) for i in range(4)}
        for name, content in files.items():
            (volume.mountpoint / name).write_bytes(content)
        deadline = time.monotonic() + 120
        while server.article_count() == 0:  # posting has begun
            assert time.monotonic() < deadline, "nothing was posted" + volume.log_tail()
            time.sleep(0.02)
        pid = volume.daemon_pid()
        assert run("umount", volume.mountpoint).returncode == 0
        wait_for_exit(pid, volume)
        assert "Traceback" not in volume.log_tail()
        assert_resumed_and_intact(volume, files)
    finally:
        volume.cleanup()


def test_mounts_on_top_of_an_automount_trigger(installed_helper, inn, tmp_path):
    """x-systemd.automount: systemd mounts autofs at DIR, and on first access runs mount(8),
    which must mount on top of it without touching DIR in a way that waits for that very mount.
    Here the test plays systemd's part: it owns the autofs pipe, and a request on it is a failure."""
    volume = Mount(tmp_path, inn.url)
    read_end, write_end = os.pipe()
    trigger = subprocess.run(["mount", "-t", "autofs", "-o",
                              f"fd={write_end},pgrp={os.getpgrp()},minproto=5,maxproto=5,direct",
                              "usenetfs-test-automount", str(volume.mountpoint)],
                             pass_fds=(write_end,), capture_output=True, text=True)
    try:
        assert trigger.returncode == 0, trigger.stderr
        assert [entry[2] for entry in mounts_at(volume.mountpoint)] == ["autofs"]
        # Its own session, as systemd starts mount(8): not exempt from the trigger.
        mounting = subprocess.Popen(["mount", "-t", "usenetfs", "vol", str(volume.mountpoint), "-o",
                                     helper_options(volume)], start_new_session=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while mounting.poll() is None:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            assert not ready, "mounting touched the automount trigger (it would wait for itself)"
            assert time.monotonic() < deadline, "mount did not return"
        assert (mounting.returncode, mounting.stderr.read()) == (0, ""), volume.log_tail()
        assert [entry[2] for entry in mounts_at(volume.mountpoint)] == ["autofs", "fuse.usenetfs"]
        (volume.mountpoint / "through-automount").write_text("ok\n")
        assert (volume.mountpoint / "through-automount").read_text() == "ok\n"
        pid = volume.daemon_pid()
        assert run("umount", volume.mountpoint).returncode == 0  # the idle timeout's unmount
        wait_for_exit(pid, volume)
        assert [entry[2] for entry in mounts_at(volume.mountpoint)] == ["autofs"]
        assert not select.select([read_end], [], [], 0)[0]
    finally:
        os.close(write_end)  # autofs turns catatonic: nothing can wait on it any more
        os.close(read_end)
        for _ in mounts_at(volume.mountpoint):
            subprocess.run(["umount", "-l", str(volume.mountpoint)], capture_output=True)
        volume.cleanup()
