"""Level 5: shares with real mounts, two homes standing for two machines. The owner mounts a
volume read-write and publishes a folder of it; a subscriber with an empty home mounts the
capability (`usenetfs mount CAPFILE DIR`, `mount.usenetfs CAPFILE DIR`), reads byte-exact
files from the server, cannot write, and sees the owner's changes after `share refresh`.
Recipients are granted and revoked; passwords and expiry are refused with one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from t5_mount_test import Mount, make_tree, tree_digest


class Subscriber:
    """Another machine: its own empty home, nothing but a capability and the server."""

    def __init__(self, root: Path):
        self.home = root / "home"
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir(parents=True)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "USENETFS_HOME": str(self.home)}
        result = subprocess.run([sys.executable, "-m", "usenetfs.cli.main", *args], env=env, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"usenetfs {' '.join(args)} failed ({result.returncode}): {result.stderr}"
                                 f"{self.log_tail()}")
        return result

    def mount(self, cap: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        result = self.run("mount", str(cap), str(self.mountpoint), *extra, check=check)
        if check:
            assert os.path.ismount(self.mountpoint)
        return result

    def umount(self) -> None:
        self.run("umount", str(self.mountpoint))
        assert not os.path.ismount(self.mountpoint)

    def log_tail(self) -> str:
        logs = list((self.home / "data/subscriptions").glob("*/mount.log")) if self.home.exists() else []
        return "".join("\n--- mount.log ---\n" + "\n".join(p.read_text().splitlines()[-30:]) for p in logs)

    def cleanup(self) -> None:
        if os.path.ismount(self.mountpoint):
            self.run("umount", str(self.mountpoint), check=False)
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)


@pytest.fixture
def owner(make_inn, tmp_path):
    server = make_inn()
    mount = Mount(tmp_path / "owner", server.url)
    mount.server = server
    mount.mount()
    yield mount
    mount.cleanup()


@pytest.fixture
def subscribers(tmp_path):
    made: list[Subscriber] = []

    def make(name: str) -> Subscriber:
        made.append(Subscriber(tmp_path / name))
        return made[-1]

    yield make
    for sub in made:
        sub.cleanup()


def one_error_line(result: subprocess.CompletedProcess, code: int, start: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"usenetfs: {start}"), lines[0]
    return lines[0]


def test_a_share_mounted_elsewhere_is_byte_exact_read_only_and_refreshes(owner, subscribers, tmp_path):
    # Built outside and copied in with cp -a, so every time is set explicitly: a file
    # written in place gets its mtime from the owner's kernel (writeback cache) and from the
    # daemon a moment apart, and the owner's kernel may show its own for a while.
    source = tmp_path / "source"
    make_tree(source)
    folder = owner.mountpoint / "photos"
    subprocess.run(["cp", "-a", str(source), str(folder)], check=True)
    (owner.mountpoint / "private.txt").write_text("not shared\n")
    cap = tmp_path / "photos.cap"
    published = owner.run("share", "publish", str(folder), "--out", str(cap))
    assert "published share 'photos': root 1 of epoch 1" in published.stderr

    reader = subscribers("reader")
    reader.mount(cap)
    expected = tree_digest(folder)
    assert tree_digest(reader.mountpoint) == expected  # bytes, sizes, modes, times, xattrs, links
    assert not (reader.mountpoint / "private.txt").exists()
    assert os.statvfs(reader.mountpoint).f_flag & os.ST_RDONLY
    for attempt in (lambda: (reader.mountpoint / "new.txt").write_text("x"),
                    lambda: (reader.mountpoint / "small.txt").write_text("changed"),
                    lambda: (reader.mountpoint / "newdir").mkdir(),
                    lambda: (reader.mountpoint / "small.txt").unlink(),
                    lambda: os.setxattr(reader.mountpoint / "small.txt", "user.x", b"y"),
                    lambda: os.chmod(reader.mountpoint / "small.txt", 0o777)):
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS
    assert tree_digest(reader.mountpoint) == expected

    # The owner changes things; the reader keeps a file open that goes away.
    held = open(reader.mountpoint / "sub/note5.txt", "rb")
    (folder / "small.txt").write_text("hello again, usenet\n")  # its hard link follows
    (folder / "added.bin").write_bytes(os.urandom(900_000))
    (folder / "sub/note5.txt").unlink()
    os.rename(folder / "sub/deeper", folder / "deeper-moved")
    os.setxattr(folder / "text.log", "user.new", b"attr")
    for changed in (folder / "small.txt", folder / "added.bin"):
        os.utime(changed, ns=(1_700_000_000_123_456_789,) * 2)
    republished = owner.run("share", "publish", str(folder))
    assert republished.stdout.strip() == cap.read_text().splitlines()[-1]  # the same capability
    assert "root 2 of epoch 1" in republished.stderr and "2 folders changed" in republished.stderr  # photos, sub (deeper only moved)

    assert tree_digest(reader.mountpoint) == expected  # nothing changes by itself ...
    refreshed = reader.run("share", "refresh", str(reader.mountpoint))
    assert refreshed.stdout.startswith("refreshed to root 2 of epoch 1:")
    assert tree_digest(reader.mountpoint) == tree_digest(folder)  # ... until a refresh
    assert held.read() == b"small file 5\n" * 6  # still readable while open
    held.close()
    again = reader.run("share", "refresh", str(reader.mountpoint))
    assert again.stdout == "up to date (root 2 of epoch 1)\n"

    # A remount through mount.usenetfs (as mount(8) and fstab run it) gets the same tree, and
    # with poll= it looks for new publishes by itself.
    reader.umount()
    helper = subprocess.run([sys.executable, "-m", "usenetfs.cli.mount_helper", str(cap), str(reader.mountpoint),
                             "-o", f"home={reader.home},poll=1,disk_cache=16M"], capture_output=True, text=True,
                            timeout=120)
    assert (helper.returncode, helper.stderr) == (0, ""), helper.stderr + reader.log_tail()
    assert tree_digest(reader.mountpoint) == tree_digest(folder)
    # disk_cache: the share's segments read just now are kept in its cache directory too.
    deadline = time.monotonic() + 10
    while not list(reader.home.glob("cache/subscriptions/*/segments/*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(reader.home.glob("cache/subscriptions/*/segments/[0-9]*")), reader.log_tail()
    (folder / "polled.txt").write_text("seen without a refresh\n")
    os.utime(folder / "polled.txt", ns=(1_700_000_000_000_000_000,) * 2)
    owner.run("share", "publish", str(folder))
    deadline = time.monotonic() + 60
    while not (reader.mountpoint / "polled.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (reader.mountpoint / "polled.txt").read_text() == "seen without a refresh\n", reader.log_tail()
    assert tree_digest(reader.mountpoint) == tree_digest(folder)
    listed = json.loads(reader.run("share", "list", "--json").stdout)
    assert listed["subscriptions"][0]["share"] == "photos"
    assert os.path.realpath(listed["subscriptions"][0]["mountpoint"]) == str(reader.mountpoint)
    reader.umount()


def test_recipients_and_revocation(owner, subscribers, tmp_path):
    from usenetfs.keys import VolumeKeys
    from usenetfs.nntp.client import NNTPClient
    from usenetfs.nntp.config import ServerConfig
    from usenetfs.share.articles import newest_number

    folder = owner.mountpoint / "team"
    folder.mkdir()
    (folder / "plan.txt").write_text("the plan\n")
    alice, bob = subscribers("alice"), subscribers("bob")
    keys = {}
    for sub in (alice, bob):
        keys[sub] = sub.run("id", "create", str(sub.home.parent / "me.id")).stdout.strip()
    cap = tmp_path / "team.cap"
    owner.run("share", "grant", str(folder), keys[alice], "--out", str(cap))
    owner.run("share", "grant", str(folder), keys[bob])

    for sub in (alice, bob):
        sub.mount(cap, "--identity", str(sub.home.parent / "me.id"))
        assert (sub.mountpoint / "plan.txt").read_text() == "the plan\n"
    stranger = subscribers("stranger")
    stranger.run("id", "create", str(stranger.home.parent / "me.id"))
    one_error_line(stranger.mount(cap, check=False), 32, "this share is for named recipients: give --identity")
    one_error_line(stranger.mount(cap, "--identity", str(stranger.home.parent / "me.id"), check=False), 32,
                   "this identity is not a recipient of this share")

    share_file = owner.home / "config/volumes/vol/shares/team/share.json"
    old = json.loads(share_file.read_text())
    revoked = owner.run("share", "revoke", "team", keys[bob])
    assert "re-keyed (epoch 2)" in revoked.stderr
    (folder / "after.txt").write_text("written after the revoke\n")
    owner.run("share", "publish", str(folder))

    alice.run("share", "refresh", str(alice.mountpoint))
    assert (alice.mountpoint / "after.txt").read_text() == "written after the revoke\n"
    one_error_line(bob.run("share", "refresh", str(bob.mountpoint), check=False), 1,
                   "this identity is not a recipient of this share (never granted, or its access was revoked)")
    assert sorted(os.listdir(bob.mountpoint)) == ["plan.txt"]  # what bob had, and nothing new
    assert (bob.mountpoint / "plan.txt").read_text() == "the plan\n"
    late = subscribers("bob-again")
    one_error_line(late.mount(cap, "--identity", str(bob.home.parent / "me.id"), check=False), 32,
                   "this identity is not a recipient of this share")

    # With the old epoch key (all a revoked recipient's client ever held), nothing newer
    # than the last root before the revoke can be found.
    async def newest_under_old_key() -> int:
        config = ServerConfig(owner.server.host, owner.server.port)
        async with NNTPClient(config) as client:
            import base64
            return await newest_number(client, VolumeKeys(base64.b64decode(old["epoch_key"])),
                                       bytes.fromhex(old["share_id"]))
    assert trio.run(newest_under_old_key) == old["seq"]

    events = [line.split()[2] for line in owner.run("share", "log", "team").stdout.splitlines()]
    # the second grant only posted a keyring; the revoke published everything under a new key
    assert events == ["create", "publish", "grant", "grant", "revoke", "publish", "publish"]
    alice.umount()
    bob.umount()


def test_passwords_and_expiry(owner, subscribers, tmp_path):
    folder = owner.mountpoint / "secret"
    folder.mkdir()
    (folder / "codes.txt").write_text("swordfish\n")
    (tmp_path / "password").write_text("open sesame\n")
    (tmp_path / "wrong").write_text("open barley\n")
    cap = tmp_path / "secret.cap"
    owner.run("share", "publish", str(folder), "--password-file", str(tmp_path / "password"), "--out", str(cap))

    reader = subscribers("reader")
    one_error_line(reader.mount(cap, check=False), 32, "this share is password-protected: give --password-file")
    one_error_line(reader.mount(cap, "--password-file", str(tmp_path / "wrong"), check=False), 32,
                   "wrong password for this share")
    assert not os.path.ismount(reader.mountpoint)
    reader.mount(cap, "--password-file", str(tmp_path / "password"))
    assert (reader.mountpoint / "codes.txt").read_text() == "swordfish\n"
    reader.umount()

    owner.run("share", "publish", str(folder), "--expires", "+3s")
    info = json.loads(owner.run("share", "info", "secret", "--json").stdout)
    while time.time() < info["expires"] + 0.5:
        time.sleep(0.5)
    line = one_error_line(reader.mount(cap, "--password-file", str(tmp_path / "password"), check=False), 32,
                          "share 'secret' expired on ")
    assert "this client will not mount it" in line
    one_error_line(owner.run("share", "publish", str(folder), check=False), 1, "share 'secret' expired on ")
    assert owner.run("share", "log", "secret").stdout.splitlines()[-1].split()[2] == "expired"
    owner.run("share", "publish", str(folder), "--expires", "+1d")  # extended: readable again
    reader.mount(cap, "--password-file", str(tmp_path / "password"))
    assert (reader.mountpoint / "codes.txt").read_text() == "swordfish\n"
    reader.umount()
