"""Publishing a share: the folder's subtree as tree objects, a signed root, a keyring.

`publish()` walks the subtree bottom-up in the volume's index (the mount's own `Index` when
the volume is mounted, or one opened by the command when it is not), and for every
directory whose *signature* changed since the last publish (a keyed hash of its entries'
names, inode rows without atime, and child-directory digests) reads its files' extents,
segment rows, symlink targets and xattrs, derives each segment's own key and Message-ID
part, and encodes the directory's pieces and file maps (tree.py) in a worker thread.
Unchanged directories reuse their previous digest without touching their files. Then:

1. every object not known to be on the server is posted and read back (articles.py),
   many at a time;
2. the root (signed) is posted under the next number of the epoch;
3. a keyring is posted if none wraps this epoch's key yet, or if the recipients or the
   expiry changed (grant, revoke);
4. only then are the directory signatures, the object record and the share's state saved,
   and the publish is written to the audit log.

A crash anywhere leaves the previous root in force: objects are never overwritten (their
ids come from their content), and a root names only objects already read back.

Files not posted yet (dirty, staged) cannot be shared: inside a mount, `flush` runs first
and a file written during the walk is waited for; offline, staged files are an error.
References inside objects carry Message-ID generation 0 as a hint (readers try the
others if that article is not the object); the root's reference carries the real one.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..backup.chunks import hash_key as chunk_hash_key
from ..codec.kdf import hkdf
from ..codec.segment import KIND_DATA, SegmentId
from ..errors import UserError
from ..index import Index, InodeRow, NotFound, ROOT_INODE, VOLUME_SCOPE
from ..index.rows import SegmentRow
from ..keys import VolumeKeys
from ..nntp.client import NNTPClient
from ..nntp.posting import ArticlePoster, VerifyOptions
from ..store.base import pad_to, segment_key
from ..volume import VolumeSettings, write_text_atomic
from . import tree
from .articles import ObjectPoster, number_taken, post_document
from .documents import Keyring, Root
from .stanzas import fingerprint, open_stanza, parse_public_key, x25519_stanza
from .state import ShareFiles, ShareState, note_expiry

log = logging.getLogger(__name__)

VERIFY = VerifyOptions(delay=0.0, tries=6, interval=1.0)
BATCH_OBJECTS = 256  # objects posted together
READDIR_PAGE = 1024
DIRTY_RETRIES = 5  # a directory whose files are written while it is read: flush and read again
_DIRS_MAGIC = "usenetfs-share-dirs v1"


@dataclass
class PublishResult:
    name: str
    epoch: int
    seq: int
    keyring: int  # the keyring posted by this publish, or 0
    dirs: int
    files: int
    bytes: int
    changed_dirs: int
    objects_posted: int
    posted_bytes: int
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Item:
    """One directory entry with what its encoding needs (read on the trio thread)."""

    name: bytes
    row: InodeRow
    child: tree.Ref | None = None
    target: bytes | None = None
    xattrs: tuple = ()
    extents: list | None = None
    segments: dict | None = None


class _Dirty(Exception):
    def __init__(self, ino: int):
        self.ino = ino


@dataclass
class _Context:
    """Pure inputs of the encoding threads."""

    volume_keys: VolumeKeys
    scope: bytes
    hash_key: bytes
    boundary_key: bytes


class DirCache:
    """Per directory: the signature and digest of its last published object, and the
    counts of its subtree (one text line each; a cache: losing it costs a full walk)."""

    def __init__(self, path, tag: str):
        self.path = path
        self.tag = tag
        self.entries: dict[int, tuple[bytes, bytes, tuple[int, int, int]]] = {}
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if lines and lines[0] == f"{_DIRS_MAGIC} {tag}":
            for line in lines[1:]:
                parts = line.split()
                try:
                    self.entries[int(parts[0])] = (bytes.fromhex(parts[1]), bytes.fromhex(parts[2]),
                                                   (int(parts[3]), int(parts[4]), int(parts[5])))
                except (ValueError, IndexError):
                    continue

    def save(self, entries) -> None:
        lines = [f"{_DIRS_MAGIC} {self.tag}\n"]
        lines += [f"{ino} {sig.hex()} {d.hex()} {c[0]} {c[1]} {c[2]}\n" for ino, (sig, d, c) in entries.items()]
        write_text_atomic(self.path, "".join(lines))


def _signature(key: bytes, items: list[_Item]) -> bytes:
    h = hashlib.blake2b(key=key, digest_size=32)
    for item in items:
        r = item.row
        h.update(len(item.name).to_bytes(2, "big") + item.name)
        h.update(repr((r.id, r.mode, r.uid, r.gid, r.size, r.mtime_ns, r.ctime_ns, r.rdev)).encode())
        if item.child is not None:
            h.update(item.child.digest)
    return h.digest()


def _segment_info(ctx: _Context, row: SegmentRow) -> tree.SegmentInfo:
    ident = SegmentId(ctx.scope, KIND_DATA, row.id)
    locator = ctx.volume_keys.message_id(ident, row.generation)[1:1 + tree.LOCATOR_SIZE]
    return tree.SegmentInfo(row.id, row.generation, row.payload_size,
                            segment_key(ctx.volume_keys.data_key, ident), locator)


def _encode_directory(ctx: _Context, items: list[_Item]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(digest of the directory object, every object of the directory: pieces, file maps and
    the directory object last). Runs in a worker thread: pure."""
    objects: list[tuple[bytes, bytes]] = []
    encoded: list[tuple[tree.Entry, bytes, set[int]]] = []
    infos: dict[int, tree.SegmentInfo] = {}
    for item in items:
        r = item.row
        common = dict(name=item.name, ino=r.id, mode=r.mode, uid=r.uid, gid=r.gid, size=r.size,
                      mtime_ns=r.mtime_ns, ctime_ns=r.ctime_ns, rdev=r.rdev, xattrs=item.xattrs)
        used: set[int] = set()
        if r.is_dir:
            entry = tree.Entry(**common, child=item.child)
        elif r.is_symlink:
            entry = tree.Entry(**common, target=item.target)
        elif r.is_reg:
            segments = {seg_id: _segment_info(ctx, seg) for seg_id, seg in item.segments.items()}
            extents = [tuple(e[1:]) for e in item.extents]
            if len(segments) <= tree.INLINE_SEGMENTS:
                entry = tree.Entry(**common, extents=tuple(extents))
                used = set(segments)
                infos.update(segments)
            else:
                refs = []
                for file_map in tree.split_file_map(extents, segments):
                    raw = tree.encode_file_map(file_map)
                    d = tree.digest(ctx.hash_key, raw)
                    objects.append((d, raw))
                    refs.append(tree.Ref(d, 0))
                entry = tree.Entry(**common, maps=tuple(refs))
        else:
            entry = tree.Entry(**common)
        encoded.append((entry, tree.encode_entry(entry), used))
    refs = []
    for indices in tree.cut_pieces(encoded, ctx.boundary_key):
        segs = {}
        for i in indices:
            for seg_id in encoded[i][2]:
                segs[seg_id] = infos[seg_id]
        raw = tree.encode_piece([encoded[i][1] for i in indices], segs)
        d = tree.digest(ctx.hash_key, raw)
        objects.append((d, raw))
        refs.append(tree.Ref(d, 0))
    raw = tree.encode_directory(refs)
    d = tree.digest(ctx.hash_key, raw)
    objects.append((d, raw))
    return d, objects


