"""Level 5: real mounts. The filesystem runs as a user would run it (`usenetfs mount` in a
subprocess, daemonised), against a real INN; files go in with cp, rsync and editors, and
come back after an unmount, a cache clear and a remount, so the bytes really come from
the server. Crash tests kill the daemon with SIGKILL mid-upload.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

PASSPHRASE = "correct horse battery staple"


class Mount:
    """One volume in its own home, mounted and remounted through the real command line."""

    def __init__(self, root: Path, server_url: str):
        self.home = root / "home"
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir(parents=True)
        self.passphrase_file = root / "passphrase"
        self.passphrase_file.write_text(PASSPHRASE + "\n")
        self.run("init", "vol", "--server", server_url, "--group", "alt.binaries.test",
                 "--passphrase-file", str(self.passphrase_file), "--kdf-log-n", "10")

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "USENETFS_HOME": str(self.home)}
        result = subprocess.run([sys.executable, "-m", "usenetfs.cli.main", *args], env=env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"usenetfs {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr}{self.log_tail()}")
        return result

    def mount(self) -> None:
        self.run("mount", "vol", str(self.mountpoint), "--passphrase-file", str(self.passphrase_file))
        assert os.path.ismount(self.mountpoint)

    def umount(self, *extra: str) -> None:
        self.run("umount", str(self.mountpoint), *extra, timeout=300)
        assert not os.path.ismount(self.mountpoint)

    def crash_and_mount(self) -> None:
        """kill -9 the daemon in whatever it is doing, detach the dead mount, mount again."""
        os.kill(self.daemon_pid(), signal.SIGKILL)
        subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
        time.sleep(0.2)
        self.mount()

    def cold_mount(self) -> None:
        """Unmount (everything posted), drop the cache, mount: reads then come from the server."""
        self.umount()
        self.run("cache", "clear", "vol")
        self.mount()

    def daemon_pid(self) -> int:
        import json
        info = json.loads((self.home / "data/volumes/vol/mount.json").read_text())
        return info["pid"]

    def staging_files(self) -> list[Path]:
        """Staging files other than the spare pool's (empty files kept for reuse)."""
        staging = self.home / "data/volumes/vol/staging"
        if not staging.exists():
            return []
        return [p for p in staging.rglob("*") if p.is_file() and not p.name.startswith("spare-")]

    def log_tail(self) -> str:
        log = self.home / "data/volumes/vol/mount.log"
        return "\n--- mount.log ---\n" + "\n".join(log.read_text().splitlines()[-30:]) if log.exists() else ""

    def cleanup(self) -> None:
        if os.path.ismount(self.mountpoint):
            self.run("umount", str(self.mountpoint), "--no-wait", check=False)
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
        pid_file = self.home / "data/volumes/vol/mount.json"
        if pid_file.exists():
            try:
                os.kill(self.daemon_pid(), signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass


@pytest.fixture
def volume(make_inn, tmp_path):
    server = make_inn()
    mount = Mount(tmp_path, server.url)
    mount.server = server
    mount.mount()
    yield mount
    mount.cleanup()
    fsck = mount.run("fsck", "vol", "--no-repair", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def tree_digest(root: Path) -> dict[str, tuple]:
    """Everything cp -a / rsync -aHX should preserve, per relative path."""
    out = {}
    inodes: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", oct(st.st_mode & 0o7777))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            xattrs = {name: os.getxattr(path, name) for name in os.listxattr(path)}
            first = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
            out[rel] = ("file", digest, st.st_size, oct(st.st_mode & 0o7777), st.st_mtime_ns, xattrs, first)
    return out


def make_tree(root: Path) -> None:
    (root / "sub/deeper").mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_text("hello usenet\n")
    for i in range(40):
        (root / "sub" / f"note{i}.txt").write_text(f"small file {i}\n" * (i + 1))
    (root / "sub/deeper/big.bin").write_bytes(os.urandom(3_000_000))
    (root / "text.log").write_bytes(b"compressible line of text\n" * 80_000)
    with open(root / "sparse.img", "wb") as f:
        f.truncate(4_000_000)
        f.seek(1_500_000)
        f.write(b"middle")
    os.symlink("small.txt", root / "link-to-small")
    os.symlink("/nonexistent/target", root / "dangling")
    os.link(root / "small.txt", root / "hardlink.txt")
    os.setxattr(root / "small.txt", "user.comment", b"kept")
    os.chmod(root / "sub/note1.txt", 0o600)


def fuse_bdi(mountpoint: Path) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mountpoint) and " - fuse" in line:
            return fields[2]
    raise AssertionError(f"{mountpoint} is not a FUSE mount")


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a mount's read-ahead needs root")
def test_mount_returns_with_the_read_ahead_raised(volume):
    """A file takes the read-ahead it finds when it is opened, so `usenetfs mount` must not
    return before the 1 MiB read-ahead is in place (128 KiB halves sequential reads)."""
    for _ in range(2):
        assert Path(f"/sys/class/bdi/{fuse_bdi(volume.mountpoint)}/read_ahead_kb").read_text().strip() == "1024"
        volume.umount()
        volume.mount()


def test_cp_and_rsync_round_trip_through_the_server(volume, tmp_path):
    source = tmp_path / "source"
    make_tree(source)
    expected = tree_digest(source)
    subprocess.run(["cp", "-a", str(source), str(volume.mountpoint / "cp")], check=True)
    subprocess.run(["rsync", "-aHX", f"{source}/", str(volume.mountpoint / "rsync")], check=True)
    assert tree_digest(volume.mountpoint / "cp") == expected
    assert tree_digest(volume.mountpoint / "rsync") == expected

    volume.umount()  # waits until every byte is posted and verified
    assert volume.staging_files() == []
    assert volume.server.article_count() > 0
    volume.run("cache", "clear", "vol")
    volume.mount()
    assert tree_digest(volume.mountpoint / "cp") == expected
    assert tree_digest(volume.mountpoint / "rsync") == expected
    # A second rsync finds nothing to do (sizes and nanosecond mtimes survived).
    again = subprocess.run(["rsync", "-aHXi", f"{source}/", str(volume.mountpoint / "rsync")],
                           check=True, capture_output=True, text=True)
    assert again.stdout.strip() == ""


def test_a_big_file_streams_out_while_it_is_being_written(volume, tmp_path):
    """A volume with stream_segments set: segments of a file still open for writing, and
    written all the time (never idle long enough to be uploaded as an idle file), are
    posted and verified before it is closed; byte-exact from the server afterwards."""
    import json
    volume.umount()
    settings_file = volume.home / "config/volumes/vol/volume.json"
    settings = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**settings, "stream_segments": 8}))
    volume.mount()
    content = os.urandom(14 * 716_800 + 12_345)
    with open(volume.mountpoint / "growing.bin", "wb") as f:
        f.write(content[:12 * 716_800])
        position = 12 * 716_800
        deadline = time.monotonic() + 30
        while json.loads(volume.run("status", "--json").stdout)[0]["segments"]["verified"] < 8:
            assert time.monotonic() < deadline, "nothing was streamed while the file was written"
            f.write(content[position:position + 4096])  # keep writing: never idle
            f.flush()
            position += 4096
            time.sleep(0.1)
        f.write(content[position:])
    volume.umount()
    volume.run("cache", "clear", "vol")
    volume.mount()
    assert (volume.mountpoint / "growing.bin").read_bytes() == content


