"""Level 5: `usenetfs sync` on real mounts against a real INN, run as a user runs it.

A tree goes into a mounted volume by `usenetfs sync` (the sync runs inside the mount
daemon) and must look in the mount exactly as if it had been copied in, at once, even
where the kernel had cached the old entries; a second sync copies only what changed
(asserted on the counts sync reports); a sync killed midway (kill -9 of the command, or
of the mount daemon) is finished by the next one; after an unmount, a cache clear and a
remount, every byte comes from the server. And the same on an unmounted volume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from t5_mount_test import Mount, make_tree, tree_digest
from t5_mount_test import volume  # noqa: F401 - the fixture
from usenetfs.home import Home
from usenetfs.mountd import control_request
from usenetfs.volume import Volume


def sync(mount: Mount, *args: str, check: bool = True) -> dict:
    result = mount.run("sync", *args, "--json", check=check, timeout=600)
    return json.loads(result.stdout) if result.returncode == 0 or result.stdout.startswith("{") else {}


def inode_count(mount: Mount) -> int:
    """Files and folders in the mounted volume, counted through the mount (the daemon holds
    the index file's locks while mounted: no second reader can open it)."""
    return 1 + sum(len(dirs) + len(files) for _, dirs, files in os.walk(mount.mountpoint))


def many_files(root: Path, dirs: int = 30, per_dir: int = 100) -> None:
    for d in range(dirs):
        (root / f"dir{d:02d}").mkdir(parents=True)
        for f in range(per_dir):
            (root / f"dir{d:02d}" / f"f{f:03d}").write_bytes(os.urandom(200 + 37 * f))
    (root / "big.bin").write_bytes(os.urandom(2_500_000))


def test_sync_into_a_mount_looks_as_if_copied_in_and_resyncs_only_changes(volume, tmp_path):
    mnt = volume.mountpoint
    source = tmp_path / "source"
    make_tree(source)
    (source / "empty-dir").mkdir()
    (source / "sub/deeper/deepest").mkdir()
    (source / "sub/deeper/deepest/leaf.txt").write_text("at the bottom\n")
    # The kernel caches an old version of the destination: entries, attributes, a
    # negative entry, page cache.
    (mnt / "backup").mkdir()
    (mnt / "backup/small.txt").write_text("a stale version\n")
    (mnt / "backup/text.log").write_text("also stale\n")
    assert (mnt / "backup/small.txt").read_text() == "a stale version\n"
    assert not (mnt / "backup/empty").exists()
    os.listdir(mnt / "backup")

    first = sync(volume, str(source), str(mnt / "backup"))
    # 46 files: hardlink.txt comes first (new), small.txt replaces the stale one as its
    # hard link, text.log replaces the other stale one.
    assert first["errors"] == 0 and (first["new_files"], first["changed_files"], first["hard_links"]) == (45, 1, 1)
    assert first["symlinks"] == 2 and first["others"] == 0  # make_tree has no FIFO
    expected = tree_digest(source)
    assert tree_digest(mnt / "backup") == expected  # at once: no stale entry, page or attribute
    assert (mnt / "backup/small.txt").read_text() == "hello usenet\n"

    again = sync(volume, str(source), "vol:/backup")
    assert (again["new_files"], again["changed_files"], again["attributes"], again["batches"]) == (0, 0, 0, 0)

    # Change a few files (their old versions in the kernel's caches), and sync again.
    (mnt / "backup/sub/note3.txt").read_text()
    (source / "sub/note3.txt").write_text("rewritten\n")
    os.chmod(source / "sub/note4.txt", 0o600)
    (source / "sub/new-file.txt").write_text("new\n")
    assert not (mnt / "backup/sub/new-file.txt").exists()
    changed = sync(volume, str(source), str(mnt / "backup"))
    assert (changed["new_files"], changed["changed_files"], changed["attributes"]) == (1, 1, 1)
    assert changed["copied_files"] == 2
    assert (mnt / "backup/sub/note3.txt").read_text() == "rewritten\n"
    assert tree_digest(mnt / "backup") == tree_digest(source)

    volume.run("flush", str(mnt), timeout=300)
    volume.umount()
    assert volume.staging_files() == []
    volume.run("cache", "clear", "vol")
    volume.mount()
    assert tree_digest(mnt / "backup") == tree_digest(source)  # every byte from the server


def test_kill_9_of_the_sync_or_of_the_daemon_midway_then_sync_again(volume, tmp_path):
    mnt = volume.mountpoint
    source = tmp_path / "source"
    many_files(source)
    total = 30 * 100 + 1
    env = {**os.environ, "USENETFS_HOME": str(volume.home)}

    def start_sync(dest: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "usenetfs.cli.main", "sync", "--batch-files", "40",
                                 str(source), dest], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def wait_for_some(before: int, process: subprocess.Popen) -> int:
        deadline = time.monotonic() + 120
        while inode_count(volume) < before + 300:
            assert process.poll() is None, "the sync ended before it could be killed"
            assert time.monotonic() < deadline, "the sync made no progress" + volume.log_tail()
            time.sleep(0.02)
        return inode_count(volume)

    # 1. kill -9 of `usenetfs sync`: the daemon notices the client is gone and stops it.
    base = inode_count(volume)
    process = start_sync(str(mnt / "one"))
    wait_for_some(base, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = sync(volume, str(source), str(mnt / "one"))  # waits for the stopped one to finish
    assert resumed["errors"] == 0
    assert 0 < resumed["new_files"] < total  # it did what was left, not everything
    assert tree_digest(mnt / "one") == tree_digest(source)

    # 2. kill -9 of the mount daemon midway.
    base = inode_count(volume)
    process = start_sync(str(mnt / "two"))
    wait_for_some(base, process)
    os.kill(volume.daemon_pid(), signal.SIGKILL)
    process.wait(60)
    assert process.returncode != 0
    subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
    volume.mount()  # recovers: adopts the committed copies, drops the uncommitted ones
    resumed = sync(volume, str(source), str(mnt / "two"))
    assert resumed["errors"] == 0 and 0 < resumed["new_files"] < total
    assert tree_digest(mnt / "two") == tree_digest(source)

    volume.umount()
    assert volume.staging_files() == []
    volume.run("cache", "clear", "vol")
    volume.mount()
    assert tree_digest(mnt / "one") == tree_digest(mnt / "two") == tree_digest(source)


def test_dry_run_and_one_line_errors_on_a_mount(volume, tmp_path):
    mnt = volume.mountpoint
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    (source / "d/a.txt").write_text("a\n")
    (mnt / "afile").write_text("a file, not a directory\n")

    listed = volume.run("sync", "-n", str(source), str(mnt / "tree"))
    assert listed.stdout.splitlines()[:3] == ["new dir       .", "new dir       d", "new file      d/a.txt"]
    assert "dry run: nothing was changed" in listed.stdout
    assert not (mnt / "tree").exists()

    for args, message in [
        ((str(tmp_path / "missing"), str(mnt / "x")), f"usenetfs: source {tmp_path / 'missing'} does not exist"),
        ((str(source / "d/a.txt"), str(mnt / "x")), f"usenetfs: source {source / 'd/a.txt'} is not a directory"),
        ((str(source), str(mnt / "afile/below")), "usenetfs: destination /afile is not a directory in the volume"),
        ((str(source), "nosuch:/x"), "usenetfs: no volume named 'nosuch' (create it with 'usenetfs init')"),
        ((str(mnt), "vol:/x"), f"usenetfs: source {mnt} is inside the mount of volume 'vol' itself"),
    ]:
        result = volume.run("sync", *args, check=False)
        assert (result.returncode, result.stderr.strip()) == (1, message), result.stderr


def test_sync_into_an_unmounted_volume_posts_everything_first(volume, tmp_path):
    mnt = volume.mountpoint
    source = tmp_path / "source"
    make_tree(source)
    volume.umount()
    result = volume.run("sync", str(source), "vol:/offline", "--passphrase-file", str(volume.passphrase_file),
                        timeout=300)
    assert "everything is posted and read back" in result.stdout
    assert volume.staging_files() == []
    assert volume.run("sync", str(source), "vol:/offline", "--passphrase-file", str(volume.passphrase_file),
                      "--json").stdout.count('"new_files": 0') == 1
    volume.run("cache", "clear", "vol")
    volume.mount()
    assert tree_digest(mnt / "offline") == tree_digest(source)
    # The sync backed the index up and handed that backup on, as an unmount does: the mount
    # knows its index is exactly that backup, and has nothing to back up.
    settled = trio.run(control_request, Volume(Home.resolve(volume.home), "vol"), "backup")
    assert settled.get("unchanged") is True, settled
    # While mounted, no other process may take the volume.
    taken = volume.run("sync", str(source), "vol:/x", "--passphrase-file", str(volume.passphrase_file),
                       check=False)
    assert taken.returncode == 0  # it runs in the mount instead
