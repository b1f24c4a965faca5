"""The subscriber's side: from a capability to a filled mirror index, and refreshes.

- `Subscription`: where a subscribed share lives in a home (a `Volume` look-alike, so the
  mount daemon's machinery — log, mount record, control socket — works unchanged):
      config_dir/subscriptions/ID/subscription.json   the capability and the server used
      data_dir/subscriptions/ID/mirror.sqlite         the mirror index (index/mirror.py)
      cache_dir/subscriptions/ID/objects/             tree objects already fetched and checked
      cache_dir/subscriptions/ID/segments/            the on-disk segment cache (-o disk_cache)
- `open_share`: newest genuine keyring -> the epoch key (open, password or identity) ->
  newest genuine root of that epoch; refuses an expired share with one line.
- `Applier`: the root's tree into the mirror, in one index transaction. Directories are
  visited from the top, a batch at a time; one whose object digest equals the one applied
  before is skipped with everything below it. For a changed directory: names gone are
  removed, others are created or updated (attributes, xattrs, symlink target, extents and
  segment keys). Directories whose last name went away are emptied at the end, and the
  inodes left without a name are deleted unless the kernel still holds them (then the
  fs deletes them at forget, as for any unlinked file). What changed is returned so a
  live mount can invalidate the kernel's caches.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..backup.bounded import for_each
from ..backup.chunks import hash_key as chunk_hash_key
from ..errors import UserError
from ..home import Home
from ..index import ROOT_INODE
from ..index.layout import ExtentRow, coalesced
from ..index.mirror import Mirror
from ..keys import VolumeKeys
from ..nntp.client import NNTPClient
from ..process import process_alive
from ..volume import Volume, write_json_atomic
from . import tree
from .articles import ObjectFetcher, newest_document
from .capability import Capability
from .documents import Keyring, Root
from .stanzas import Identity, NotForUs, unwrap
from .wire import Malformed

log = logging.getLogger(__name__)

BATCH_DIRS = 32  # directories fetched at a time


class Subscription(Volume):
    """A subscribed share in a home. Its "name" (logs, messages) is share-<first hex digits>."""

    def __init__(self, home: Home, share_id: bytes):
        ident = share_id.hex()
        self.home = home
        self.share_id = share_id
        self.name = f"share-{ident[:12]}"
        self.config_dir = home.config_dir / "subscriptions" / ident
        self.data_dir = home.data_dir / "subscriptions" / ident
        self.cache_dir = home.cache_dir / "subscriptions" / ident

    @property
    def settings_file(self):
        return self.config_dir / "subscription.json"

    @property
    def mirror_file(self):
        return self.data_dir / "mirror.sqlite"

    @property
    def objects_dir(self):
        return self.cache_dir / "objects"

    def ensure(self) -> None:
        self.home.ensure()
        for directory in (self.config_dir, self.data_dir, self.cache_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save_settings(self, data: dict) -> None:
        write_json_atomic(self.settings_file, data)

    def load_settings(self) -> dict:
        try:
            return json.loads(self.settings_file.read_text())
        except (OSError, ValueError):
            return {}


def list_subscriptions(home: Home) -> list[Subscription]:
    root = home.config_dir / "subscriptions"
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        try:
            share_id = bytes.fromhex(path.name)
        except ValueError:
            continue
        if len(share_id) == 16 and (path / "subscription.json").exists():
            out.append(Subscription(home, share_id))
    return out


def find_mounted_subscription(home: Home, mountpoint) -> Subscription | None:
    """The subscribed share whose running mount is at `mountpoint`, or None."""
    target = os.path.realpath(mountpoint)
    for sub in list_subscriptions(home):
        info = sub.mount_info()
        if info and os.path.realpath(info["mountpoint"]) == target and process_alive(info.get("pid")):
            return sub
    return None


@dataclass
class Access:
    """What the subscriber brings besides the capability."""

    password: str | None = None
    identity: Identity | None = None


@dataclass
class Opened:
    capability: Capability
    keyring: Keyring
    epoch_key: bytes
    root_number: int
    root: Root


def expiry_text(expires: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(expires))


def check_not_expired(name: str, expires: float | None) -> None:
    if expires is not None and time.time() >= expires:
        raise UserError(f"share {name!r} expired on {expiry_text(expires)}: its publisher no longer "
                        "refreshes it, and this client will not mount it")


async def open_share(client: NNTPClient, cap: Capability, access: Access, limiter: trio.CapacityLimiter,
                     *, known_epoch_key: tuple[int, bytes] | None = None) -> Opened:
    """The newest keyring and root of the share (see the module docstring)."""
    share_id = cap.share_id
    number, ring = await newest_document(
        client, VolumeKeys(cap.access_key), share_id, limiter,
        lambda n, payload: Keyring.open(cap.verify_key, payload, share_id, n), "keyring")
    if ring is None:
        raise UserError("nothing is published under this capability on this server (not yet, expired from the "
                        "server, or the server does not carry the group)")
    if known_epoch_key is not None and known_epoch_key[0] == ring.epoch:
        key = known_epoch_key[1]
    else:
        try:
            key = await trio.to_thread.run_sync(
                lambda: unwrap(ring.stanzas, share_id, ring.epoch, password=access.password,
                               identity=access.identity))
        except NotForUs:
            if access.identity is not None:
                raise UserError("this identity is not a recipient of this share (never granted, or its access "
                                "was revoked)") from None
            raise UserError("nothing in the share's keyring opens with what was given") from None
        except ValueError:
            raise UserError(f"the share's keyring {number} is malformed") from None
    epoch_keys = VolumeKeys(key)
    seq, root = await newest_document(
        client, epoch_keys, share_id, limiter,
        lambda n, payload: Root.open(cap.verify_key, payload, share_id, ring.epoch, n), "root")
    if root is None:
        raise UserError(f"the share's keyring {number} is there, but no index of epoch {ring.epoch} is")
    check_not_expired(root.name, root.expires if root.expires is not None else ring.expires)
    return Opened(cap, ring, key, seq, root)


@dataclass
class Changes:
    """What an apply changed, for the kernel's caches."""

    inodes: set[int] = field(default_factory=set)  # attributes changed
    contents: set[int] = field(default_factory=set)  # file data changed (new extents)
    names: set[tuple[int, bytes]] = field(default_factory=set)  # (parent, name) added, replaced or removed
    deleted: set[int] = field(default_factory=set)
    dirs_visited: int = 0
    objects_fetched: int = 0

    def summary(self) -> dict:
        return {"dirs_visited": self.dirs_visited, "names_changed": len(self.names),
                "files_changed": len(self.contents), "objects_fetched": self.objects_fetched}