def test_ls_a_shows_dot_and_dotdot(volume):
    (volume.mountpoint / "dir").mkdir()
    (volume.mountpoint / "dir/file").write_bytes(b"x")
    listed = subprocess.run(["ls", "-a", "-i", str(volume.mountpoint / "dir")], capture_output=True, text=True,
                            check=True).stdout.split()
    names = listed[1::2]
    assert names == [".", "..", "file"]
    inodes = dict(zip(names, map(int, listed[0::2])))
    assert inodes["."] == (volume.mountpoint / "dir").stat().st_ino
    assert inodes[".."] == volume.mountpoint.stat().st_ino
    assert sorted(os.listdir(volume.mountpoint / "dir")) == ["file"]


def test_editor_save_pattern_and_rename_over_open_file(volume):
    target = volume.mountpoint / "doc.txt"
    target.write_text("version 1\n")
    reader = open(target)
    tmp = volume.mountpoint / ".doc.txt.swp"
    with open(tmp, "w") as f:
        f.write("version 2\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, target)
    assert reader.read() == "version 1\n"  # the open file keeps its old content
    reader.close()
    assert target.read_text() == "version 2\n"
    assert not tmp.exists()


def test_truncate_extend_append_and_unlink_while_open(volume):
    path = volume.mountpoint / "grow.bin"
    path.write_bytes(b"a" * 1000)
    os.truncate(path, 10)
    os.truncate(path, 5000)
    data = path.read_bytes()
    assert data == b"a" * 10 + b"\0" * 4990
    with open(path, "ab") as f:
        f.write(b"tail")
    assert path.read_bytes().endswith(b"\0tail") and path.stat().st_size == 5004
    assert path.stat().st_blocks > 0

    victim = volume.mountpoint / "victim"
    victim.write_bytes(b"still readable")
    handle = open(victim, "rb")
    victim.unlink()
    assert not victim.exists()
    assert handle.read() == b"still readable"
    handle.close()


def test_concurrent_writers(volume):
    payloads = {f"writer{i}.bin": os.urandom(500_000 + i) for i in range(6)}

    def write(name: str, data: bytes) -> None:
        with open(volume.mountpoint / name, "wb") as f:
            for start in range(0, len(data), 65536):
                f.write(data[start:start + 65536])

    threads = [threading.Thread(target=write, args=item) for item in payloads.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    volume.umount()
    volume.run("cache", "clear", "vol")
    volume.mount()
    for name, data in payloads.items():
        assert (volume.mountpoint / name).read_bytes() == data


def test_kill_9_during_uploads_loses_nothing(volume):
    files = {f"file{i}.bin": os.urandom(300_000 * (i + 1)) for i in range(5)}
    for name, data in files.items():
        path = volume.mountpoint / name
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    orphan = volume.mountpoint / "unlinked-while-open"
    orphan.write_bytes(b"gone soon")
    held = open(orphan, "rb")
    orphan.unlink()  # open and nameless when the daemon dies: an orphan for the next mount
    time.sleep(0.5)  # uploads are starting or in flight
    os.kill(volume.daemon_pid(), signal.SIGKILL)
    try:
        held.close()
    except OSError:
        pass
    subprocess.run(["fusermount3", "-uz", str(volume.mountpoint)], capture_output=True)
    time.sleep(0.2)
    volume.mount()  # resumes the uploads
    volume.umount()
    assert volume.staging_files() == []
    volume.run("cache", "clear", "vol")
    volume.mount()
    for name, data in files.items():
        assert (volume.mountpoint / name).read_bytes() == data


def test_files_closed_just_before_a_kill_9_survive(volume):
    # No fsync: close() alone. The kernel sends RELEASE after close() has returned, so the
    # last files' releases (their sizes and times) may not have reached the index when the
    # daemon dies. Their names have (create commits before it returns), their bytes are in
    # their staging files, and the next mount takes the sizes from there. (A version that
    # deferred create's COMMIT to the release's lost files here.)
    (volume.mountpoint / "d").mkdir()
    files = {f"d/f{i:03d}": os.urandom(1000 + 37 * i) for i in range(200)}
    for name, data in files.items():
        with open(volume.mountpoint / name, "wb") as f:
            f.write(data)
    (volume.mountpoint / "d" / "empty").touch()
    volume.crash_and_mount()
    assert sorted(os.listdir(volume.mountpoint / "d")) == sorted([n[2:] for n in files] + ["empty"])
    for name, data in files.items():
        assert (volume.mountpoint / name).read_bytes() == data
    volume.cold_mount()
    for name, data in files.items():
        assert (volume.mountpoint / name).read_bytes() == data
    assert (volume.mountpoint / "d" / "empty").stat().st_size == 0


def test_server_down_while_writing(volume):
    server = volume.server
    server.stop()
    data = os.urandom(2_000_000)
    (volume.mountpoint / "offline.bin").write_bytes(data)  # succeeds locally
    assert (volume.mountpoint / "offline.bin").read_bytes() == data
    time.sleep(1.0)  # uploads try and fail meanwhile
    server.start()
    volume.umount()  # waits until the retried uploads land
    assert volume.staging_files() == []
    volume.run("cache", "clear", "vol")
    volume.mount()
    assert (volume.mountpoint / "offline.bin").read_bytes() == data


def test_disk_cache_serves_reads_while_the_server_is_down(volume):
    data = os.urandom(3_000_000)
    (volume.mountpoint / "cached.bin").write_bytes(data)
    volume.umount()  # posted and verified
    with_disk_cache = ("mount", "vol", str(volume.mountpoint), "--passphrase-file", str(volume.passphrase_file),
                       "-o", "disk_cache=64M")
    volume.run(*with_disk_cache)
    assert (volume.mountpoint / "cached.bin").read_bytes() == data  # from the server, kept on disk
    segments = volume.home / "cache/volumes/vol/segments"
    deadline = time.time() + 10
    while len(list(segments.iterdir())) < 5 and time.time() < deadline:  # written in the background
        time.sleep(0.05)
    status = volume.run("status", str(volume.mountpoint)).stdout
    assert "disk (segments)" in status and "of 67.1 MB" in status, status
    volume.umount()
    volume.run(*with_disk_cache)
    volume.server.stop()
    try:
        assert (volume.mountpoint / "cached.bin").read_bytes() == data  # a new mount: from the disk alone
    finally:
        volume.server.start()
    volume.umount()
    volume.run("cache", "clear", "vol")
    assert not segments.exists()


def test_restore_on_a_new_machine_from_the_server_alone(volume, tmp_path):
    """Lose the machine: only the volume id and the passphrase survive."""
    import json
    tree = volume.mountpoint / "keep"
    tree.mkdir()
    (tree / "a.txt").write_text("precious\n")
    (tree / "big.bin").write_bytes(os.urandom(2_500_000))
    volume.umount()  # posts the data, then the index backup
    for round in range(3):  # later backups supersede earlier ones; restore takes the newest
        volume.mount()
        (tree / f"later{round}.txt").write_text(f"written before backup {round + 2}\n")
        volume.umount()
    volume.mount()
    expected = tree_digest(tree)
    volume.umount()
    volume_id = json.loads((volume.home / "config/volumes/vol/volume.json").read_text())["volume_id"]

    other = tmp_path / "other-machine"
    other.mkdir()
    env = {**os.environ, "USENETFS_HOME": str(other / "home")}
    restored = subprocess.run(
        [sys.executable, "-m", "usenetfs.cli.main", "restore", "vol", "--volume-id", volume_id,
         "--server", volume.server.url, "--passphrase-file", str(volume.passphrase_file)],
        env=env, capture_output=True, text=True, timeout=120)
    assert restored.returncode == 0, restored.stderr
    mnt = other / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        [sys.executable, "-m", "usenetfs.cli.main", "mount", "vol", str(mnt), "--passphrase-file",
         str(volume.passphrase_file)], env=env, capture_output=True, text=True, timeout=120)
    assert mounted.returncode == 0, mounted.stderr
    try:
        assert tree_digest(mnt / "keep") == expected
    finally:
        subprocess.run([sys.executable, "-m", "usenetfs.cli.main", "umount", str(mnt), "--no-wait"],
                       env=env, capture_output=True, timeout=120)

    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    failed = subprocess.run(
        [sys.executable, "-m", "usenetfs.cli.main", "restore", "again", "--volume-id", volume_id,
         "--server", volume.server.url, "--passphrase-file", str(wrong)],
        env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "no backup of this volume" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


def test_index_is_backed_up_while_mounted_once_changes_settle(make_inn, tmp_path):
    import json
    server = make_inn()
    mount = Mount(tmp_path, server.url)
    settings_file = mount.home / "config/volumes/vol/volume.json"
    settings = json.loads(settings_file.read_text())
    settings.update(backup_settle_seconds=1.0, backup_min_interval=0.0)
    settings_file.write_text(json.dumps(settings))
    mount.mount()
    try:
        (mount.mountpoint / "note.txt").write_text("backed up without an unmount\n")
        deadline = time.monotonic() + 60
        while json.loads(settings_file.read_text())["last_backup"] < 1:
            assert time.monotonic() < deadline, "no backup while mounted" + mount.log_tail()
            time.sleep(0.2)
        first = json.loads(settings_file.read_text())["last_backup"]
        time.sleep(3)  # nothing changed since: no further backup
        assert json.loads(settings_file.read_text())["last_backup"] == first
    finally:
        mount.cleanup()


def test_mount_refuses_a_group_the_server_does_not_carry(make_inn, tmp_path):
    # Every post would get 441 and retry forever: say so at mount time instead.
    server = make_inn()
    m = Mount(tmp_path, server.url)
    m.run("init", "other", "--server", server.url, "--group", "alt.not.carried.here",
          "--passphrase-file", str(m.passphrase_file), "--kdf-log-n", "10")
    result = m.run("mount", "other", str(m.mountpoint), "--passphrase-file", str(m.passphrase_file),
                   check=False)
    assert result.returncode == 32
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no newsgroup 'alt.not.carried.here'" in lines[0], result.stderr
    assert not os.path.ismount(m.mountpoint)


def test_an_index_unchanged_since_its_backup_is_not_backed_up_again(make_inn, tmp_path):
    import json

    import trio

    from usenetfs.home import Home
    from usenetfs.mountd import control_request
    from usenetfs.volume import Volume
    server = make_inn()
    mount = Mount(tmp_path, server.url)
    settings_file = mount.home / "config/volumes/vol/volume.json"

    def last_backup() -> int:
        return json.loads(settings_file.read_text())["last_backup"]

    try:
        mount.mount()
        (mount.mountpoint / "a.txt").write_text("kept\n")
        mount.umount()
        assert last_backup() == 1
        # A mount that only reads: the umount has nothing to back up (the index file is
        # as backup 1 left it), across the two mounts.
        mount.mount()
        assert (mount.mountpoint / "a.txt").read_text() == "kept\n"
        assert sorted(os.listdir(mount.mountpoint)) == ["a.txt"]
        mount.umount()
        assert last_backup() == 1, mount.log_tail()
        # A change since: backed up again, and then not again within the same mount.
        mount.mount()
        (mount.mountpoint / "b.txt").write_text("new\n")
        mount.run("flush", str(mount.mountpoint))
        volume = Volume(Home.resolve(mount.home), "vol")
        first = trio.run(control_request, volume, "backup")
        again = trio.run(control_request, volume, "backup")
        assert first["backup"] == 2 and "unchanged" not in first
        assert again == {"ok": True, "backup": 2, "unchanged": True}
        assert first["hashed_chunks"] <= first["chunks"]
        mount.umount()
        assert last_backup() == 2
        # A mount whose index was touched behind its back (another backup's note does
        # not match the file any more) backs up as usual.
        mount.mount()
        mount.umount()
        assert last_backup() == 2
        os.utime(mount.home / "data/volumes/vol/index.sqlite")
        mount.mount()
        mount.umount()
        assert last_backup() == 3
    finally:
        mount.cleanup()


def test_a_backup_after_a_remount_hashes_only_what_changed(make_inn, tmp_path):
    """The pages written since the last backup, and that backup's chunk digests, carry
    over an umount: the next mount's backup reads and hashes only the chunks that changed
    (backup/current.py), and the restored index still has every file."""
    import trio

    from usenetfs.home import Home
    from usenetfs.mountd import control_request
    from usenetfs.volume import Volume
    server = make_inn()
    mount = Mount(tmp_path, server.url)
    volume = Volume(Home.resolve(mount.home), "vol")
    try:
        mount.mount()
        for k in range(40):  # an index of a few 256 KiB chunks
            folder = mount.mountpoint / f"folder{k:02d}"
            folder.mkdir()
            for j in range(100):
                (folder / f"file{j:03d}.txt").write_text(f"{k} {j}\n")
        mount.umount()  # backup 1: every chunk hashed
        mount.mount()
        (mount.mountpoint / "folder07" / "new.txt").write_text("after the remount\n")
        mount.run("flush", str(mount.mountpoint))
        second = trio.run(control_request, volume, "backup")
        assert second["backup"] == 2 and second["chunks"] >= 3, second
        assert 1 <= second["hashed_chunks"] < second["chunks"], second
        mount.umount()
        # The incremental backup restores to the whole index, on another machine.
        other = tmp_path / "other"
        env = {**os.environ, "USENETFS_HOME": str(other / "home")}
        cli = [sys.executable, "-m", "usenetfs.cli.main"]
        restored = subprocess.run(cli + ["restore", "vol", "--volume-id", volume.load().volume_id, "--server",
                                         server.url, "--passphrase-file", str(mount.passphrase_file)],
                                  env=env, capture_output=True, text=True, timeout=120)
        assert restored.returncode == 0 and "from index backup 2" in restored.stdout, restored.stderr
        mnt = other / "mnt"
        mnt.mkdir()
        mounted = subprocess.run(cli + ["mount", "vol", str(mnt), "--passphrase-file", str(mount.passphrase_file)],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert mounted.returncode == 0, mounted.stderr
        try:
            assert (mnt / "folder07" / "new.txt").read_text() == "after the remount\n"
            assert len(os.listdir(mnt / "folder39")) == 100 and len(os.listdir(mnt)) == 40
        finally:
            subprocess.run(cli + ["umount", str(mnt), "--no-wait"], env=env, capture_output=True, timeout=120)
    finally:
        mount.cleanup()
