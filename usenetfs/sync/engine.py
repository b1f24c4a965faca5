"""`Sync`: one run of `usenetfs sync`, from a local directory into a volume directory.

Owns the walk and the batches:
- The walk. Directories are listed in worker threads (source.Scanner) as the sync
  reaches them; each listing is compared on the trio thread with the volume's entries of
  the same directory (one readdir pass plus one query each for symlink targets and
  extended attributes: index/listing.py), name by name (compare.py).
- Batches. The changes are collected into a batch (up to `batch_files` files to copy,
  `batch_bytes` bytes or `batch_entries` changes of any kind), which is then applied:
  the files to copy are copied into staging files of no inode yet, a few threads at
  once, waiting for staging space like any writer (FileData.stage_copies), made durable
  with one syncfs; then ONE index transaction creates every directory, inode, symlink and
  hard link of the batch, renames each copy to its inode's staging path and fsyncs the
  staging directory; after the commit the copies join the dirty set, released, and the
  ordinary uploader packs them per directory and posts them, exactly as files closed
  through FUSE. The batch also ends early when a listing needs a directory the batch
  would create (its inode number is known only once it is applied).
- A changed file gets a new inode (copied under a temporary name and renamed over the
  old one in the same transaction), like rsync without --inplace: a reader holding the
  old file open keeps reading the old content; the old inode goes once nothing holds it.
- Directory attributes (mode, owner, times) are set at the end, when nothing more is
  created inside them.
- Between listing a directory and applying its batch, a user of the mount may change the
  same names: every change re-checks, inside the transaction, that the name still holds
  the inode it was compared with, and skips the name otherwise (reported; a second sync
  takes care of it).

Interrupted anywhere (Ctrl-C, kill -9 of the sync or of the mount daemon), the volume is
consistent: a batch is committed or not at all; its staged copies before the commit are
`.tmp` files or staging files of inodes that do not exist, both removed by the data
layer's recovery at the next start; after it they are ordinary dirty files. Running the
sync again compares the tree anew and does the rest.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..data import DataUnavailable
from ..data.copyin import CHUNK, file_digest
from ..errors import UserError
from ..index import ROOT_INODE, Index, IndexError_, InodeRow, NotFound, listing
from . import compare as C
from .source import Listing, Scanner, SourceEntry, stat_entry
from .target import Changes

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 20
_STAGING_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
TEMP_PREFIX = b".usenetfs-sync."


@dataclass
class SyncOptions:
    checksum: bool = False  # compare contents by SHA-256 (size and mtime otherwise)
    delete: bool = False  # delete what is not in the source
    dry_run: bool = False  # change nothing; report what would change
    batch_files: int = 2000  # files copied per batch (transaction)
    batch_bytes: int = 256 << 20  # bytes copied per batch
    batch_entries: int = 5000  # changes of any kind per batch
    scan_threads: int = 4
    copy_threads: int = 4
    copy_group_files: int = 64  # small files copied per thread hop
    copy_group_bytes: int = 16 << 20
    # Source directories not to enter (absolute paths): the volume's own mountpoint, when
    # it lies inside the source.
    exclude: tuple[bytes, ...] = ()


@dataclass
class SyncStats:
    scanned: int = 0  # source entries looked at
    files_found: int = 0  # regular files in the source
    new_files: int = 0
    changed_files: int = 0  # content copied again
    copied_files: int = 0  # files copied into staging (or that would be, in a dry run)
    copied_bytes: int = 0
    to_copy_files: int = 0  # files found so far that need copying
    to_copy_bytes: int = 0
    new_dirs: int = 0
    symlinks: int = 0  # created or changed
    hard_links: int = 0
    others: int = 0  # FIFOs created
    attributes: int = 0  # entries whose attributes alone were updated
    deleted: int = 0  # entries removed (with everything inside removed directories)
    unchanged: int = 0
    checksummed: int = 0  # files whose contents were hashed on both sides
    read_back: int = 0  # of those, volume files read back (no valid recorded digest)
    skipped: int = 0  # special files (devices, sockets) the volume does not store
    vanished: int = 0  # source files gone between the listing and the copy
    unstable: int = 0  # source files that kept changing while being copied
    errors: int = 0
    error_lines: list[str] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0
    # Where the time went (seconds, summed over batches): copying into staging, making
    # the copies durable, the index transactions, after-commit work (kernel caches).
    copy_seconds: float = 0.0
    durable_seconds: float = 0.0
    commit_seconds: float = 0.0
    after_seconds: float = 0.0
    scan_done: bool = False

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


class DestDir:
    """A directory of the volume the sync works in."""

    __slots__ = ("ino", "rel", "src", "new", "failed")

    def __init__(self, ino: int | None, rel: bytes, src: SourceEntry | None, new: bool) -> None:
        self.ino = ino  # None until the batch creating it is applied
        self.rel = rel  # path from the sync's destination, for reports
        self.src = src  # the source directory it mirrors (None: a parent made for DEST)
        self.new = new  # created by this sync: nothing in it to compare with
        self.failed = False  # could not be created: nothing below it is synced


class Action:
    """One change of a batch, applied inside its transaction (see Sync._apply_action)."""

    __slots__ = ("kind", "parent", "name", "src", "old", "decision", "child", "copy", "link_to", "ino",
                 "failed", "digest")

    def __init__(self, kind: str, parent: DestDir, name: bytes, src: SourceEntry | None,
                 old: InodeRow | None = None, decision: C.Decision | None = None) -> None:
        self.kind = kind  # mkdir, file, link, symlink, fifo, retarget, attrs, delete, digest
        self.parent = parent
        self.name = name
        self.src = src
        self.old = old  # the volume's inode the name held when compared (None: absent)
        self.decision = decision
        self.child: DestDir | None = None  # mkdir: the directory it makes
        self.copy = None  # file: its StagedCopy
        self.link_to: Action | int | None = None  # link: the file action or inode it names
        self.ino: int | None = None  # file: the inode made, once applied
        self.failed: str | None = None
        self.digest: bytes | None = None  # file content's SHA-256 to record (--checksum)

    def rel(self) -> bytes:
        return self.parent.rel + b"/" + self.name if self.parent.rel else self.name


class Sync:
    """sync = Sync(index, data, target, source, dest_path, options); stats = await sync.run().

    `target` is a target.OfflineTarget or MountedTarget; `progress(stats)` is called after
    every batch and every listing; `on_item(line)` gets one line per change (for
    --dry-run and --itemize)."""

    def __init__(self, index: Index, data, target, source: str | os.PathLike, dest_path: str,
                 options: SyncOptions | None = None, *, progress: Callable[[SyncStats], None] | None = None,
                 on_item: Callable[[str], None] | None = None, uid: int | None = None,
                 gid: int | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        self.index = index
        self.data = data
        self.target = target
        self.source = os.fsencode(os.path.abspath(source))
        self.dest_path = dest_path
        self.options = options or SyncOptions()
        uid = os.getuid() if uid is None else uid
        gid = os.getgid() if gid is None else gid
        self.owner = C.Owner(uid == 0, uid, gid)
        self.progress = progress
        self.on_item = on_item
        self.clock = clock
        self.stats = SyncStats()
        self._actions: list[Action] = []
        self._batch_files = 0
        self._batch_bytes = 0
        self._links: dict[tuple[int, int], Action | int] = {}  # source (dev, ino) -> its file in the volume
        self._dirs: list[DestDir] = []  # every directory synced, for the attributes at the end
        self._temp_seq = 0

    # ------------------------------------------------------------------ the run

    async def run(self) -> SyncStats:
        started = time.monotonic()
        root_src = await trio.to_thread.run_sync(self._source_root)
        root = self._dest_root(root_src)
        try:
            async with trio.open_nursery() as nursery:
                scanner = Scanner(nursery, workers=self.options.scan_threads)
                if not root.failed:
                    scanner.add(root, self.source)
                while scanner.pending:
                    job, found = await scanner.next()
                    await self._sync_dir(job, found, scanner)
                    self._report()
                self.stats.scan_done = True
                scanner.close()
                await self._flush()
                nursery.cancel_scope.cancel()
            await self._finish_dirs()
        finally:
            self.stats.seconds = time.monotonic() - started
            self._report()
        return self.stats

    def _source_root(self) -> SourceEntry:
        try:
            entry = stat_entry(self.source)
        except FileNotFoundError:
            raise UserError(f"source {_shown(self.source)} does not exist") from None
        except OSError as e:
            raise UserError(f"cannot read the source {_shown(self.source)}: {e.strerror}") from None
        if entry.kind != stat.S_IFDIR:
            raise UserError(f"source {_shown(self.source)} is not a directory")
        if not os.access(self.source, os.R_OK | os.X_OK):
            raise UserError(f"cannot read the source {_shown(self.source)}: permission denied")
        return entry

    def _dest_root(self, root_src: SourceEntry) -> DestDir:
        """The destination directory, made (with missing parents, like mkdir -p) by the
        first batch if it does not exist."""
        parts = [p for p in self.dest_path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UserError(f"destination {self.dest_path!r}: '..' is not allowed in a volume path")
        node = DestDir(ROOT_INODE, b"", None, False)
        for i, part in enumerate(parts):
            name = os.fsencode(part)
            if len(name) > 255:
                raise UserError(f"destination {self.dest_path!r}: name too long")
            last = i == len(parts) - 1
            row = None if node.ino is None else self.index.lookup_entry(node.ino, name)
            if row is not None:
                if not row.is_dir:
                    so_far = "/" + "/".join(parts[: i + 1])
                    raise UserError(f"destination {so_far} is not a directory in the volume")
                node = DestDir(row.id, b"", None, False)
                continue
            child = DestDir(None, b"", root_src if last else None, True)
            action = Action("mkdir", node, name, root_src if last else None)
            action.child = child
            self._add(action, item=None)
            node = child
        node.src = root_src
        self._dirs.append(node)
        if node.new:
            self.stats.new_dirs += 1
            self._item("new dir", b"")
        return node

    # ------------------------------------------------------------------ one directory

    async def _sync_dir(self, dest: DestDir, found: Listing, scanner: Scanner) -> None:
        stats = self.stats
        for problem in found.problems:
            self._error(problem)
        if found.error is not None:
            self._error(found.error)
        if dest.ino is None and dest.new and not self.options.dry_run:
            await self._flush()  # the batch that makes this directory
            if dest.ino is None:
                dest.failed = True
        if dest.failed:
            return
        existing = {} if dest.ino is None else self._dest_entries(dest.ino)
        checks: list[tuple[SourceEntry, C.DestEntry]] = []
        subdirs: list[tuple[DestDir, bytes]] = []
        exclude = self.options.exclude
        for src in found.entries:
            kind = src.kind
            if exclude and kind == stat.S_IFDIR and found.path + b"/" + src.name in exclude:
                existing.pop(src.name, None)
                continue
            stats.scanned += 1
            old = existing.pop(src.name, None)
            if kind == stat.S_IFREG:
                stats.files_found += 1
            if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO):
                stats.skipped += 1
                self._error(f"{_shown(found.path)}/{_shown(src.name)}: skipped (devices and sockets "
                            "are not stored)", counted=False)
                continue
            decision = C.decide(src, old, self.owner, checksum=self.options.checksum)
            if decision.kind == C.CHECK:
                checks.append((src, old))
                continue
            child = self._apply_decision(dest, src, old, decision)
            if child is not None:
                subdirs.append((child, found.path + b"/" + src.name))
            if self._full():
                await self._flush()
        for src, old in checks:
            equal, digest, record = await self._contents_equal(found.path + b"/" + src.name, old)
            decision = C.after_checksum(src, old, self.owner, equal)
            self._apply_decision(dest, src, old, decision, digest=digest if equal and record else None)
            if self._full():
                await self._flush()
        # Delete nothing where the source could not be read in full (rsync's rule too).
        if self.options.delete and found.error is None and not found.problems:
            for name, old in existing.items():
                if not name.startswith(TEMP_PREFIX):
                    self._delete(dest, name, old.row)
        if self._full():
            await self._flush()
        scanner.add_all(subdirs)

    def _dest_entries(self, ino: int) -> dict[bytes, C.DestEntry]:
        rows = self.target.listdir(ino)
        if not rows:
            return {}
        targets = listing.symlinks_in(self.index, ino)
        xattrs = listing.xattrs_in(self.index, ino)
        out = {}
        data = self.data
        for name, row in rows:
            if row.is_reg:
                dirty = data.dirty_size(row.id)
                if dirty is not None and dirty != row.size:
                    row = row._replace(size=dirty)
            out[name] = C.DestEntry(row, targets.get(row.id), xattrs.get(row.id, {}))
        return out

    def _apply_decision(self, dest: DestDir, src: SourceEntry, old: C.DestEntry | None,
                        decision: C.Decision, *, digest: bytes | None = None) -> DestDir | None:
        """Queue what `decision` says; returns the directory to descend into, if any.
        `digest`: the content's SHA-256, to record for a file found equal (--checksum)."""
        stats = self.stats
        kind = decision.kind
        name = src.name
        is_dir = src.kind == stat.S_IFDIR
        if kind == C.RETYPE:
            if old.row.is_dir and not self.options.delete and not self._empty_dir(old.row.id):
                self._error(f"{self._show(dest, name)}: is a non-empty directory in the volume and a "
                            f"{_kind_name(src.kind)} in the source: left alone (use --delete to replace it)")
                return None
            if old.row.is_dir or is_dir:
                self._delete(dest, name, old.row, report=False)
                old = None
                kind = C.NEW
        if kind == C.SAME:
            stats.unchanged += 1
            self._note_link(src, old.row.id)
            if digest is not None:  # equal contents, and the volume had no valid digest: record it
                action = Action("attrs", dest, name, src, old.row, decision)
                action.digest = digest
                self._add(action, None)
            return self._descend(dest, src, old) if is_dir else None
        if kind in (C.ATTRS, C.RETARGET):
            action = Action("retarget" if kind == C.RETARGET else "attrs", dest, name, src, old.row, decision)
            if kind == C.RETARGET:
                stats.symlinks += 1
            else:
                stats.attributes += 1
            self._note_link(src, old.row.id)
            action.digest = digest
            self._add(action, "attrs" if kind == C.ATTRS else "changed", old)
            return self._descend(dest, src, old) if is_dir else None
        # NEW, DATA, RETYPE between two non-directories: a new entry at the name.
        old_row = None if old is None else old.row
        if is_dir:
            action = Action("mkdir", dest, name, src)
            action.child = DestDir(None, self._rel(dest, name), src, True)
            stats.new_dirs += 1
            self._add(action, "new dir")
            self._dirs.append(action.child)
            return action.child
        if src.kind == stat.S_IFLNK:
            stats.symlinks += 1
            self._add(Action("symlink", dest, name, src, old_row), "new link" if old is None else "changed", old)
        elif src.kind == stat.S_IFIFO:
            stats.others += 1
            self._add(Action("fifo", dest, name, src, old_row), "new fifo" if old is None else "changed", old)
        else:
            linked = self._links.get((src.dev, src.ino)) if src.nlink > 1 else None
            if linked is not None:
                action = Action("link", dest, name, src, old_row)
                action.link_to = linked
                stats.hard_links += 1
                self._add(action, "new hard link" if old is None else "changed", old)
            else:
                action = Action("file", dest, name, src, old_row)
                if old is None:
                    stats.new_files += 1
                else:
                    stats.changed_files += 1
                stats.to_copy_files += 1
                stats.to_copy_bytes += src.size
                if src.nlink > 1:
                    self._links[(src.dev, src.ino)] = action
                self._add(action, "new file" if old is None else "changed", old)
        return None

    def _descend(self, dest: DestDir, src: SourceEntry, old: C.DestEntry) -> DestDir:
        child = DestDir(old.row.id, self._rel(dest, src.name), src, False)
        self._dirs.append(child)
        return child

    def _note_link(self, src: SourceEntry, ino: int) -> None:
        if src.kind == stat.S_IFREG and src.nlink > 1:
            self._links.setdefault((src.dev, src.ino), ino)

    def _empty_dir(self, ino: int) -> bool:
        return self.index.is_empty_dir(ino)

    def _delete(self, dest: DestDir, name: bytes, row: InodeRow, *, report: bool = True) -> None:
        action = Action("delete", dest, name, None, row)
        self._add(action, "delete" if report else None)

    # ------------------------------------------------------------------ --checksum

    async def _contents_equal(self, path: bytes, old: C.DestEntry) -> tuple[bool, bytes | None, bool]:
        """(equal, the source's digest, whether the volume lacked a valid recorded one)."""
        self.stats.checksummed += 1
        try:
            digest, size, _ = await trio.to_thread.run_sync(file_digest, path)
        except OSError:
            return False, None, False  # unreadable now: the copy will say why
        if size != old.row.size:
            return False, digest, False
        recorded = C.recorded_digest(old) if self.data.dirty_size(old.row.id) is None else None
        if recorded is not None:
            return recorded == digest, digest, False
        self.stats.read_back += 1
        try:
            in_volume = await self._volume_digest(old.row)
        except DataUnavailable as e:
            log.info("sync --checksum: %s cannot be read back (%s): copying it again", path, e)
            return False, digest, False
        return in_volume == digest, digest, self.data.dirty_size(old.row.id) is None

    async def _volume_digest(self, row: InodeRow) -> bytes:
        h = hashlib.sha256()
        size = self.data.dirty_size(row.id)
        size = row.size if size is None else size
        pos = 0
        while pos < size:
            chunk = await self.data.read(row.id, pos, min(CHUNK, size - pos), size)
            if not chunk:
                break
            await trio.to_thread.run_sync(h.update, chunk)
            pos += len(chunk)
        return h.digest()

    # ------------------------------------------------------------------ batches

    def _add(self, action: Action, item: str | None, old: C.DestEntry | None = None) -> None:
        if item is not None:
            self._item(item, action.rel())
        if self.options.dry_run:
            if action.kind == "file":
                self.stats.copied_files += 1
                self.stats.copied_bytes += action.src.size
            elif action.kind == "delete":
                self.stats.deleted += 1
            return
        self._actions.append(action)
        if action.kind == "file":
            self._batch_files += 1
            self._batch_bytes += action.src.size

    def _full(self) -> bool:
        o = self.options
        # A batch's copies join the dirty set (where uploads can drain them) only when it
        # commits: a quarter of the staging area at most, so backpressure has a handle.
        byte_cap = min(o.batch_bytes, max(1, self.data.staging.limit // 4))
        return (self._batch_files >= o.batch_files or self._batch_bytes >= byte_cap
                or len(self._actions) >= o.batch_entries)

    async def _flush(self) -> None:
        """Apply the batch: copy its files into staging, then one transaction."""
        actions, self._actions = self._actions, []
        self._batch_files = self._batch_bytes = 0
        if not actions:
            return
        files = [a for a in actions if a.kind == "file"]
        stats = self.stats
        try:
            if files:
                await self._stage(files)
            started = time.monotonic()
            changes = self._commit(actions)
            stats.commit_seconds += time.monotonic() - started
        except BaseException:
            for a in files:
                if a.copy is not None and a.ino is None:
                    self.data.discard_copy(a.copy)
                    a.copy = None
            raise
        stats.batches += 1
        started = time.monotonic()
        await self.target.after_commit(changes)
        stats.after_seconds += time.monotonic() - started

    async def _stage(self, files: list[Action]) -> None:
        o = self.options
        groups: list[list[Action]] = [[]]
        size = 0
        for a in files:
            if groups[-1] and (len(groups[-1]) >= o.copy_group_files or size >= o.copy_group_bytes):
                groups.append([])
                size = 0
            groups[-1].append(a)
            size += a.src.size
        todo = iter(groups)
        parent = self.source

        async def worker() -> None:
            for group in todo:
                sources = [(self._source_path(a, parent), a.src.size) for a in group]
                results = await self.data.stage_copies(sources, digest=o.checksum)
                for a, result in zip(group, results):
                    if isinstance(result, OSError) and result.errno in _STAGING_FULL:
                        # Reading a source never fails so: the staging disk did. Every
                        # further copy would too: stop (a sync again resumes).
                        raise UserError(f"cannot write to the staging area {self.data.staging.directory}: "
                                        f"{result.strerror}")
                    if isinstance(result, OSError):
                        if isinstance(result, FileNotFoundError):
                            self.stats.vanished += 1
                            a.failed = "vanished"
                        else:
                            a.failed = result.strerror or str(result)
                            self._error(f"{_shown(self._source_path(a, parent))}: {a.failed}")
                        continue
                    a.copy = result
                    self.stats.copied_files += 1
                    self.stats.copied_bytes += result.copied.size
                    if not result.copied.stable:
                        self.stats.unstable += 1
                    if result.copied.digest is not None:
                        a.digest = result.copied.digest
                self._report()

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(min(o.copy_threads, len(groups))):
                nursery.start_soon(worker)
        copied = time.monotonic()
        await self.data.sync_copies()
        self.stats.copy_seconds += copied - started
        self.stats.durable_seconds += time.monotonic() - copied

    def _source_path(self, action: Action, root: bytes) -> bytes:
        rel = action.rel()
        return root + b"/" + rel

    def _commit(self, actions: list[Action]) -> Changes:
        """ONE transaction for the whole batch (no await inside: nothing else may run in it)."""
        changes = Changes()
        placed: list[Action] = []
        now = self.clock()
        index = self.index
        try:
            with index.batch():
                for a in actions:
                    if a.failed is not None:
                        continue
                    try:
                        self._apply_action(a, now, changes, placed)
                    except IndexError_ as e:
                        # A domain error comes before any write of its call; each action
                        # checks its name first, so nothing half-done is left behind.
                        a.failed = str(e)
                        if a.kind == "mkdir" and a.child is not None:
                            a.child.failed = True
                        self._error(f"{self._show(a.parent, a.name)}: not synced: {e}")
                if placed:
                    self.data.staging_names_durable()
        except BaseException:
            for a in placed:
                a.ino = None  # the inodes were rolled back
            raise
        for a in placed:
            self.data.adopt_copy(a.copy, a.parent.ino)
            a.copy = None
        return changes

    def _still(self, a: Action) -> bool:
        """The name still holds what it held when compared (checked inside the batch)."""
        parent = a.parent.ino
        if parent is None or a.parent.failed:
            a.failed = "its directory was not made"
            return False
        current = self.index.lookup(parent, a.name)
        expected = None if a.old is None else a.old.id
        if current != expected:
            a.failed = "changed in the volume during the sync"
            self._error(f"{self._show(a.parent, a.name)}: changed in the volume during the sync: "
                        "left alone (sync again)")
            return False
        return True

    def _apply_action(self, a: Action, now: int, changes: Changes, placed: list[Action]) -> None:
        index = self.index
        kind = a.kind
        if not self._still(a):
            if a.child is not None:
                a.child.failed = True
            return
        parent = a.parent.ino
        if kind == "delete":
            self._delete_tree(parent, a.name, a.old, changes)
            return
        if kind in ("attrs", "retarget"):
            self._update(a, now, changes)
            return
        src = a.src
        uid, gid = (self.owner.uid, self.owner.gid) if src is None else self.owner.of(src)
        replace = a.old is not None
        name = self._temp_name(parent) if replace else a.name
        if kind == "mkdir":
            mode = 0o755 if src is None else src.mode & 0o7777  # a parent made for DEST: mkdir -p
            row = index.make_node(parent, name, stat.S_IFDIR | mode, uid, gid, now_ns=now)
            a.child.ino = row.id
            if src is not None:
                self._set_xattrs(row.id, C.user_xattrs(src.xattrs), [])
        elif kind == "file":
            row = index.make_node(parent, name, stat.S_IFREG | (src.mode & 0o7777), uid, gid, now_ns=now)
            copied = a.copy.copied
            index.update_inode(row.id, size=copied.size, mtime_ns=copied.mtime_ns, atime_ns=copied.atime_ns)
            self._set_xattrs(row.id, C.user_xattrs(src.xattrs), [])
            if a.digest is not None:
                index.set_xattr(row.id, C.DIGEST_XATTR, C.digest_record(a.digest, now))
            self.data.place_copy(a.copy, row.id)
            a.ino = row.id
            placed.append(a)
        elif kind == "link":
            target = a.link_to if isinstance(a.link_to, int) else a.link_to.ino
            if target is None:
                a.failed = "the file it is a hard link of was not synced"
                self._error(f"{self._show(a.parent, a.name)}: not synced: {a.failed}")
                return
            index.link(parent, name, target, now_ns=now)
            changes.rows.add(target)
        elif kind == "symlink":
            row = index.make_node(parent, name, stat.S_IFLNK | 0o777, uid, gid, target=src.target, now_ns=now)
            index.update_inode(row.id, mtime_ns=src.mtime_ns, atime_ns=src.atime_ns)
        elif kind == "fifo":
            row = index.make_node(parent, name, stat.S_IFIFO | (src.mode & 0o7777), uid, gid, now_ns=now)
            index.update_inode(row.id, mtime_ns=src.mtime_ns, atime_ns=src.atime_ns)
        else:
            raise AssertionError(kind)
        if replace:
            replaced = index.rename(parent, name, parent, a.name, replace=True, now_ns=now)
            if replaced is not None:
                changes.unnamed.append(replaced)
                changes.rows.add(replaced)
        changes.entry(parent, a.name)

    def _temp_name(self, parent: int) -> bytes:
        while True:
            self._temp_seq += 1
            name = TEMP_PREFIX + f"{os.getpid()}.{self._temp_seq}".encode()
            if self.index.lookup(parent, name) is None:
                return name

    def _update(self, a: Action, now: int, changes: Changes) -> None:
        index = self.index
        ino = a.old.id
        current = index.get_inode(ino)
        decision = a.decision
        fields = dict(decision.fields)
        if a.kind == "retarget":
            index.set_symlink(ino, a.src.target)
        if fields or a.kind == "retarget" or decision.xattr_set or decision.xattr_remove:
            fields["ctime_ns"] = now
            index.update_inode(ino, **fields)
        self._set_xattrs(ino, decision.xattr_set, decision.xattr_remove)
        if current.is_reg:
            # A content digest recorded for the inode stays true (its content did not
            # change here): stamp it with the new ctime. --checksum just computed one.
            digest = a.digest
            if digest is None:
                try:
                    record = index.get_xattr(ino, C.DIGEST_XATTR)
                except IndexError_:
                    record = None
                if record is not None:
                    digest = C.recorded_digest(C.DestEntry(current, None, {C.DIGEST_XATTR: record}))
            if digest is not None and self.data.dirty_size(ino) is None:
                index.set_xattr(ino, C.DIGEST_XATTR, C.digest_record(digest, fields.get("ctime_ns", current.ctime_ns)))
        changes.rows.add(ino)

    def _set_xattrs(self, ino: int, to_set: dict[bytes, bytes], to_remove: list[bytes]) -> None:
        for name, value in to_set.items():
            self.index.set_xattr(ino, name, value)
        for name in to_remove:
            try:
                self.index.remove_xattr(ino, name)
            except IndexError_:
                pass

    def _delete_tree(self, parent: int, name: bytes, row: InodeRow, changes: Changes) -> None:
        """Remove `name` and, for a directory, everything below it (post-order)."""
        index = self.index
        stack = [(parent, name, row, False)]
        while stack:
            p, n, r, expanded = stack.pop()
            if r.is_dir and not expanded:
                stack.append((p, n, r, True))
                after = 0
                while True:
                    entries = index.readdir(r.id, after, 1000)
                    stack.extend((r.id, cn, crow, False) for _, cn, crow in entries)
                    if len(entries) < 1000:
                        break
                    after = entries[-1][0]
                continue
            index.unlink(p, n)
            self.stats.deleted += 1
            changes.entry(p, n)
            changes.rows.add(r.id)
            refreshed = index.get_inode(r.id)
            if refreshed.nlink == 0:
                changes.unnamed.append(r.id)

    # ------------------------------------------------------------------ directories, at the end

    async def _finish_dirs(self) -> None:
        """Each directory's mode, owner and times, now that nothing more is made inside."""
        if self.options.dry_run:
            return
        index = self.index
        pending = [d for d in self._dirs if d.src is not None and d.ino is not None and not d.failed]
        for start in range(0, len(pending), self.options.batch_entries):
            chunk = pending[start:start + self.options.batch_entries]
            changes = Changes()
            now = self.clock()
            with index.batch():
                for d in chunk:
                    try:
                        row = index.get_inode(d.ino)
                    except NotFound:
                        continue
                    src = d.src
                    fields, _, _ = C.attribute_changes(src, C.DestEntry(row, None, {}), self.owner)
                    if row.mtime_ns != src.mtime_ns:
                        fields.update(mtime_ns=src.mtime_ns, atime_ns=src.atime_ns)
                    if fields:
                        if not d.new and ("mode" in fields or "uid" in fields or "gid" in fields):
                            self.stats.attributes += 1
                            self._item("attrs", d.rel)
                        fields["ctime_ns"] = now
                        index.update_inode(d.ino, **fields)
                        changes.rows.add(d.ino)
                    if d.rel == b"" and d.src is not None:
                        self._root_xattrs(d.ino, changes)
            await self.target.after_commit(changes)
            await trio.sleep(0)

    def _root_xattrs(self, ino: int, changes: Changes) -> None:
        # The destination root is nobody's child in the walk: its attributes here.
        have = {n: self.index.get_xattr(ino, n) for n in self.index.list_xattrs(ino)}
        want = C.user_xattrs(self._dirs[0].src.xattrs) if self._dirs else {}
        have = C.user_xattrs(have)
        to_set = {k: v for k, v in want.items() if have.get(k) != v}
        to_remove = [k for k in have if k not in want]
        if to_set or to_remove:
            self._set_xattrs(ino, to_set, to_remove)
            changes.rows.add(ino)

    # ------------------------------------------------------------------ reports

    def _rel(self, dest: DestDir, name: bytes) -> bytes:
        return dest.rel + b"/" + name if dest.rel else name

    def _show(self, dest: DestDir, name: bytes) -> str:
        return _shown(self._rel(dest, name))

    def _item(self, what: str, rel: bytes) -> None:
        if self.on_item is not None:
            self.on_item(f"{what:14}{_shown(rel) or '.'}")

    def _error(self, line: str, *, counted: bool = True) -> None:
        if counted:
            self.stats.errors += 1
        if len(self.stats.error_lines) < MAX_ERRORS_KEPT:
            self.stats.error_lines.append(line)
        log.info("sync: %s", line)

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.stats)


def _shown(path: bytes) -> str:
    """A path for a message: any bytes that are not UTF-8 as backslash escapes, so the
    line can always be printed (and sent as JSON)."""
    return path.decode("utf-8", "backslashreplace")


def _kind_name(kind: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
            stat.S_IFIFO: "FIFO"}.get(kind, "special file")


__all__ = ["Sync", "SyncOptions", "SyncStats"]