class Applier:
    """Applies one root's tree to `mirror` (see the module docstring). `held(ino)` says
    whether the kernel holds an inode (its deletion is then left to forget)."""

    def __init__(self, mirror: Mirror, client: NNTPClient, cap: Capability, epoch_key: bytes,
                 objects_dir, limiter: trio.CapacityLimiter, held: Callable[[int], bool] = lambda ino: False,
                 progress: Callable[[int, int], None] | None = None):
        keys = VolumeKeys(epoch_key)
        self.mirror = mirror
        self.fetcher = ObjectFetcher(client, keys, cap.share_id, chunk_hash_key(keys), objects_dir, limiter)
        self.held = held
        self.progress = progress
        self.changes = Changes()

    async def apply(self, opened: Opened) -> Changes:
        root = opened.root
        mirror = self.mirror
        scope = bytes.fromhex(root.data["scope"])
        if mirror.ix.volume_id != scope:
            raise UserError("this share's mirror belongs to another volume's data: remove "
                            f"{mirror.ix.path} and mount again")
        with mirror.ix.batch():
            top = root.top
            mirror.set_top(top["mode"], top["uid"], top["gid"], top["mtime_ns"], top["ctime_ns"])
            self.changes.inodes.add(ROOT_INODE)
            queue: list[tuple[int, tree.Ref]] = []
            if mirror.dir_digest(ROOT_INODE) != root.tree_ref.digest:
                queue.append((ROOT_INODE, root.tree_ref))
            total = 1
            while queue:
                batch, queue = queue[:BATCH_DIRS], queue[BATCH_DIRS:]
                listings: list[list[tuple[tree.Entry, dict]] | None] = [None] * len(batch)

                async def load(i: int) -> None:
                    listings[i] = await self._listing(batch[i][1])

                await for_each(range(len(batch)), load, len(batch))  # the first error alone, unwrapped
                for (ino, ref), entries in zip(batch, listings):
                    children = await self._apply_directory(ino, entries)
                    mirror.set_dir_digest(ino, ref.digest)
                    queue.extend(children)
                    total += len(children)
                    self.changes.dirs_visited += 1
                    if self.progress is not None:
                        self.progress(self.changes.dirs_visited, total)
            self._sweep()
            mirror.set_state({"epoch": opened.keyring.epoch, "keyring": opened.keyring.number,
                              "seq": opened.root_number, "name": root.name, "expires": root.expires,
                              "published": root.created, "data": root.data, "stats": root.stats,
                              "applied": time.time()})
        self.changes.objects_fetched = self.fetcher.fetched
        return self.changes

    async def _listing(self, ref: tree.Ref) -> list[tuple[tree.Entry, dict]]:
        """The directory's entries, each with the segments its inline extents use."""
        raw = await self.fetcher.get(ref, "a directory")
        try:
            pieces = tree.decode_directory(raw)
        except Malformed as error:
            raise UserError(f"the share's index is malformed: a directory object: {error}") from None
        entries: list[tuple[tree.Entry, dict]] = []
        for data in await self.fetcher.get_many(pieces, "a directory piece"):
            try:
                piece = tree.decode_piece(data)
            except Malformed as error:
                raise UserError(f"the share's index is malformed: a directory piece: {error}") from None
            for entry in piece.entries:
                used = {s for e in entry.extents for s in range(e[2], e[2] + e[4])}
                entries.append((entry, {s: piece.segments[s] for s in used}))
        names = [e.name for e, _ in entries]
        if len(set(names)) != len(names):
            raise UserError("the share's index is malformed: a directory names one entry twice")
        # The big files' maps too, now and many at a time (into the local object cache): one
        # by one while applying would cost a round trip each.
        await self.fetcher.get_many([ref for e, _ in entries for ref in e.maps], "a file map")
        return entries

    async def _file_layout(self, entry: tree.Entry, inline: dict) -> tuple[list[tuple], dict[int, tree.SegmentInfo]]:
        if not entry.maps:
            return list(entry.extents), inline
        extents, segments = [], {}
        for data in await self.fetcher.get_many(list(entry.maps), "a file map"):
            try:
                file_map = tree.decode_file_map(data)
            except Malformed as error:
                raise UserError(f"the share's index is malformed: a file map: {error}") from None
            extents.extend(file_map.extents)
            segments.update(file_map.segments)
        return extents, segments

    async def _apply_directory(self, ino: int, entries: list[tuple[tree.Entry, dict]]) -> list[tuple[int, tree.Ref]]:
        mirror, changes = self.mirror, self.changes
        current = mirror.entries(ino)
        wanted = {e.name for e, _ in entries}
        for name in current.keys() - wanted:
            mirror.remove_name(ino, name)
            changes.names.add((ino, name))
        children = []
        for entry, inline in entries:
            if entry.ino == ROOT_INODE:
                raise UserError("the share's index is malformed: an entry names the top folder")
            if mirror.put_inode(entry.ino, entry.mode, entry.uid, entry.gid, entry.size, entry.mtime_ns,
                                entry.ctime_ns, entry.rdev):
                changes.inodes.add(entry.ino)
            mirror.set_xattrs(entry.ino, entry.xattrs)
            if entry.is_symlink:
                mirror.set_symlink(entry.ino, entry.target or b"")
            elif entry.is_reg:
                await self._apply_file(entry, inline)
            if mirror.set_name(ino, entry.name, entry.ino):
                changes.names.add((ino, entry.name))
            if entry.is_dir and mirror.dir_digest(entry.ino) != entry.child.digest:
                children.append((entry.ino, entry.child))
            await trio.sleep(0)  # a big directory must not stall the mount's other requests
        return children

    async def _apply_file(self, entry: tree.Entry, inline: dict) -> None:
        extents, segments = await self._file_layout(entry, inline)
        rows = coalesced(ExtentRow(entry.ino, *e) for e in extents)
        if any(row.end > entry.size for row in rows):
            raise UserError(f"the share's index is malformed: file {entry.name[:40]!r} has data beyond its size")
        mirror = self.mirror
        current = mirror.ix.extents(entry.ino)
        stale = [s for s in segments.values() if mirror.segment_secret(s.id) != (s.key, s.locator)]
        if current == rows and not stale:
            return
        mirror.put_segments(stale or segments.values())
        if current != rows:
            mirror.ix.replace_extents(entry.ino, rows)
            self.changes.contents.add(entry.ino)

    def _sweep(self) -> None:
        """Empty directories that lost their last name, then delete the nameless inodes the
        kernel does not hold."""
        ix, mirror = self.mirror.ix, self.mirror
        while True:
            emptied = False
            for ino in ix.orphans():
                row = ix.get_inode(ino)
                if row.is_dir:
                    for name in list(mirror.entries(ino)):
                        mirror.remove_name(ino, name)
                        self.changes.names.add((ino, name))
                        emptied = True
                    mirror.set_dir_digest(ino, None)
            if not emptied:
                break
        for ino in ix.orphans():
            if not self.held(ino):
                ix.delete_inode(ino)
                self.changes.deleted.add(ino)