class Publisher:
    def __init__(self, files: ShareFiles, state: ShareState, index: Index, volume_keys: VolumeKeys,
                 settings: VolumeSettings, client: NNTPClient, *, is_dirty: Callable[[int], bool],
                 wait_clean: Callable[[], Awaitable[None]] | None = None, rescan: bool = False,
                 progress: Callable[[int, int], None] | None = None):
        self.files = files
        self.state = state
        self.index = index
        self.settings = settings
        self.client = client
        self.is_dirty = is_dirty
        self.wait_clean = wait_clean
        self.rescan = rescan
        self.progress = progress
        self.limiter = trio.CapacityLimiter(2)
        epoch_keys = state.epoch_keys()
        self.epoch_keys = epoch_keys
        self.hash_key = chunk_hash_key(epoch_keys)
        self.ctx = _Context(volume_keys, index.scope_bytes(VOLUME_SCOPE), self.hash_key,
                            hkdf(epoch_keys.index_key, b"usenetfs/v1/share/boundary"))
        self.signature_key = hkdf(epoch_keys.index_key, b"usenetfs/v1/share/dir-signature")
        self.poster = ArticlePoster(client, VERIFY)
        self.objects = ObjectPoster(client, self.poster, epoch_keys, state.share_bytes, settings.group,
                                    self.hash_key, files.object_record, self.limiter)
        self.cache = DirCache(files.dir_cache, f"{state.share_id} {state.epoch}")
        self.new_cache: dict[int, tuple[bytes, bytes, tuple[int, int, int]]] = {}
        self.pending: list[tuple[bytes, bytes]] = []
        self.generations: dict[bytes, int] = {}
        self._subdirs: dict[int, list[int]] = {}
        self.changed = 0
        self.done_dirs = 0

    # ------------------------------------------------------------------ the walk
    def resolve_root(self) -> int:
        state = self.state
        if state.root_inode is not None:
            try:
                row = self.index.get_inode(state.root_inode)
            except NotFound:
                raise UserError(f"the folder of share {state.name!r} ({state.path}) no longer exists") from None
            if not row.is_dir or (row.nlink == 0 and row.id != ROOT_INODE):
                raise UserError(f"the folder of share {state.name!r} ({state.path}) no longer exists")
            return row.id
        ino = resolve_path(self.index, state.path)
        state.root_inode = ino
        return ino

    def _listing(self, ino: int) -> list[tuple[bytes, InodeRow]]:
        out, cookie = [], 0
        while True:
            page = self.index.readdir(ino, cookie, READDIR_PAGE)
            out.extend((name, row) for _, name, row in page)
            if len(page) < READDIR_PAGE:
                return sorted(out, key=lambda item: item[0])
            cookie = page[-1][0]

    def _details(self, item: _Item) -> None:
        """Read what the encoding of a changed directory's entry needs."""
        row, index = item.row, self.index
        if row.is_reg and self.is_dirty(row.id):
            raise _Dirty(row.id)
        names = index.list_xattrs(row.id)
        item.xattrs = tuple(sorted((n, index.get_xattr(row.id, n)) for n in names))
        if row.is_symlink:
            item.target = index.get_symlink(row.id)
        elif row.is_reg:
            item.extents = index.extents(row.id)
            segments = {}
            for extent in item.extents:
                for seg_id in range(extent.segment, extent.segment + extent.run):
                    if seg_id not in segments:
                        seg = index.segment(seg_id)
                        if seg.scope != VOLUME_SCOPE:
                            raise UserError(f"inode {row.id} uses a segment of another scope: not supported")
                        segments[seg_id] = seg
            item.segments = segments

    async def _directory(self, ino: int, children: dict[int, tuple[bytes, tuple]]) -> tuple[bytes, tuple]:
        """The digest and subtree counts of directory `ino` (its subdirectories done)."""
        for attempt in range(DIRTY_RETRIES + 1):
            listing = self._listing(ino)
            items = []
            counts = [1, 0, 0]
            for name, row in listing:
                item = _Item(name, row)
                if row.is_dir:
                    if row.id not in children:  # made during the walk, after the listing
                        children[row.id] = await self.walk(row.id)
                    d, sub = children[row.id]
                    item.child = tree.Ref(d, 0)
                    counts = [a + b for a, b in zip(counts, sub)]
                elif row.is_reg:
                    counts[1] += 1
                    counts[2] += row.size
                items.append(item)
            signature = _signature(self.signature_key, items)
            cached = self.cache.entries.get(ino)
            if (not self.rescan and cached is not None and cached[0] == signature
                    and self.objects.known(cached[1]) is not None):
                self.new_cache[ino] = (signature, cached[1], tuple(counts))
                return cached[1], tuple(counts)
            try:
                for item in items:
                    self._details(item)
            except _Dirty as dirty:
                if self.wait_clean is None:
                    raise UserError(f"inode {dirty.ino} in the share is not posted yet: mount the volume and "
                                    "let it upload (or publish while it is mounted)") from None
                if attempt == DIRTY_RETRIES:
                    raise UserError(f"inode {dirty.ino} in the share keeps being written: publish again when "
                                    "it is done") from None
                await self.wait_clean()  # written during the walk: wait for its upload, read again
                continue
            break
        d, objects = await trio.to_thread.run_sync(_encode_directory, self.ctx, items, limiter=self.limiter)
        self.changed += 1
        self.pending.extend(objects)
        if len(self.pending) >= BATCH_OBJECTS:
            await self._flush()
        self.new_cache[ino] = (signature, d, tuple(counts))
        return d, tuple(counts)

    async def _flush(self) -> None:
        batch, self.pending = self.pending, []
        self.generations.update(await self.objects.ensure(batch))

    async def walk(self, root: int) -> tuple[bytes, tuple]:
        """Post-order over the subtree without recursion: (digest, counts) of the top."""
        results: dict[int, tuple[bytes, tuple]] = {}
        stack: list[tuple[int, bool]] = [(root, False)]
        visited = 0
        while stack:
            ino, expanded = stack.pop()
            if expanded:
                children = {c: results.pop(c) for c in self._subdirs.pop(ino)}
                results[ino] = await self._directory(ino, children)
                self.done_dirs += 1
                if self.progress is not None:
                    self.progress(self.done_dirs, visited)
                continue
            visited += 1
            subdirs = [row.id for _, row in self._listing(ino) if row.is_dir]
            self._subdirs[ino] = subdirs
            stack.append((ino, True))
            stack.extend((c, False) for c in subdirs)
            if visited % 256 == 0:
                await trio.sleep(0)
        return results[root]

    # ------------------------------------------------------------------ the whole publish
    async def run(self) -> PublishResult:
        started = time.monotonic()
        state, files = self.state, self.files
        if note_expiry(files, state):
            raise UserError(f"share {state.name!r} expired on {format_time(state.expires)}: give --expires "
                            "to publish it again")
        root = self.resolve_root()
        try:
            top_digest, counts = await self.walk(root)
            await self._flush()
            known = self.objects.known(top_digest)
            top_generation = known.generation if known is not None else self.generations[top_digest]
            seq = await self._post_root(root, top_digest, top_generation, counts)
            keyring = await self._post_keyring() if self._keyring_needed() else 0
        finally:
            self.objects.close()
        # Everything is on the server: now remember it. (The record keeps every object it
        # knows: objects of unchanged directories are not listed again, and what it names
        # stays on the server; a new epoch starts a new record.)
        self.objects.record.rewrite(set(self.objects.record.entries))
        self.cache.save(self.new_cache)
        state.published = time.time()
        files.save(state)
        result = PublishResult(state.name, state.epoch, seq, keyring, counts[0], counts[1], counts[2], self.changed,
                               self.objects.posted, self.objects.posted_bytes, time.monotonic() - started)
        files.audit().record("publish", epoch=state.epoch, seq=seq, keyring=keyring or state.keyring,
                             key=state.key_fingerprint(), signer=fingerprint(state.verify_key()),
                             dirs=counts[0], files=counts[1], bytes=counts[2], changed_dirs=self.changed,
                             objects_posted=self.objects.posted, expires=state.expires)
        return result

    async def _post_root(self, root_ino: int, top: bytes, generation: int, counts: tuple) -> int:
        state = self.state
        row = self.index.get_inode(root_ino)
        seq = state.seq + 1
        while await number_taken(self.client, self.epoch_keys, state.share_bytes, seq):
            seq += 1  # a run that died after posting it, or someone squatting the number
        document = Root(share=state.share_id, epoch=state.epoch, seq=seq, name=state.name,
                        top={"mode": row.mode, "uid": row.uid, "gid": row.gid, "mtime_ns": row.mtime_ns,
                             "ctime_ns": row.ctime_ns},
                        tree=[top.hex(), generation],
                        data={"scope": self.ctx.scope.hex(), "cipher": self.settings.cipher,
                              "pad": pad_to(self.settings.pad_articles or None),
                              "domain": self.ctx.volume_keys.domain, "group": self.settings.group},
                        stats={"dirs": counts[0], "files": counts[1], "bytes": counts[2]},
                        expires=state.expires)
        payload = await trio.to_thread.run_sync(document.sign, state.signer())
        await post_document(self.poster, self.epoch_keys, state.share_bytes, seq, payload, self.settings.group,
                            self.limiter)
        state.seq, state.tree = seq, [top.hex(), generation]
        return seq

    def _keyring_needed(self) -> bool:
        state = self.state
        return state.keyring_stale or state.keyring_epoch != state.epoch or not state.keyring

    async def _post_keyring(self) -> int:
        return await post_keyring(self.state, self.client, self.settings.group, self.poster, self.limiter)


