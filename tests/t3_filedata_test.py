"""Level 3: FileData (write-back staging, packing, upload, read-through) on a real Index
and a real LocalSegmentStore (one test on NNTPSegmentStore against INN).

`FS` below plays the fs layer's part of the contract (index size updates, truncate order,
release with the parent as group, forget on delete). Every test ends with a clean fsck.
"""

from __future__ import annotations

import os
import random
import stat
from contextlib import asynccontextmanager

import pytest
import trio

from usenetfs.data import DataUnavailable, FileData
from usenetfs.data import staging
from usenetfs.data import uploader as uploader_module
from usenetfs.data.staging import SPARES_BATCH, SPARES_LOW, SPARES_MAX, SPARES_TARGET, SYNCFS_FROM, Staging, fsync_paths
from usenetfs.index import ROOT_INODE, VOLUME_SCOPE, Index
from usenetfs.index.schema import DEAD, VERIFIED
from usenetfs.keys import VolumeKeys
from usenetfs.nntp import errors as E
from usenetfs.nntp.client import NNTPClient, PoolOptions
from usenetfs.nntp.config import ServerConfig
from usenetfs.nntp.posting import VerifyOptions
from usenetfs.nntp.retry import scaled_policies
from usenetfs.store import LocalSegmentStore, NNTPSegmentStore

SEG = 64 * 1024  # small segments: many-segment files stay cheap to make
FAST = dict(
    segment_size=SEG,
    pack_threshold=16 * 1024,
    idle_seconds=0.2,
    release_delay=0.05,
    retry_base=0.05,
    retry_max=0.2,
    read_retries=2,
    read_retry_delay=0.01,
)


@pytest.fixture
def index(tmp_path):
    ix = Index.create(tmp_path / "index.db")
    yield ix
    assert ix.fsck() == []
    ix.close()


@pytest.fixture
def keys():
    return VolumeKeys(os.urandom(32))


@pytest.fixture
def store(tmp_path, keys):
    return LocalSegmentStore(tmp_path / "store", keys)


class FS:
    """The fs layer's side of the contract, minimal."""

    def __init__(self, index: Index, data: FileData):
        self.index = index
        self.data = data

    def mkdir(self, name: bytes, parent: int = ROOT_INODE) -> int:
        return self.index.make_node(parent, name, stat.S_IFDIR | 0o755, 0, 0).id

    async def create(self, name: bytes, parent: int = ROOT_INODE) -> int:
        ino = self.index.make_node(parent, name, stat.S_IFREG | 0o644, 0, 0).id
        await self.data.open_for_write(ino, 0, truncate=True)
        return ino

    def size(self, ino: int) -> int:
        dirty = self.data.dirty_size(ino)
        return self.index.get_inode(ino).size if dirty is None else dirty

    async def write(self, ino: int, offset: int, data: bytes) -> None:
        n = await self.data.write(ino, offset, data)
        assert n == len(data)
        size = self.index.get_inode(ino).size
        if offset + n > size:  # no await between the write and the size update
            self.index.update_inode(ino, size=offset + n)

    async def read(self, ino: int, offset: int = 0, length: int | None = None) -> bytes:
        size = self.size(ino)
        if length is None:
            length = size - offset
        return await self.data.read(ino, offset, length, size)

    async def truncate(self, ino: int, size: int) -> None:
        self.index.truncate(ino, size)
        await self.data.truncate(ino, size)

    async def write_file(self, name: bytes, content: bytes, parent: int = ROOT_INODE, chunk: int = 128 * 1024) -> int:
        ino = await self.create(name, parent)
        for pos in range(0, len(content), chunk):
            await self.write(ino, pos, content[pos : pos + chunk])
        self.data.release(ino, parent)
        return ino

    def delete(self, name: bytes, parent: int = ROOT_INODE) -> None:
        ino = self.index.unlink(parent, name)
        self.index.delete_inode(ino)
        self.data.forget(ino)


@asynccontextmanager
async def mounted(index, store, cache_dir, **options):
    """A FileData with its uploader running, like a mount."""
    data = FileData(index, store, cache_dir, **{**FAST, **options})
    await data.recover()
    async with trio.open_nursery() as nursery:
        await nursery.start(data.run)
        try:
            yield FS(index, data)
        finally:
            nursery.cancel_scope.cancel()
    data.close()


async def fresh_read(index, store, tmp_path, ino: int) -> bytes:
    """Read a clean file through a brand-new FileData: empty caches, nothing staged."""
    cache = tmp_path / f"fresh-{os.urandom(4).hex()}"
    async with mounted(index, store, cache) as fs:
        assert fs.data.dirty_size(ino) is None
        return await fs.read(ino)


def segments_of(index: Index, ino: int) -> set[int]:
    out = set()
    for row in index.extents(ino):
        out.update(range(row.segment, row.last_segment + 1))
    return out


def staged(tmp_path, cache="cache") -> list[str]:
    """The staging directory's files, less the spare pool (empty files kept for reuse)."""
    return sorted(name for name in os.listdir(tmp_path / cache / "staging") if not name.startswith("spare-"))


