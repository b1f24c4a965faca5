"""Level 5: random file operations through a real mount, checked against a model (fsx's
idea). Writes at random offsets (holes, segment boundaries, rewrites of posted data),
truncates up and down, O_APPEND writes, reads, fsync, hard links, user xattrs, renames over
open files, unlinks, files unlinked while open that go on being written and read, and
folders renamed with their (open, dirty, uploading) files inside. Every 40 steps, with every file closed, one of: uploads forced (`usenetfs
flush`), the caches dropped (umount, cache clear, mount: the bytes then come from the
server), or the daemon killed with SIGKILL mid-whatever and mounted again (every closed
file must survive). Every read is compared with the model at once, and every file in full
at each of those points and at the end.

The seeds are fixed, so a failure is reproducible: the message names the seed and the step.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

from t5_mount_test import volume  # noqa: F401  (the fixture)

SEG = 716_800  # the volume's segment size: writes and truncates cross its boundaries
MAX_SIZE = 5 * SEG
# Names are relative paths; a folder a name needs is made on the way (and folders move).
NAMES = ("a", "b", "p/c", "p/d", "q/e")
FOLDERS = ("p", "q", "r")


class Model:
    """What each name holds (names that are hard links of one file share its bytearray),
    and one open O_RDWR descriptor per name at most."""

    def __init__(self, root, rng: random.Random):
        self.root, self.rng = root, rng
        self.files: dict[str, bytearray] = {}
        self.fds: dict[str, int] = {}
        self.xattrs: dict[int, dict[str, bytes]] = {}  # id(file's bytearray) -> its user xattrs
        self.orphans: list[tuple[int, bytearray]] = []  # unlinked while open: fd, content
        self.folders: set[str] = set()
        self.log: list[str] = []

    def path(self, name: str) -> str:
        return str(self.root / name)

    def parent_made(self, name: str) -> None:
        folder = os.path.dirname(name)
        if folder and folder not in self.folders:
            self.log.append(f"mkdir {folder}")
            os.mkdir(self.path(folder))
            self.folders.add(folder)

    def fd(self, name: str) -> int:
        self.parent_made(name)
        if name not in self.fds:
            flags = os.O_RDWR | (0 if name in self.files else os.O_CREAT | os.O_EXCL)
            self.fds[name] = os.open(self.path(name), flags, 0o644)
            self.files.setdefault(name, bytearray())
        return self.fds[name]

    def close_all(self) -> None:
        for fd in [*self.fds.values(), *(fd for fd, _ in self.orphans)]:
            os.close(fd)
        self.fds.clear()
        self.orphans.clear()

    def forget_if_nameless(self, data: bytearray) -> None:
        if not any(other is data for other in self.files.values()):
            self.xattrs.pop(id(data), None)

    # ------------------------------------------------------------------ operations

    def write(self, name: str) -> None:
        data = self.files.get(name, bytearray())
        offset = self.rng.randrange(0, min(len(data) + 2 * SEG, MAX_SIZE))
        length = min(self.rng.choice((1, 17, 4096, 65_536, SEG - 1, SEG + 3, 1_200_000)), MAX_SIZE - offset)
        payload = self.rng.randbytes(length)
        self.log.append(f"write {name} at {offset} ({length} bytes)")
        assert os.pwrite(self.fd(name), payload, offset) == length
        data = self.files[name]
        if offset > len(data):
            data.extend(bytes(offset - len(data)))
        data[offset:offset + length] = payload

    def append(self, name: str) -> None:
        payload = self.rng.randbytes(self.rng.choice((1, 3000, 300_000)))
        if len(self.files.get(name, b"")) + len(payload) > MAX_SIZE:
            return
        self.parent_made(name)
        self.log.append(f"append {name} ({len(payload)} bytes)")
        fd = os.open(self.path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            assert os.write(fd, payload) == len(payload)
        finally:
            os.close(fd)
        self.files.setdefault(name, bytearray()).extend(payload)

    def truncate(self, name: str) -> None:
        size = self.rng.choice((0, self.rng.randrange(0, MAX_SIZE), SEG, 2 * SEG + 1))
        self.log.append(f"truncate {name} to {size}")
        os.ftruncate(self.fd(name), size)
        data = self.files[name]
        if size < len(data):
            del data[size:]
        else:
            data.extend(bytes(size - len(data)))

    def read(self, name: str) -> None:
        if name not in self.files:
            return
        data = self.files[name]
        offset = self.rng.randrange(0, len(data) + 2)
        length = self.rng.choice((1, 4096, SEG, 2 * SEG))
        self.log.append(f"read {name} at {offset} ({length} bytes)")
        got = os.pread(self.fd(name), length, offset)
        assert got == bytes(data[offset:offset + length]), self.where(f"read of {name} at {offset}")

    def fsync(self, name: str) -> None:
        if name in self.fds:
            self.log.append(f"fsync {name}")
            os.fsync(self.fds[name])

    def close(self, name: str) -> None:
        if name in self.fds:
            self.log.append(f"close {name}")
            os.close(self.fds.pop(name))

    def rename(self, name: str) -> None:
        """Rename `name` over another name (which may be open: its descriptor then reads
        the old file, which the model forgets, so it is closed first)."""
        if name not in self.files:
            return
        target = self.rng.choice([n for n in NAMES if n != name])
        self.parent_made(target)
        self.log.append(f"rename {name} over {target}")
        if self.files.get(target) is self.files[name]:
            os.rename(self.path(name), self.path(target))  # names of one file: nothing happens
            return
        if target in self.fds:
            os.close(self.fds.pop(target))
        os.rename(self.path(name), self.path(target))
        replaced = self.files.get(target)
        self.files[target] = self.files.pop(name)
        if replaced is not None:
            self.forget_if_nameless(replaced)
        if name in self.fds:
            self.fds[target] = self.fds.pop(name)

    def xattr(self, name: str) -> None:
        """Set, replace or remove a user xattr (shared by every name of the file)."""
        if name not in self.files:
            return
        attrs = self.xattrs.setdefault(id(self.files[name]), {})
        key = self.rng.choice(("user.one", "user.two"))
        if key in attrs and self.rng.random() < 0.3:
            self.log.append(f"removexattr {name} {key}")
            os.removexattr(self.path(name), key)
            del attrs[key]
            return
        value = self.rng.randbytes(self.rng.choice((0, 5, 300)))
        self.log.append(f"setxattr {name} {key} ({len(value)} bytes)")
        os.setxattr(self.path(name), key, value)
        attrs[key] = value

    def orphan(self, name: str) -> None:
        """Unlink `name` while a descriptor stays open on it, then go on using it."""
        if name not in self.files or sum(d is self.files[name] for d in self.files.values()) > 1:
            return
        fd = self.fd(name)
        self.log.append(f"unlink {name} while open")
        os.unlink(self.path(name))
        data = self.files.pop(name)
        self.fds.pop(name)
        self.forget_if_nameless(data)
        self.orphans.append((fd, data))

    def orphan_io(self, name: str) -> None:
        if not self.orphans:
            return
        fd, data = self.rng.choice(self.orphans)
        offset = self.rng.randrange(0, min(len(data) + SEG, MAX_SIZE))
        if self.rng.random() < 0.5:
            payload = self.rng.randbytes(min(self.rng.choice((10, 100_000, SEG + 1)), MAX_SIZE - offset))
            self.log.append(f"write orphan at {offset} ({len(payload)} bytes)")
            assert os.pwrite(fd, payload, offset) == len(payload)
            if offset > len(data):
                data.extend(bytes(offset - len(data)))
            data[offset:offset + len(payload)] = payload
        else:
            self.log.append(f"read orphan at {offset}")
            got = os.pread(fd, SEG, offset)
            assert got == bytes(data[offset:offset + SEG]), self.where("a read of an orphan")

    def move_folder(self, name: str) -> None:
        """Rename a folder, with whatever is in it (open descriptors stay valid), to a free
        folder name."""
        free = [f for f in FOLDERS if f not in self.folders]
        if not self.folders or not free:
            return
        source, target = self.rng.choice(sorted(self.folders)), self.rng.choice(free)
        self.log.append(f"rename folder {source} to {target}")
        os.rename(self.path(source), self.path(target))
        self.folders.remove(source)
        self.folders.add(target)
        moved = lambda n: target + n[len(source):] if n.startswith(source + "/") else n  # noqa: E731
        self.files = {moved(n): data for n, data in self.files.items()}
        self.fds = {moved(n): fd for n, fd in self.fds.items()}

    def link(self, name: str) -> None:
        """A hard link of `name` under a name not in use."""
        free = [n for n in NAMES if n not in self.files]
        if name not in self.files or not free:
            return
        target = self.rng.choice(free)
        self.parent_made(target)
        self.log.append(f"link {name} as {target}")
        os.link(self.path(name), self.path(target))
        self.files[target] = self.files[name]

    def unlink(self, name: str) -> None:
        if name not in self.files:
            return
        self.log.append(f"unlink {name}")
        if name in self.fds:
            os.close(self.fds.pop(name))
        os.unlink(self.path(name))
        self.forget_if_nameless(self.files.pop(name))

    # ------------------------------------------------------------------ checks

    def where(self, what: str) -> str:
        return f"{what} differs from the model after: " + "; ".join(self.log[-8:])

    def check_all(self) -> None:
        found_files, found_folders = set(), set()
        for folder, dirs, files in os.walk(self.root):
            rel = os.path.relpath(folder, self.root)
            found_folders.update(os.path.normpath(os.path.join(rel, d)) for d in dirs)
            found_files.update(os.path.normpath(os.path.join(rel, f)) for f in files)
        assert found_folders == self.folders, self.where("the folders")
        assert found_files == set(self.files), self.where("the listing")
        for name, data in self.files.items():
            st = os.stat(self.path(name))
            assert st.st_size == len(data), self.where(f"the size of {name}")
            links = sum(other is data for other in self.files.values())
            assert st.st_nlink == links, self.where(f"the link count of {name}")
            attrs = {key: os.getxattr(self.path(name), key) for key in os.listxattr(self.path(name))}
            assert attrs == self.xattrs.get(id(data), {}), self.where(f"the xattrs of {name}")
            with open(self.path(name), "rb") as f:
                assert f.read() == bytes(data), self.where(f"the content of {name}")


OPERATIONS = {"write": 30, "append": 6, "truncate": 8, "read": 25, "fsync": 4, "close": 8, "rename": 4,
              "link": 2, "unlink": 2, "xattr": 4, "orphan": 1, "orphan_io": 4, "move_folder": 2}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_match_the_model_across_uploads_crashes_and_remounts(volume, seed):  # noqa: F811
    root = volume.mountpoint / "fsx"
    root.mkdir()
    model = Model(root, random.Random(seed))
    try:
        run(model, volume, seed)
    finally:  # a failure leaves no descriptor open for the fixture's unmount and fsck
        for fd in [*model.fds.values(), *(fd for fd, _ in model.orphans)]:
            try:
                os.close(fd)
            except OSError:
                pass


def run(model: Model, volume, seed: int) -> None:  # noqa: F811
    rng = model.rng
    kinds, weights = zip(*OPERATIONS.items())
    checkpoints = []
    for step in range(240):
        kind = rng.choices(kinds, weights)[0]
        name = rng.choice(sorted(set(NAMES) | set(model.files)))
        try:
            getattr(model, kind)(name)
        except OSError as e:
            raise AssertionError(f"seed {seed}, step {step}: {kind} {name}: {errno.errorcode.get(e.errno)} "
                                 + model.where("the filesystem")) from e
        if step % 40 == 39:
            model.close_all()
            model.check_all()
            checkpoint = ("flush", "cold", "crash")[len(checkpoints) % 3]
            model.log.append(checkpoint)
            if checkpoint == "flush":  # everything posted and read back
                volume.run("flush", str(volume.mountpoint), timeout=300)
            elif checkpoint == "cold":  # the bytes now come from the server
                volume.cold_mount()
            else:  # killed in whatever it was doing (uploads in flight): closed files survive
                volume.crash_and_mount()
            checkpoints.append(checkpoint)
            model.check_all()
    model.close_all()
    model.check_all()
    assert checkpoints == ["flush", "cold", "crash"] * 2
    volume.cold_mount()  # and once more from the server alone
    model.check_all()