async def post_keyring(state: ShareState, client: NNTPClient, group: str, poster: ArticlePoster | None = None,
                       limiter: trio.CapacityLimiter | None = None) -> int:
    """Post the next keyring (the epoch key wrapped for whoever may read); its number."""
    poster = poster or ArticlePoster(client, VERIFY)
    limiter = limiter or trio.CapacityLimiter(2)
    key, share = state.epoch_bytes, state.share_bytes
    if state.mode == "open":
        stanzas = [open_stanza(key)]
    elif state.mode == "password":
        if state.password_stanza is None:
            raise UserError(f"share {state.name!r} has no password stanza for epoch {state.epoch}")
        stanzas = [state.password_stanza]
    else:
        stanzas = [x25519_stanza(key, parse_public_key(r["key"]), share, state.epoch) for r in state.recipients]
    access = state.access_keys()
    number = state.keyring + 1
    while await number_taken(client, access, share, number):
        number += 1
    ring = Keyring(share=state.share_id, number=number, epoch=state.epoch, stanzas=stanzas, expires=state.expires)
    payload = await trio.to_thread.run_sync(ring.sign, state.signer())
    await post_document(poster, access, share, number, payload, group, limiter)
    state.keyring, state.keyring_epoch, state.keyring_stale = number, state.epoch, False
    return number