class GatedStore(LocalSegmentStore):
    """The real local store, with a gate in front of put (to hold uploads in flight),
    an optional number of puts that fail first, and call counters."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = trio.Event()
        self.gate.set()
        self.entered = 0
        self.fail_next = 0
        self.fail_calls: set[int] = set()  # put calls (1-based, in order) that fail
        self.gets: dict[int, int] = {}

    async def put(self, seg, scope_id, payload):
        self.entered += 1
        call = self.entered
        await self.gate.wait()
        if self.fail_next or call in self.fail_calls:
            self.fail_next = max(0, self.fail_next - 1)
            raise E.ServerUnavailable("400 injected failure", 400)
        return await super().put(seg, scope_id, payload)

    async def get(self, seg, scope_id):
        self.gets[seg.id] = self.gets.get(seg.id, 0) + 1
        return await super().get(seg, scope_id)


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# ---------------------------------------------------------------------------------------


async def test_write_and_read_back_while_dirty(index, store, tmp_path):
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        ino = await fs.create(b"f")
        await fs.write(ino, 0, b"hello world")
        await fs.write(ino, 6, b"there, world")
        await fs.write(ino, 100, b"tail")
        assert fs.data.dirty_size(ino) == 104
        expected = b"hello there, world" + bytes(82) + b"tail"
        assert await fs.read(ino) == expected
        assert await fs.read(ino, 6, 5) == b"there"
        assert await fs.read(ino, 200, 10) == b""
        await fs.data.fsync(ino)
        assert staged(tmp_path) == [str(ino)]
        assert fs.data.pending() == {"files": 1, "bytes": 104, "segments": 0}
        assert index.extents(ino) == []  # nothing uploaded yet (idle 60 s)
        await fs.data.flush_all()
        assert fs.data.dirty_size(ino) is None
        assert await fs.read(ino) == expected


async def test_upload_then_read_from_segments(index, store, tmp_path):
    content = os.urandom(5 * SEG + 1234)
    progress = []
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        ino = await fs.write_file(b"big", content)
        await fs.data.flush_all(lambda done, total: progress.append((done, total)))
        assert staged(tmp_path) == []
        assert fs.data.pending() == {"files": 0, "bytes": 0, "segments": 0}
        assert fs.data.health(ino) == "ok"
    assert progress[-1] == (len(content), len(content))
    assert all(done <= total for done, total in progress)
    # One extent row for the whole run of consecutive segments.
    rows = index.extents(ino)
    assert len(rows) == 1
    assert (rows[0].offset, rows[0].length, rows[0].run, rows[0].stride) == (0, len(content), 6, SEG)
    for seg in segments_of(index, ino):
        assert index.segment(seg).state == VERIFIED
    assert index.get_inode(ino).size == len(content)
    assert await fresh_read(index, store, tmp_path, ino) == content
    # Reads at odd offsets across segment boundaries.
    async with mounted(index, store, tmp_path / "cache2") as fs:
        for offset, length in ((0, 1), (SEG - 3, 7), (2 * SEG - 1, SEG + 2), (len(content) - 5, 100)):
            assert await fs.read(ino, offset, length) == content[offset : offset + length]


async def test_small_files_in_a_directory_are_packed(index, store, tmp_path):
    contents = {}
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60, release_delay=0.3) as fs:
        a = fs.mkdir(b"a")
        b = fs.mkdir(b"b")
        for i in range(20):
            name = b"a%d" % i
            contents[name, a] = os.urandom(500 + 97 * i)
        for i in range(5):
            contents[b"b%d" % i, b] = os.urandom(1000)
        inos = {}
        for (name, parent), content in contents.items():
            inos[name, parent] = await fs.write_file(name, content, parent)
        await wait_until(lambda: not fs.data.pending()["files"])  # released: uploaded soon, no flush
    by_dir = {a: set(), b: set()}
    for (name, parent), ino in inos.items():
        rows = index.extents(ino)
        assert len(rows) == 1 and rows[0].run == 1  # one extent pointing inside a segment
        by_dir[parent] |= segments_of(index, ino)
    assert len(by_dir[a]) <= 2  # 20 files (~28 KB) in at most two packs (normally one)
    assert len(by_dir[b]) == 1
    assert not by_dir[a] & by_dir[b]  # never a segment holding files of two directories
    async with mounted(index, store, tmp_path / "cache2") as fs:
        for (name, parent), content in contents.items():
            assert await fs.read(inos[name, parent]) == content


async def test_a_burst_of_small_files_does_not_wake_the_uploader_per_file(index, keys, tmp_path):
    # 300 files released ~1 ms apart, each due `release_delay` after its release. The
    # first one due is packed with all the others; while that pack uploads (held at the
    # gate here), the others' due times still pass, one by one. The uploader serves due
    # times at its tick, so that costs a few wake-ups per tick, not one per file (as it did,
    # on the trio thread, while the burst of small files ran).
    store = GatedStore(tmp_path / "store", keys)
    store.gate = trio.Event()
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60, release_delay=0.3) as fs:
        d = fs.mkdir(b"d")
        await trio.sleep(0.1)  # the spare pool's first refill
        before = fs.data.uploader.wakeups
        started = trio.current_time()
        for i in range(300):
            await fs.write_file(b"f%d" % i, b"x" * 100, d)
            await trio.sleep(0.001)
        await trio.sleep(0.5)  # every file is due, the pack waits at the gate
        span = trio.current_time() - started
        store.gate.set()
        await wait_until(lambda: not fs.data.pending()["files"])
        wakeups = fs.data.uploader.wakeups - before
    assert wakeups <= 2 * span / uploader_module._TICK + 10, (wakeups, span)


async def test_sparse_large_file_has_no_extents_for_holes(index, store, tmp_path):
    async with mounted(index, store, tmp_path / "cache", stream_segments=1000) as fs:
        ino = await fs.create(b"sparse")
        head, tail = os.urandom(100_000), os.urandom(100_000)
        await fs.write(ino, 0, head)
        await fs.write(ino, 3_000_000, tail)
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
    rows = index.extents(ino)
    assert len(rows) == 2
    assert rows[0].offset == 0 and rows[-1].end == 3_100_000
    assert sum(r.length for r in rows) < 400_000  # the 2.9 MB hole is not stored
    assert rows[1].segment <= rows[0].last_segment + 1  # both inside one run
    data = await fresh_read(index, store, tmp_path, ino)
    assert data == head + bytes(3_000_000 - 100_000) + tail


async def test_a_file_being_written_streams_out_before_it_is_closed(index, store, tmp_path):
    content = os.urandom(30 * SEG + 123)
    async with mounted(index, store, tmp_path / "cache", stream_segments=4) as fs:
        ino = await fs.create(b"big")
        for pos in range(0, 20 * SEG, SEG // 2):
            await fs.write(ino, pos, content[pos : pos + SEG // 2])
        d = fs.data.staging.files[ino]
        await wait_until(lambda: d.clean_upto >= 16 * SEG)  # posted while still open
        assert d.open_for_write and index.extents(ino)
        assert index.stats().segments[2] >= 16  # verified
        first_part = segments_of(index, ino)
        await fs.write(ino, 20 * SEG, content[20 * SEG :])
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
        assert fs.data.dirty_size(ino) is None
    assert first_part <= segments_of(index, ino)  # the streamed part was not posted again
    assert len(segments_of(index, ino)) == 31
    assert index.get_inode(ino).size == len(content)
    assert await fresh_read(index, store, tmp_path, ino) == content
    assert index.fsck() == []


async def test_a_streamed_range_written_again_is_uploaded_again(index, store, tmp_path):
    content = bytearray(os.urandom(12 * SEG))
    async with mounted(index, store, tmp_path / "cache", stream_segments=4) as fs:
        ino = await fs.create(b"big")
        await fs.write(ino, 0, bytes(content))
        d = fs.data.staging.files[ino]
        await wait_until(lambda: d.clean_upto == 12 * SEG and d.job is None)
        content[5 * SEG + 7 : 5 * SEG + 1007] = os.urandom(1000)  # below what is clean
        await fs.write(ino, 5 * SEG + 7, bytes(content[5 * SEG + 7 : 5 * SEG + 1007]))
        assert d.clean_upto == 5 * SEG + 7
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
    assert await fresh_read(index, store, tmp_path, ino) == bytes(content)
    assert index.fsck() == []


async def test_appending_to_a_clean_file_uploads_only_the_new_bytes(index, store, tmp_path):
    head, tail = os.urandom(10 * SEG), os.urandom(SEG + 5)
    async with mounted(index, store, tmp_path / "cache") as fs:
        ino = await fs.write_file(b"f", head)
        await fs.data.flush_all()
        before = segments_of(index, ino)
        await fs.data.open_for_write(ino, len(head), truncate=False)
        await fs.write(ino, len(head), tail)  # materialises, then appends
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
    after = segments_of(index, ino)
    assert before < after and len(after - before) == 2  # the tail's segments only
    assert await fresh_read(index, store, tmp_path, ino) == head + tail
    assert index.fsck() == []


async def test_overwrite_part_of_a_clean_file_materialises_it(index, store, tmp_path):
    content = bytearray(os.urandom(3 * SEG + 500))
    async with mounted(index, store, tmp_path / "cache") as fs:
        ino = await fs.write_file(b"f", bytes(content))
        await fs.data.flush_all()
        old_segments = segments_of(index, ino)
    async with mounted(index, store, tmp_path / "cache2", idle_seconds=60) as fs:
        await fs.data.open_for_write(ino, len(content), truncate=False)
        assert fs.data.dirty_size(ino) is None  # opening alone fetches nothing
        await fs.write(ino, SEG + 10, b"X" * 20)
        content[SEG + 10 : SEG + 30] = b"X" * 20
        assert fs.data.dirty_size(ino) == len(content)
        assert await fs.read(ino) == bytes(content)
        await fs.write(ino, len(content), b"appended")
        content += b"appended"
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
    assert await fresh_read(index, store, tmp_path, ino) == bytes(content)
    # Only what follows the first byte written again is uploaded again: the old segments
    # holding bytes before it stay in use, the others are garbage now.
    first = min(old_segments)
    states = [index.segment(seg).state for seg in sorted(old_segments)]
    assert states == [VERIFIED, VERIFIED, DEAD, DEAD]
    assert segments_of(index, ino) >= {first, first + 1}
    assert index.stats().garbage_bytes > 0


async def test_truncate_and_extend(index, store, tmp_path):
    content = os.urandom(2 * SEG)
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        clean = await fs.write_file(b"clean", content)
        dirty = await fs.write_file(b"dirty", content)
        await fs.data.flush_all()
        # A clean file: the index cuts it, nothing is downloaded, bytes past the cut are a hole.
        await fs.truncate(clean, 1000)
        assert fs.data.dirty_size(clean) is None
        assert await fs.read(clean) == content[:1000]
        await fs.truncate(clean, 5000)
        assert await fs.read(clean) == content[:1000] + bytes(4000)
        # A dirty file: the staging file follows.
        await fs.data.open_for_write(dirty, 2 * SEG, truncate=False)
        await fs.write(dirty, 10, b"abc")
        await fs.truncate(dirty, 20)
        assert fs.data.dirty_size(dirty) == 20
        await fs.truncate(dirty, SEG)
        expected_dirty = content[:10] + b"abc" + content[13:20] + bytes(SEG - 20)
        assert await fs.read(dirty) == expected_dirty
        fs.data.release(dirty, ROOT_INODE)
        await fs.data.flush_all()
    assert await fresh_read(index, store, tmp_path, clean) == content[:1000] + bytes(4000)
    assert await fresh_read(index, store, tmp_path, dirty) == expected_dirty
    assert sum(r.length for r in index.extents(dirty)) <= 20 + 4096  # the zero tail is a hole


async def test_forget_drops_staging_and_cancels_its_upload(index, keys, tmp_path):
    store = GatedStore(tmp_path / "store", keys)
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        ino = await fs.write_file(b"a", os.urandom(10_000))
        fs.delete(b"a")
        assert staged(tmp_path) == []
        assert fs.data.pending()["files"] == 0
        # Deleted while its upload is in flight: cancelled, its segments discarded.
        store.gate = trio.Event()
        ino = await fs.write_file(b"b", os.urandom(3 * SEG))
        await wait_until(lambda: store.entered >= 1)
        fs.delete(b"b")
        assert staged(tmp_path) == []
        store.gate.set()
        await wait_until(lambda: fs.data.uploader.active_jobs == 0)
        assert fs.data.pending() == {"files": 0, "bytes": 0, "segments": 0}
        assert fs.data.dirty_size(ino) is None


async def test_writes_during_an_upload_keep_the_file_dirty(index, keys, tmp_path):
    store = GatedStore(tmp_path / "store", keys)
    store.gate = trio.Event()
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        ino = await fs.write_file(b"f", b"first version " * 1000)
        await wait_until(lambda: store.entered >= 1)
        await fs.data.open_for_write(ino, 0, truncate=False)
        await fs.write(ino, 0, b"SECOND")
        store.gate.set()
        await wait_until(lambda: fs.data.uploader.active_jobs == 0)
        assert fs.data.dirty_size(ino) == 14_000  # still dirty: written meanwhile
        assert index.extents(ino)  # ... but the older content was committed
        assert (await fs.read(ino))[:13] == b"SECONDversion"
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
    assert await fresh_read(index, store, tmp_path, ino) == b"SECOND" + (b"first version " * 1000)[6:]


async def test_a_truncate_during_an_upload_leaves_no_live_segment_unreferenced(index, keys, tmp_path):
    # The upload of 3 segments commits after the file was cut to less than one: the rows
    # of the two segments past the new size are cut away, so those segments must die
    # (their bytes garbage), not stay verified with no extent (found by t5_fsx_test).
    store = GatedStore(tmp_path / "store", keys)
    store.gate = trio.Event()
    content = os.urandom(3 * SEG)
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        ino = await fs.write_file(b"f", content)
        await wait_until(lambda: store.entered >= 1)
        await fs.data.open_for_write(ino, 0, truncate=False)
        await fs.truncate(ino, SEG // 2)
        store.gate.set()
        await wait_until(lambda: fs.data.uploader.active_jobs == 0)
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
        assert await fs.read(ino) == content[: SEG // 2]
    assert index.fsck() == []
    stats = index.stats()
    assert stats.garbage_bytes > 0  # the cut segments' bytes, posted and now dead
    assert await fresh_read(index, store, tmp_path, ino) == content[: SEG // 2]


async def test_a_truncate_after_an_upload_survives_a_crash_before_the_staging_file_goes(index, store, tmp_path):
    # Uploaded and committed: the staging file is retired, kept until the commit is durable
    # (sync_delay). A truncate then changes only the index (the file is clean). A crash
    # before the purge makes the next mount adopt the retired staging file and upload it
    # again; that upload must not bring the old length back (found by t5_fsx_test).
    content = os.urandom(3 * SEG + 100)
    cut = SEG + 7
    async with mounted(index, store, tmp_path / "cache", sync_delay=600) as fs:
        ino = await fs.write_file(b"f", content)
        await wait_until(lambda: fs.data.dirty_size(ino) is None)
        assert staged(tmp_path) == [str(ino)]  # retired, not purged yet
        await fs.truncate(ino, cut)
        assert await fs.read(ino) == content[:cut]
        fs.data.uploader.sync_retired = lambda: False  # the "crash": no purge at the end
    assert staged(tmp_path) == [str(ino)]
    async with mounted(index, store, tmp_path / "cache") as fs:
        await fs.data.flush_all()
        assert index.get_inode(ino).size == cut
        assert await fs.read(ino) == content[:cut]
    assert index.fsck() == []
    assert await fresh_read(index, store, tmp_path, ino) == content[:cut]


async def test_a_pack_whose_members_all_went_leaves_no_live_segment_unreferenced(index, keys, tmp_path):
    # Small files packed together over two segments; every file in the second segment is
    # deleted while the pack is in flight: that segment must die with the commit.
    store = GatedStore(tmp_path / "store", keys)
    store.gate = trio.Event()
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60, release_delay=0.05) as fs:
        d = fs.mkdir(b"d")
        names = [b"f%d" % i for i in range(12)]
        for name in names:
            await fs.write_file(name, os.urandom(100_000), parent=d)
        await wait_until(lambda: store.entered >= 1)
        for name in names[6:]:
            fs.delete(name, parent=d)
        store.gate.set()
        await wait_until(lambda: fs.data.uploader.active_jobs == 0)
        await fs.data.flush_all()
    assert index.fsck() == []


async def test_backpressure_makes_writers_wait_not_fail(index, keys, tmp_path):
    store = GatedStore(tmp_path / "store", keys)
    limit = 200 * 1024
    peak = 0
    contents = [os.urandom(48 * 1024) for _ in range(16)]
    async with mounted(index, store, tmp_path / "cache", idle_seconds=600, release_delay=600, staging_limit=limit) as fs:
        store.gate = trio.Event()
        inos = []

        async def writer(i):
            nonlocal peak
            ino = await fs.create(b"f%d" % i)
            inos.append((ino, contents[i]))
            for pos in range(0, len(contents[i]), 16 * 1024):
                await fs.write(ino, pos, contents[i][pos : pos + 16 * 1024])
                peak = max(peak, fs.data.staging.used)
            fs.data.release(ino, ROOT_INODE)

        async with trio.open_nursery() as nursery:
            for i in range(len(contents)):
                nursery.start_soon(writer, i)
            # Uploads are held: writers fill the staging area and then wait, none fails.
            await wait_until(lambda: fs.data.staging.waiting > 0)
            assert fs.data.staging.used <= limit + 16 * 1024 * 16
            store.gate.set()  # uploads drain it (release_delay 600 s: only pressure uploads)
        assert fs.data.staging.used <= limit
        await fs.data.flush_all()
        for ino, content in inos:
            assert await fs.read(ino) == content
    # Writers can overshoot by at most what one round of concurrent writes adds.
    assert peak <= limit + 16 * (16 * 1024 + 4096)


async def test_a_file_larger_than_the_staging_limit_is_still_written(index, store, tmp_path):
    # Only the open file itself fills the staging area: waiting would wait forever.
    async with mounted(index, store, tmp_path / "cache", staging_limit=64 * 1024) as fs:
        content = os.urandom(300 * 1024)
        ino = await fs.write_file(b"big", content)
        await fs.data.flush_all()
    assert await fresh_read(index, store, tmp_path, ino) == content


async def test_crash_recovery_adopts_staging_files(index, keys, tmp_path):
    store = GatedStore(tmp_path / "store", keys)
    store.gate = trio.Event()  # uploads hang: the "crash" happens mid-upload
    contents = {b"small": os.urandom(3000), b"large": os.urandom(4 * SEG), b"idle": os.urandom(100)}
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        inos = {name: await fs.write_file(name, c) for name, c in contents.items() if name != b"idle"}
        inos[b"idle"] = await fs.create(b"idle")
        await fs.write(inos[b"idle"], 0, contents[b"idle"])
        await fs.data.fsync(inos[b"idle"])
        await wait_until(lambda: store.entered >= 2)
        assert index.stats().segments[0] > 0  # rows committed pending before any post
    # The nursery was cancelled without flushing: a crash, as far as the disk knows.
    # (Cancellation discards the rows it can; make some look like a hard crash's leftovers.)
    leftover = index.new_segment_run(VOLUME_SCOPE, 3, SEG)
    assert len(staged(tmp_path)) == 3

    store.gate.set()
    data = FileData(index, store, tmp_path / "cache", **FAST)
    assert await data.recover() == 3
    assert {index.segment(s).state for s in range(leftover, leftover + 3)} == {DEAD}
    async with trio.open_nursery() as nursery:
        await nursery.start(data.run)
        assert data.pending()["files"] == 3
        await data.flush_all()
        nursery.cancel_scope.cancel()
    data.close()
    assert staged(tmp_path) == []
    for name, content in contents.items():
        assert await fresh_read(index, store, tmp_path, inos[name]) == content


async def test_small_files_recovered_after_a_crash_are_packed_with_their_directory(index, keys, tmp_path):
    store = GatedStore(tmp_path / "store", keys)
    store.gate = trio.Event()  # nothing gets posted before the "crash"
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        dirs = [fs.mkdir(name) for name in (b"a", b"b")]
        inos = {(d, i): await fs.write_file(b"f%d" % i, os.urandom(1000 + i), parent=d)
                for d in dirs for i in range(5)}
    store.gate.set()
    data = FileData(index, store, tmp_path / "cache", **FAST)
    assert await data.recover() == 10
    async with trio.open_nursery() as nursery:
        await nursery.start(data.run)
        await data.flush_all()
        nursery.cancel_scope.cancel()
    data.close()
    segments = {d: {r.segment for (dd, _), ino in inos.items() if dd == d for r in index.extents(ino)}
                for d in dirs}
    assert all(len(s) == 1 for s in segments.values())  # one segment per directory
    assert segments[dirs[0]] != segments[dirs[1]]  # never one across directories


async def test_recover_repairs_a_lagging_index_size(index, store, tmp_path):
    # A crash can lose the index's last size update but keep the (fsynced) staging file.
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        ino = await fs.create(b"f")
        await fs.write(ino, 0, b"x" * 5000)
        await fs.data.fsync(ino)
    index.update_inode(ino, size=10)
    # ... and a staging file whose inode is gone is dropped.
    (tmp_path / "cache" / "staging" / "999").write_bytes(b"orphan")
    (tmp_path / "cache" / "staging" / "7.tmp").write_bytes(b"half a materialisation")
    async with mounted(index, store, tmp_path / "cache") as fs:
        assert fs.data.dirty_size(ino) == 5000
        await fs.data.flush_all()
        assert staged(tmp_path) == []
    assert index.get_inode(ino).size == 5000
    assert await fresh_read(index, store, tmp_path, ino) == b"x" * 5000


async def test_failed_uploads_are_retried_with_backoff(index, keys, tmp_path):
    store = GatedStore(tmp_path / "store", keys)
    store.fail_next = 3
    content, small = os.urandom(2 * SEG), os.urandom(100)
    async with mounted(index, store, tmp_path / "cache") as fs:
        ino = await fs.write_file(b"f", content)
        other = await fs.write_file(b"g", small)
        await wait_until(lambda: fs.data.staging.files.get(ino) is None or fs.data.staging.files[ino].failures)
        if fs.data.staging.files.get(ino) is not None:
            assert "upload failing" in fs.data.health(ino)
        await fs.data.flush_all()
        assert fs.data.health(ino) == "ok"
    assert store.fail_next == 0
    assert await fresh_read(index, store, tmp_path, ino) == content
    assert await fresh_read(index, store, tmp_path, other) == small


async def test_a_failed_upload_resumes_where_it_stopped(index, keys, tmp_path):
    store = GatedStore(tmp_path / "store", keys)
    store.fail_calls = {3}
    content = os.urandom(4 * SEG)
    async with mounted(index, store, tmp_path / "cache", upload_concurrency=1) as fs:
        ino = await fs.write_file(b"f", content)
        await fs.data.flush_all()
    assert store.entered == 5  # segments 1, 2, (3 fails), then only 3 and 4 again
    assert index.stats().segments[4] == 0  # nothing thrown away
    assert len(index.extents(ino)) == 1
    assert await fresh_read(index, store, tmp_path, ino) == content


async def test_staging_goes_only_once_the_index_is_durable(index, store, tmp_path):
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60, sync_delay=0.5) as fs:
        ino = await fs.write_file(b"f", b"v1" * 100)
        await wait_until(lambda: fs.data.dirty_size(ino) is None)
        # Clean at once, but its staging file waits for the index sync.
        assert staged(tmp_path) == [str(ino)]
        # Written again before that sync: the new staging file must survive it.
        await fs.data.open_for_write(ino, 200, truncate=False)
        await fs.write(ino, 0, b"v2")
        await trio.sleep(0.7)
        assert staged(tmp_path) == [str(ino)]
        assert fs.data.dirty_size(ino) == 200
        assert await fs.read(ino) == b"v2" + b"v1" * 99
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
        assert staged(tmp_path) == []
        assert fs.data.staging.used == 0
    assert await fresh_read(index, store, tmp_path, ino) == b"v2" + b"v1" * 99


async def test_staging_files_reuse_the_inodes_of_uploaded_ones(index, store, tmp_path):
    """New staging files are renamed from the spare pool, which recycling the staging files
    of uploaded files keeps fed: no inode is allocated or freed per small file."""
    spare_dir = tmp_path / "cache" / "staging"
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60, sync_delay=0) as fs:
        await wait_until(lambda: len(fs.data.staging.spares) >= SPARES_TARGET)  # filled at start
        pool = {(spare_dir / name).stat().st_ino for name in fs.data.staging.spares}
        ino = await fs.write_file(b"a", b"first")
        first_inode = (spare_dir / str(ino)).stat().st_ino
        assert first_inode in pool
        await fs.data.flush_all()
        assert staged(tmp_path) == []
        # The uploaded file's staging file went back to the pool, emptied.
        recycled = [name for name in fs.data.staging.spares if (spare_dir / name).stat().st_ino == first_inode]
        assert len(recycled) == 1 and (spare_dir / recycled[0]).stat().st_size == 0
        taken = len(fs.data.staging.spares)
        second = await fs.write_file(b"b", b"second")
        assert len(fs.data.staging.spares) == taken - 1
        assert (spare_dir / str(second)).stat().st_ino in pool
        await fs.data.flush_all()
        spares = sorted(fs.data.staging.spares)
    # A remount finds the pool again; a spare that is not empty is not reused.
    (spare_dir / spares[0]).write_bytes(b"not empty")
    async with mounted(index, store, tmp_path / "cache", idle_seconds=60) as fs:
        assert spares[0] not in fs.data.staging.spares
        assert not (spare_dir / spares[0]).exists()
        assert set(spares[1:]) <= set(fs.data.staging.spares)
        third = await fs.write_file(b"c", b"third")
        assert await fs.read(third) == b"third"
        await fs.data.flush_all()
    assert await fresh_read(index, store, tmp_path, second) == b"second"


async def test_the_spare_pool_fills_to_its_target_in_batches_and_can_be_off(index, store, tmp_path):
    """A mount's reservoir is bigger than the pool refilled at once: the rest trickles in
    until it is full, and every spare is an empty file. A read-only mount keeps none."""
    target = SPARES_BATCH + SPARES_BATCH // 2
    spare_dir = tmp_path / "cache" / "staging"
    async with mounted(index, store, tmp_path / "cache", spare_files=target) as fs:
        await wait_until(lambda: len(fs.data.staging.spares) >= target)
        await trio.sleep(0.1)
        assert len(fs.data.staging.spares) == target
        on_disk = sorted(name for name in os.listdir(spare_dir) if name.startswith("spare-"))
        assert on_disk == sorted(fs.data.staging.spares)
        assert all((spare_dir / name).stat().st_size == 0 for name in on_disk)
        # Drawn below SPARES_LOW, it is topped up to the target again.
        for i in range(target - SPARES_LOW + 1):
            await fs.write_file(f"f{i}".encode(), b"x")
        await wait_until(lambda: len(fs.data.staging.spares) >= target)
    async with mounted(index, store, tmp_path / "other", spare_files=0) as fs:
        await trio.sleep(0.2)
        assert fs.data.staging.spares == []
        assert not [name for name in os.listdir(tmp_path / "other" / "staging") if name.startswith("spare-")]
    with pytest.raises(ValueError):
        Staging(tmp_path / "bad", 1 << 20, spare_target=SPARES_MAX + 1)


async def test_missing_or_corrupt_segment_is_eio_never_wrong_bytes(index, store, tmp_path):
    content = os.urandom(3 * SEG)
    async with mounted(index, store, tmp_path / "cache") as fs:
        ino = await fs.write_file(b"f", content)
        await fs.data.flush_all()
    first = index.extents(ino)[0].segment
    scope = index.volume_id
    lost = store.path_for(index.segment(first + 1), scope)
    lost.unlink()
    broken = store.path_for(index.segment(first + 2), scope)
    raw = bytearray(broken.read_bytes())
    raw[1000] ^= 0x20
    broken.write_bytes(bytes(raw))
    async with mounted(index, store, tmp_path / "cache2", readahead_bytes=0) as fs:
        assert await fs.read(ino, 0, SEG) == content[:SEG]
        with pytest.raises(DataUnavailable) as info:
            await fs.read(ino, SEG, 10)
        assert (info.value.ino, info.value.segment) == (ino, first + 1)
        with pytest.raises(DataUnavailable):
            await fs.read(ino, 2 * SEG + 5, 10)
        health = fs.data.health(ino)
        assert f"segment {first + 1}" in health and f"segment {first + 2}" in health
        # Writing to the file needs its whole content: that fails too, and stages nothing.
        await fs.data.open_for_write(ino, len(content), truncate=False)
        with pytest.raises(DataUnavailable):
            await fs.data.write(ino, 0, b"x")
        assert fs.data.dirty_size(ino) is None
        assert staged(tmp_path, "cache2") == []
        # O_TRUNC needs nothing from the old content.
        await fs.data.open_for_write(ino, len(content), truncate=True)
        fs.index.truncate(ino, 0)
        await fs.write(ino, 0, b"new")
        fs.data.release(ino, ROOT_INODE)
        await fs.data.flush_all()
        assert fs.data.health(ino) == "ok"
    assert await fresh_read(index, store, tmp_path, ino) == b"new"


async def test_concurrent_reads_fetch_each_segment_once(index, keys, tmp_path):
    store = GatedStore(tmp_path / "store", keys)
    content = os.urandom(4 * SEG)
    async with mounted(index, store, tmp_path / "cache") as fs:
        ino = await fs.write_file(b"f", content)
        await fs.data.flush_all()
    async with mounted(index, store, tmp_path / "cache2", readahead_bytes=0) as fs:
        results = {}

        async def reader(i):
            results[i] = await fs.read(ino, (i % 4) * SEG + 7, 100)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(reader, i)
        for i, got in results.items():
            offset = (i % 4) * SEG + 7
            assert got == content[offset : offset + 100]
        assert sorted(store.gets.values()) == [1, 1, 1, 1]


async def uploaded_file(index, keys, tmp_path, segments: int = 12):
    """(store counting its gets, content, inode, first segment) of a file already uploaded."""
    store = GatedStore(tmp_path / "store", keys)
    content = os.urandom(segments * SEG)
    async with mounted(index, store, tmp_path / "cache") as fs:
        ino = await fs.write_file(b"f", content)
        await fs.data.flush_all()
    return store, content, ino, index.extents(ino)[0].segment


async def test_a_read_of_cached_segments_fetches_nothing(index, keys, tmp_path):
    store, content, ino, first = await uploaded_file(index, keys, tmp_path, segments=3)
    async with mounted(index, store, tmp_path / "cache2", readahead_bytes=0) as fs:
        assert await fs.read(ino, SEG - 10, 20) == content[SEG - 10:SEG + 10]  # two segments
        gets, hits = dict(store.gets), fs.data.cache.hits
        assert await fs.read(ino, SEG - 5, 10) == content[SEG - 5:SEG + 5]
        assert store.gets == gets and fs.data.cache.hits == hits + 2


async def test_sequential_reads_prefetch_ahead(index, keys, tmp_path):
    store, content, ino, first = await uploaded_file(index, keys, tmp_path)
    async with mounted(index, store, tmp_path / "cache2", readahead_bytes=4 * SEG) as fs:
        assert await fs.read(ino, 0, 32 * 1024) == content[: 32 * 1024]
        assert await fs.read(ino, 32 * 1024, 32 * 1024) == content[32 * 1024 : 64 * 1024]
        await wait_until(lambda: first + 2 in fs.data.cache)
        assert fs.data.reader._ra_bytes <= 4 * SEG
        for pos in range(64 * 1024, len(content), 128 * 1024):
            assert await fs.read(ino, pos, 128 * 1024) == content[pos : pos + 128 * 1024]
        assert all(n == 1 for n in store.gets.values())  # prefetched, never fetched twice
        assert fs.data.cache.size <= fs.data.cache.capacity


async def test_a_sequential_read_looks_each_segment_up_about_once(index, keys, tmp_path, monkeypatch):
    # A stream's read-ahead asked the index for a segment's row on every read until its
    # prefetch ran (the budget spent, or the prefetch task started but not running yet,
    # which also started it twice), and the prefetch looked it up again: 154 queries on
    # the trio thread for these 40 segments. Now the row is kept for the prefetch.
    store, content, ino, first = await uploaded_file(index, keys, tmp_path, segments=40)
    calls = []
    real = index.segment
    monkeypatch.setattr(index, "segment", lambda seg: calls.append(seg) or real(seg))
    async with mounted(index, store, tmp_path / "cache2", readahead_bytes=6 * SEG) as fs:
        for pos in range(0, len(content), SEG // 2):  # two reads a segment
            assert await fs.read(ino, pos, SEG // 2) == content[pos : pos + SEG // 2]
        reader = fs.data.reader
        await wait_until(lambda: reader._ra_bytes == 0 and not reader._ra_started)  # all accounted back
    assert len(calls) <= 1.5 * 40, len(calls)
    assert all(n == 1 for n in store.gets.values())  # each fetched once


async def test_reads_of_one_stream_that_finish_out_of_order_keep_the_read_ahead(index, keys, tmp_path):
    """The kernel has two reads of a sequential reader in flight; the later one may finish
    first. That must not count as random access (which stops read-ahead)."""
    store, content, ino, first = await uploaded_file(index, keys, tmp_path)
    async with mounted(index, store, tmp_path / "cache2", readahead_bytes=4 * SEG) as fs:
        chunk = SEG // 2
        assert await fs.read(ino, 0, chunk) == content[:chunk]
        assert await fs.read(ino, 2 * chunk, chunk) == content[2 * chunk:3 * chunk]  # before its neighbour
        assert await fs.read(ino, chunk, chunk) == content[chunk:2 * chunk]
        assert fs.data.reader._seq[ino][1] > 0  # still a sequential stream with a window
        await wait_until(lambda: first + 4 in fs.data.cache)  # prefetched beyond what was read
        # A read far away is random access: the window starts over.
        assert await fs.read(ino, 10 * SEG, chunk) == content[10 * SEG:10 * SEG + chunk]
        assert fs.data.reader._seq[ino][1] == 0


async def test_a_sequential_stream_does_not_fill_the_segment_cache(index, keys, tmp_path):
    """Segments a sequential reader has gone past leave the LRU (the kernel's page cache
    has those bytes): a big streamed file must not push out what random readers use. The
    file's head stays, and a random reader's segments stay."""
    store, content, ino, first = await uploaded_file(index, keys, tmp_path)
    async with mounted(index, store, tmp_path / "cache2", readahead_bytes=2 * SEG) as fs:
        chunk = SEG // 2  # two reads of this size in flight: the segment behind them may still be needed
        for pos in range(0, len(content), chunk):
            assert await fs.read(ino, pos, chunk) == content[pos:pos + chunk]
        cached = [seg for seg in range(first, first + 12) if seg in fs.data.cache]
        assert cached == [first, first + 10, first + 11]  # the head, and the last two
        assert all(n == 1 for n in store.gets.values())  # nothing dropped before its read
        # A stream that starts inside the first segment keeps it too.
        fs.data.cache.clear()
        for pos in range(SEG // 4, 6 * SEG, chunk):
            assert await fs.read(ino, pos, chunk) == content[pos:pos + chunk]
        assert first in fs.data.cache and first + 2 not in fs.data.cache
        # Random access keeps what it reads.
        for seg in (3, 7, 5):
            assert await fs.read(ino, seg * SEG + 100, 1000) == content[seg * SEG + 100:seg * SEG + 1100]
        assert all(first + seg in fs.data.cache for seg in (3, 7, 5))


async def test_segment_cache_is_bounded_in_bytes(index, store, tmp_path):
    content = os.urandom(20 * SEG)
    async with mounted(index, store, tmp_path / "cache") as fs:
        ino = await fs.write_file(b"f", content)
        await fs.data.flush_all()
    async with mounted(index, store, tmp_path / "cache2", cache_bytes=5 * SEG, readahead_bytes=2 * SEG) as fs:
        assert await fs.read(ino) == content
        assert fs.data.cache.size <= 5 * SEG
        first = index.extents(ino)[0].segment
        assert first in fs.data.cache  # the first segment is kept apart from the stream


async def test_end_to_end_on_inn(inn, index, keys, tmp_path):
    config = ServerConfig(inn.host, inn.port)
    verify = VerifyOptions(delay=0.01, tries=5, interval=0.05)
    contents = {b"s%d" % i: os.urandom(300 + 50 * i) for i in range(8)}
    contents[b"big"] = os.urandom(3 * SEG + 7)
    async with NNTPClient(config, PoolOptions(max_connections=3), policies=scaled_policies(0.01)) as client:
        store = NNTPSegmentStore(client, keys, "alt.binaries.test", pad=SEG, verify=verify)
        async with mounted(index, store, tmp_path / "cache") as fs:
            inos = {name: await fs.write_file(name, c) for name, c in contents.items()}
            await fs.data.flush_all()
            assert staged(tmp_path) == []
        small_segments = set().union(*(segments_of(index, inos[b"s%d" % i]) for i in range(8)))
        assert len(small_segments) == 1  # packed
        for name, ino in inos.items():
            assert await fresh_read(index, store, tmp_path, ino) == contents[name]


async def test_extent_map_cache_is_bounded_in_files_and_rows(index, store, tmp_path, monkeypatch):
    from usenetfs.data import reader as reader_module
    from usenetfs.index import extent
    monkeypatch.setattr(reader_module, "EXTENT_CACHE_ROWS", 40)
    monkeypatch.setattr(reader_module, "_MIN_EXTENT_COST", 10)  # at most 4 files
    first = index.new_segment_run(1, 100, SEG)
    inos = []
    for k, rows in enumerate((1, 1, 1, 1, 1, 25, 60)):  # one map per file, holes between rows
        ino = index.make_node(ROOT_INODE, b"f%d" % k, stat.S_IFREG | 0o644, 0, 0).id
        index.update_inode(ino, size=2 * rows * 1000)
        with index.batch():
            index.set_extents(ino, [extent(2 * r * 1000, 1000, first + r) for r in range(rows)])
        inos.append(ino)
    async with mounted(index, store, tmp_path / "cache") as fs:
        reader = fs.data.reader
        for ino in inos:
            assert reader.extents(ino) == index.extents(ino)
        cached = reader._extents
        assert len(cached) <= 4 and cached.currsize <= 40
        assert inos[-1] not in cached  # 60 rows: more than the whole cache, read each time
        assert inos[-2] in cached and sum(len(rows) for rows in cached.values()) <= 40


def test_fsync_paths_syncs_a_big_batch_with_one_syncfs(tmp_path, monkeypatch):
    # The durability pass after many small files: an fsync each would cost a disk flush
    # each, one syncfs covers them all. A file that vanished meanwhile is not an error.
    paths = [tmp_path / f"f{k}" for k in range(SYNCFS_FROM)]
    for path in paths:
        path.write_bytes(b"x")
    syncfs_calls, fsyncs = [], []
    real_syncfs, real_fsync = staging.sync_filesystem, os.fsync
    monkeypatch.setattr(staging, "sync_filesystem", lambda d: syncfs_calls.append(d) or real_syncfs(d))
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    fsync_paths(paths, tmp_path)
    assert syncfs_calls == [tmp_path] and fsyncs == []
    paths[0].unlink()
    fsync_paths(paths[: SYNCFS_FROM - 1], tmp_path)  # a small batch: each file, then the directory
    assert len(syncfs_calls) == 1 and len(fsyncs) == SYNCFS_FROM - 2 + 1


# --- the on-disk segment cache ---------------------------------------------------------


async def test_disk_cache_serves_a_second_mount_without_the_server(index, keys, tmp_path):
    store, content, ino, first = await uploaded_file(index, keys, tmp_path, segments=6)
    disk = tmp_path / "segments"
    options = dict(disk_cache_bytes=4 * SEG + 4096, disk_cache_dir=disk)  # room for four segments
    async with mounted(index, store, tmp_path / "cache2", **options) as fs:
        assert await fs.read(ino) == content
        # Six segments went by; the cache holds the last four it wrote (writes finish in
        # any order: several fetches run at once).
        await wait_until(lambda: len(os.listdir(disk)) == 4 and not fs.data.disk_cache.writing)
        assert fs.data.disk_cache.size <= 4 * SEG + 4096
    kept = sorted(int(name) - first for name in os.listdir(disk))
    gets = dict(store.gets)
    async with mounted(index, store, tmp_path / "cache3", readahead_bytes=0, **options) as fs:  # empty LRU
        for k in kept:
            assert await fs.read(ino, k * SEG, SEG) == content[k * SEG:(k + 1) * SEG]
        assert store.gets == gets  # all from the disk, none from the store
        assert fs.data.disk_cache.hits == 4
        # A damaged entry is noticed, dropped and fetched again: never wrong bytes.
        k = kept[0]
        victim = disk / str(first + k)
        raw = bytearray(victim.read_bytes())
        raw[-1] ^= 1
        victim.write_bytes(bytes(raw))
        fs.data.cache.clear()
        assert await fs.read(ino, k * SEG, 100) == content[k * SEG:k * SEG + 100]
        assert store.gets[first + k] == gets[first + k] + 1


async def test_disk_cache_reopens_in_lru_order_and_drops_leftovers(tmp_path):
    from usenetfs.data.diskcache import DiskCache
    directory = tmp_path / "segments"
    cache = DiskCache(directory, capacity=3 * 1000 + 3 * 64)
    await cache.open()
    for seg in (1, 2, 3):  # one after the other: writes at once finish in any order
        async with trio.open_nursery() as nursery:
            cache.put_soon(nursery, seg, bytes([seg]) * 1000)
    assert await cache.get(1) == bytes([1]) * 1000  # touched: now the newest
    (directory / "9.tmp").write_bytes(b"half")  # a crash mid-write
    reopened = DiskCache(directory, capacity=2 * 1000 + 2 * 64)  # smaller: the oldest must go
    await reopened.open()
    assert 2 not in reopened and 3 in reopened and 1 in reopened
    assert sorted(os.listdir(directory)) == ["1", "3"]
    assert await reopened.get(2) is None and reopened.misses == 1
    async with trio.open_nursery() as nursery:
        reopened.put_soon(nursery, 4, b"x" * 10_000)  # larger than the whole cache: not kept
    assert 4 not in reopened and reopened.size <= reopened.capacity


def test_read_virtual_reads_any_range_of_the_regions_laid_end_to_end(tmp_path):
    """read_virtual against its definition: random files and regions, ranges inside one
    region (the one-pread path), across regions and files, over a vanished file and past
    the end of a file that shrank (zeros)."""
    rng = random.Random(7)
    sources, virtual = [], bytearray()
    for n in range(5):
        path = tmp_path / f"src{n}"
        content = rng.randbytes(rng.randrange(1, 5000))
        path.write_bytes(content)
        regions, pos = [], 0
        while pos < len(content):
            start = min(len(content), pos + rng.randrange(0, 300))
            end = min(len(content), start + rng.randrange(1, 1500))
            if start < end:
                regions.append((start, end))
                virtual += content[start:end]
            pos = end
        sources.append((path, regions))
    # A file that vanished and one that shrank read as zeros where their bytes were.
    gone_at = sum(e - s for _, regions in sources[:2] for s, e in regions)
    gone_len = sum(e - s for s, e in sources[2][1])
    sources[2][0].unlink()
    virtual[gone_at:gone_at + gone_len] = bytes(gone_len)
    shrunk_path, shrunk_regions = sources[4]
    keep = shrunk_regions[-1][0] + (shrunk_regions[-1][1] - shrunk_regions[-1][0]) // 2
    os.truncate(shrunk_path, keep)
    cut = len(virtual) - (shrunk_regions[-1][1] - keep)
    virtual[cut:] = bytes(len(virtual) - cut)
    ranges = [(0, len(virtual)), (0, 1), (len(virtual) - 1, len(virtual))]
    pos = 0
    for _, regions in sources:  # exactly one region each
        for s, e in regions:
            ranges.append((pos, pos + e - s))
            if e - s > 1:
                ranges.append((pos + 1, pos + e - s))
            pos += e - s
    ranges += [tuple(sorted(rng.sample(range(len(virtual) + 1), 2))) for _ in range(300)]
    for start, end in ranges:
        if start < end:
            got = staging.read_virtual(sources, start, end)
            assert type(got) is bytes and got == bytes(virtual[start:end]), (start, end)


async def test_a_failure_to_make_spares_is_logged_once_and_stops_nothing(tmp_path, caplog):
    """Spares that cannot be made (here: the directory is gone; a full disk in life) leave
    the pool as it is, with one warning, and the trickle waits before trying again."""
    pool = Staging(tmp_path / "staging", 1 << 20, spare_target=SPARES_BATCH)
    await pool.refill_spares(10)
    assert len(pool.spares) == 10
    for name in pool.spares:
        (tmp_path / "staging" / name).unlink()
    (tmp_path / "staging").rmdir()
    for _ in range(3):
        await pool.refill_spares(SPARES_BATCH)
    assert len(pool.spares) == 10
    warnings = [r for r in caplog.records if "cannot make spare staging files" in r.getMessage()]
    assert len(warnings) == 1 and "No such file or directory" in warnings[0].getMessage()
    assert pool._spares_retry_at > trio.current_time()
    made, error = staging.create_spares(tmp_path / "staging", ["spare-0"])
    assert made == [] and isinstance(error, FileNotFoundError)


def test_recycling_survives_a_file_it_cannot_empty(tmp_path, caplog):
    """An uploaded staging file that cannot be emptied (here a directory where a file was
    expected: EISDIR) is skipped with one warning; the others still become spares."""
    pool = tmp_path / "staging"
    pool.mkdir()
    odd = pool / "purged-1-1.tmp"
    odd.mkdir()
    good = pool / "purged-2-2.tmp"
    good.write_bytes(b"uploaded already")
    recycled = staging.recycle_paths([odd, good], pool, ["spare-0", "spare-1"])
    assert recycled == ["spare-1"]
    assert (pool / "spare-1").stat().st_size == 0 and not good.exists()
    warnings = [r for r in caplog.records if "cannot recycle" in r.getMessage()]
    assert len(warnings) == 1 and "Is a directory" in warnings[0].getMessage()
