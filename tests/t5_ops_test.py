"""Level 5: the day-to-day commands on real mounts against a real INN: status and flush,
verify with articles really removed from or damaged in INN's spool (and --repair), passwd
followed by mounts and restores, and GIO (what GNOME Files uses) on the mount.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from usenetfs.codec.segment import KIND_DATA, SegmentId
from usenetfs.home import Home
from usenetfs.volume import Volume

from t5_mount_test import PASSPHRASE, Mount, tree_digest
from t5_mount_test import volume  # noqa: F401 - the fixture


def segment_articles(mount: Mount, relative: str) -> list[tuple[int, Path]]:
    """(segment id, spool file) of each article holding the data of `relative` (a path in
    the volume), found the way an attacker with the key would: derived Message-IDs."""
    vol = Volume(Home.resolve(mount.home), "vol")
    keys = vol.unlock(PASSPHRASE)
    scope = bytes.fromhex(vol.load().volume_id)
    db = sqlite3.connect(f"file:{vol.index_file}?mode=ro", uri=True)
    try:
        ino = 1
        for name in relative.strip("/").split("/"):
            ino = db.execute("SELECT inode FROM dentries WHERE parent = ? AND name = ?",
                             (ino, name.encode())).fetchone()[0]
        segments = [seg for first, run in db.execute("SELECT segment, run FROM extents WHERE inode = ? "
                                                     "ORDER BY offset", (ino,))
                    for seg in range(first, first + run)]
        generation = {seg: db.execute("SELECT generation FROM segments WHERE id = ?", (seg,)).fetchone()[0]
                      for seg in segments}
    finally:
        db.close()
    wanted = {keys.message_id(SegmentId(scope, KIND_DATA, seg), generation[seg]).encode(): seg for seg in segments}
    found = {}
    for path in (mount.server.spool_dir / "articles").rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:4096]
            for message_id, seg in wanted.items():
                if b"\nMessage-ID: " + message_id in head:
                    found[seg] = path
    assert len(found) == len(segments), f"articles of {relative} not all in the spool"
    return sorted(found.items())


def damage(path: Path) -> None:
    """Change one byte of an article's yEnc data (the headers stay intact), as a bad disk
    or a forger would."""
    article = bytearray(path.read_bytes())
    data_start = article.index(b"\n", article.index(b"=ypart ")) + 1
    position = data_start + 5
    for bit in (0x01, 0x02, 0x04):
        changed = article[position] ^ bit
        if changed not in b"\r\n=.\0":
            article[position] = changed
            break
    path.write_bytes(bytes(article))


def test_status_and_flush(volume):
    server = volume.server
    server.stop()  # nothing can be posted: what status shows as pending stays pending
    data = os.urandom(2_500_000)
    (volume.mountpoint / "waiting.bin").write_bytes(data)
    status = volume.run("status", str(volume.mountpoint), "--json")
    report = json.loads(status.stdout)
    assert report["pending"]["files"] == 1 and report["pending"]["bytes"] == len(data)
    assert report["cache"]["staging_bytes"] >= len(data)
    assert report["cache"]["memory_limit"] == 256 << 20 and report["cache"]["staging_limit"] == 4 << 30
    assert report["connections"]["cap"] == 4 and report["connections"]["configured"] == 4
    assert report["mountpoint"] == str(volume.mountpoint) and report["volume"] == "vol"
    deadline = time.monotonic() + 120
    while not report["retries"].get("network"):  # the uploader tries, and the retrier counts
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
        report = json.loads(volume.run("status", str(volume.mountpoint), "--json").stdout)
    assert "retries:      network: " in volume.run("status", str(volume.mountpoint)).stdout

    # A client that gives up on a flush (Ctrl-C) while it cannot finish: the mount lives on.
    control = json.loads((volume.home / "data/volumes/vol/mount.json").read_text())["control"]
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(control)
        client.sendall(b'{"op": "flush"}\n')
        first = json.loads(client.makefile().readline())
        assert first == {"done": 0, "total": len(data)}  # flushing, and stuck: the server is down
    assert json.loads(volume.run("status", str(volume.mountpoint), "--json").stdout)["pending"]["files"] == 1
    server.start()
    flushed = volume.run("flush", str(volume.mountpoint), timeout=300)
    assert flushed.stdout == "flushed: everything of 'vol' is posted and read back\n"
    assert volume.staging_files() == []

    status = volume.run("status", "--json")  # every mounted volume of the home: a list
    (report,) = json.loads(status.stdout)
    assert report["pending"] == {"files": 0, "bytes": 0, "segments": 0}
    assert report["segments"]["verified"] == 4  # 2.5 MB in 700 KiB segments
    assert report["transfer"]["bytes_sent"] > len(data)  # posted (encrypted, yEnc)
    assert report["transfer"]["bytes_received"] > len(data)  # and read back
    assert report["transfer"]["upload_bytes_per_second"] >= 0
    assert report["health"] == [] and report["unhealthy_files"] == 0
    text = volume.run("status").stdout
    assert text.startswith(f"volume 'vol' mounted at {volume.mountpoint} (pid {volume.daemon_pid()})\n")
    for label in ("pending:", "upload:", "download:", "retries:", "connections:", "cache:", "segments:",
                  "health:       ok"):
        assert f"  {label}" in text, label
    assert (volume.mountpoint / "waiting.bin").read_bytes() == data


def test_verify_finds_damage_names_the_files_and_repairs_from_the_cache(volume):
    mnt = volume.mountpoint
    (mnt / "photos").mkdir()
    big = os.urandom(1_800_000)  # three segments
    (mnt / "photos/big.bin").write_bytes(big)
    (mnt / "notes.txt").write_text("a small file, never read back\n")
    volume.umount()
    # Read from the index while unmounted (a mount holds its locks: no second reader).
    (_, first), (lost_seg, lost), _ = segment_articles(volume, "/photos/big.bin")
    ((notes_seg, notes),) = segment_articles(volume, "/notes.txt")
    volume.mount()
    assert (mnt / "photos/big.bin").read_bytes() == big  # now in the mount's read cache
    clean = volume.run("verify", "vol")
    assert clean.stdout.startswith("checked 4 segments: 4 readable, 0 damaged")

    lost.unlink()  # gone from the server
    damage(notes)  # still there, but not what we posted

    found = volume.run("verify", "vol", check=False)
    assert found.returncode == 3, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0] == "checked 4 segments: 2 readable, 2 damaged"
    assert f"missing segment {lost_seg} (generation 0): article not found (generation 0)" in lines
    assert lines[lines.index(f"missing segment {lost_seg} (generation 0): article not found (generation 0)") + 1] \
        == "    /photos/big.bin"
    corrupt = next(line for line in lines if line.startswith(f"corrupt segment {notes_seg} "))
    assert lines[lines.index(corrupt) + 1] == "    /notes.txt"

    repaired = volume.run("verify", str(mnt), "--repair", "--json", check=False)
    assert repaired.returncode == 3  # notes.txt's data is nowhere but in the damaged article
    report = json.loads(repaired.stdout)
    by_segment = {p["segment"]: p for p in report["problems"]}
    assert by_segment[lost_seg]["repaired"] and by_segment[lost_seg]["files"] == ["/photos/big.bin"]
    assert by_segment[lost_seg]["repair"] == "posted again from the local cache as generation 1"
    assert not by_segment[notes_seg]["repaired"]
    assert by_segment[notes_seg]["repair"] == "not in the local cache: cannot be posted again"

    # Reading the damaged file fails and status names it (exit 4).
    try:
        (mnt / "notes.txt").read_text()
        raise AssertionError("a corrupt article must not read as data")
    except OSError:
        pass
    status = volume.run("status", str(mnt), check=False)
    assert status.returncode == 4 and "/notes.txt: segment" in status.stdout, status.stdout
    assert (mnt / "notes.txt").stat().st_size > 0

    # The repaired file comes back from the server alone.
    assert lost.exists() is False and first.exists()
    volume.umount()
    volume.run("cache", "clear", "vol")
    offline = volume.run("verify", "vol", "--passphrase-file", str(volume.passphrase_file), check=False)
    assert offline.returncode == 3
    assert offline.stdout.startswith("checked 4 segments: 3 readable, 1 damaged\n")
    assert f"corrupt segment {notes_seg}" in offline.stdout and "    /notes.txt" in offline.stdout
    volume.mount()
    assert (mnt / "photos/big.bin").read_bytes() == big
    (mnt / "notes.txt").unlink()  # the user gives up on it: nothing damaged is left
    assert volume.run("verify", "vol").stdout.startswith("checked 3 segments: 3 readable, 0 damaged")


def test_verify_of_a_mounted_volume_runs_in_the_mount(volume):
    """A mounted volume is verified by its mount (no passphrase needed, one index writer)."""
    (volume.mountpoint / "f.bin").write_bytes(os.urandom(100_000))
    volume.run("flush", str(volume.mountpoint))
    result = volume.run("verify", "vol", "--sample", "100", "--passphrase-file", str(volume.passphrase_file))
    assert result.stdout.startswith("checked 1 segments: 1 readable, 0 damaged")
    assert "runs in the mount" in result.stderr


def test_passwd_then_mount_and_restore(make_inn, tmp_path):
    server = make_inn()
    mount = Mount(tmp_path, server.url)
    volume_id = json.loads((mount.home / "config/volumes/vol/volume.json").read_text())["volume_id"]
    new_file = tmp_path / "new-passphrase"
    new_file.write_text("a completely different passphrase\n")
    old_file = mount.passphrase_file

    def restore(home: Path, passphrase_file: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "USENETFS_HOME": str(home)}
        return subprocess.run([sys.executable, "-m", "usenetfs.cli.main", "restore", "vol", "--volume-id",
                               volume_id, "--server", server.url, "--passphrase-file", str(passphrase_file)],
                              env=env, capture_output=True, text=True, timeout=120)

    try:
        mount.mount()
        (mount.mountpoint / "kept.txt").write_text("survives the passphrase change\n")
        mount.umount()  # backup 1, and the key posted under the old passphrase
        mount.mount()
        changed = mount.run("passwd", "vol", "--passphrase-file", str(old_file),
                            "--new-passphrase-file", str(new_file))  # while mounted: the mount is told
        assert changed.stdout.startswith("passphrase of volume 'vol' changed\n")
        (mount.mountpoint / "later.txt").write_text("written after the change\n")
        mount.umount()  # backup 2, and the key posted under the new passphrase

        # The mount that was told posted the key under the new passphrase: a lost machine
        # can be restored with it at once.
        restored = restore(tmp_path / "machine2", new_file)
        assert restored.returncode == 0, restored.stderr
        assert "from index backup 2" in restored.stdout

        refused = mount.run("mount", "vol", str(mount.mountpoint), "--passphrase-file", str(old_file), check=False)
        assert refused.returncode != 0 and refused.stderr == "usenetfs: wrong passphrase\n"
        assert not os.path.ismount(mount.mountpoint)
        mount.passphrase_file = new_file
        mount.mount()
        assert (mount.mountpoint / "kept.txt").read_text() == "survives the passphrase change\n"
        expected = tree_digest(mount.mountpoint)
        mount.umount()
    finally:
        mount.cleanup()

    other = Mount.__new__(Mount)  # the restored volume, mounted with the new passphrase
    other.home, other.mountpoint, other.passphrase_file = tmp_path / "machine2", tmp_path / "mnt2", new_file
    other.mountpoint.mkdir()
    other.server = server
    try:
        other.mount()
        assert tree_digest(other.mountpoint) == expected
        other.umount()
    finally:
        other.cleanup()
    # As passwd --help says, the old passphrase restores too: the key posted under it cannot
    # be deleted from Usenet, and it opens the newest backup (files written later included).
    old_restore = restore(tmp_path / "machine3", old_file)
    assert old_restore.returncode == 0, old_restore.stderr
    index = sqlite3.connect(tmp_path / "machine3/data/volumes/vol/index.sqlite")
    names = {name for (name,) in index.execute("SELECT name FROM dentries")}
    index.close()
    assert {b"kept.txt", b"later.txt"} <= names


def gio(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["gio", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"gio {' '.join(args)}: {result.stderr}"
    return result


def test_gio_lists_copies_shows_free_space_and_trashes(volume, tmp_path):
    mnt = volume.mountpoint
    source = tmp_path / "photo.jpg"
    source.write_bytes(os.urandom(1_200_000))
    gio("copy", str(source), str(mnt / "photo.jpg"))
    (mnt / "album").mkdir()
    gio("copy", str(source), str(mnt / "album/copy.jpg"))

    listing = gio("list", "-l", str(mnt)).stdout.splitlines()
    assert sorted(line.split("\t")[0] for line in listing) == ["album", "photo.jpg"]
    assert any(line.startswith("photo.jpg\t1200000\t(regular)") for line in listing), listing

    info = gio("info", str(mnt / "photo.jpg")).stdout
    assert "standard::size: 1200000" in info and "standard::type: 1" in info
    fs_info = gio("info", "-f", str(mnt)).stdout
    attributes = dict(line.strip().split(": ", 1) for line in fs_info.splitlines() if line.startswith("  "))
    assert int(attributes["filesystem::free"]) > 1 << 40  # statfs: a large constant without a quota
    assert int(attributes["filesystem::size"]) >= int(attributes["filesystem::free"])
    assert attributes["filesystem::remote"] == "FALSE"

    volume.umount()
    volume.run("cache", "clear", "vol")
    volume.mount()  # copying out reads from the server
    gio("copy", str(mnt / "album/copy.jpg"), str(tmp_path / "back.jpg"))
    assert (tmp_path / "back.jpg").read_bytes() == source.read_bytes()

    # Trash: GIO finds the mount's top directory (st_dev changes there), creates
    # .Trash-UID/{files,info} at mode 0700 and moves the file in by rename().
    inode = (mnt / "photo.jpg").stat().st_ino
    gio("trash", str(mnt / "photo.jpg"))
    trash = mnt / f".Trash-{os.getuid()}"
    assert not (mnt / "photo.jpg").exists()
    assert (trash / "files/photo.jpg").stat().st_ino == inode  # renamed, not copied
    assert (trash / "files/photo.jpg").read_bytes() == source.read_bytes()
    info_text = (trash / "info/photo.jpg.trashinfo").read_text()
    assert info_text.startswith("[Trash Info]\nPath=photo.jpg\nDeletionDate=")
    assert oct(trash.stat().st_mode & 0o777) == "0o700"
    gio("trash", str(mnt / "album"))  # a directory too
    assert (trash / "files/album/copy.jpg").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (trash / "info").iterdir()) == ["album.trashinfo", "photo.jpg.trashinfo"]
    volume.umount()  # the trash is ordinary files: it survives like everything else
    volume.mount()
    assert (trash / "files/photo.jpg").read_bytes() == source.read_bytes()