def resolve_path(index: Index, path: str) -> int:
    """The directory inode at `path` ("/a/b", from the volume's root)."""
    ino = ROOT_INODE
    for part in [p for p in path.split("/") if p and p != "."]:
        if part == "..":
            raise UserError(f"{path}: '..' is not allowed in a share path")
        child = index.lookup_entry(ino, part.encode("utf-8", "surrogateescape"))
        if child is None:
            raise UserError(f"{path}: no such folder in the volume")
        ino = child.id
        if not child.is_dir:
            raise UserError(f"{path}: not a folder")
    row = index.get_inode(ino)
    if not stat.S_ISDIR(row.mode):
        raise UserError(f"{path}: not a folder")
    return ino


def format_time(value: float | None) -> str:
    if value is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(value))


async def publish(files: ShareFiles, state: ShareState, index: Index, volume_keys: VolumeKeys,
                  settings: VolumeSettings, client: NNTPClient, **options) -> PublishResult:
    return await Publisher(files, state, index, volume_keys, settings, client, **options).run()


async def publish_mounted(volume, name: str, index: Index, volume_keys: VolumeKeys, client: NNTPClient, data,
                          model=None, *, rescan: bool = False, progress=None) -> dict:
    """`share publish` of a mounted volume, run by its mount daemon (the control request
    "share_publish"): everything not posted yet is posted first, the sizes and times the fs
    model holds in memory for files still open are written to the index (the kernel's own
    mtime of a file closed a moment ago arrives before its release does), and a file
    written during the walk is waited for."""

    async def settle() -> None:
        await data.flush_all()
        if model is not None:
            model.persist_pending()

    files = ShareFiles(volume, name)
    with files.locked():
        state = files.load()
        await settle()
        result = await publish(files, state, index, volume_keys, volume.load(), client,
                               is_dirty=lambda ino: data.dirty_size(ino) is not None, wait_clean=settle,
                               rescan=rescan, progress=progress)
    return result.as_dict()
