"""Level 2: incremental index backups and restores against a real INN server.

Each test gets its own INN, so server-side article counts are exact. The index is built
through the Index API (thousands of files and segment rows) and backed up with 32 KiB
chunks, so even this small index spans dozens of chunks. Damage is done the way a server
does it: an article file in INN's spool edited or deleted.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
import trio

from usenetfs.backup import BackupRun, bootstrap_keys, post_backup, restore
from usenetfs.backup import articles
from usenetfs.backup.chunks import chunk_ident, digest_file, hash_key
from usenetfs.backup.record import ChunkRecord
from usenetfs.codec.segment import SegmentCodec
from usenetfs.errors import UserError
from usenetfs.home import Home
from usenetfs.index import ROOT_INODE, VOLUME_SCOPE, Index, extent
from usenetfs.index.snapshot import copy_consistent
from usenetfs.nntp.client import NNTPClient, PoolOptions
from usenetfs.nntp.config import ServerConfig
from usenetfs.nntp.posting import ArticlePoster, VerifyOptions
from usenetfs.nntp.retry import scaled_policies
from usenetfs.store.base import segment_key
from usenetfs.volume import Volume

GROUP = "alt.binaries.test"
PASSPHRASE = "correct horse battery staple"
CHUNK = 32 * 1024
QUICK = dict(chunk_size=CHUNK, verify=VerifyOptions(delay=0.0, tries=3, interval=0.05))
SEG = 716_800
REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


def add_files(index: Index, directory: bytes, count: int) -> None:
    """`count` files in a new directory, as uploads leave them: every tenth one big (a run
    of 30 segments), the others one small segment each."""
    with index.batch():
        parent = index.make_node(ROOT_INODE, directory, DIR, 1000, 1000)
        for k in range(count):
            node = index.make_node(parent.id, b"IMG_%06d.jpg" % k, REG, 1000, 1000)
            segments = 30 if k % 10 == 9 else 1
            first = index.new_segment_run(VOLUME_SCOPE, segments, SEG, 5000)
            for seg in range(first, first + segments):
                index.mark_posted(seg, 0, SEG + 37, seg)
                index.mark_verified(seg, 0)
            size = (segments - 1) * SEG + 5000
            index.update_inode(node.id, size=size)
            index.set_extents(node.id, [extent(0, size, first, 0, SEG)])


class Machine:
    """A volume in its own home, its index open, as the mount daemon holds it."""

    def __init__(self, root: Path, server):
        self.root = root
        self.server = server
        self.home = Home(root / "config", root / "data", root / "cache")
        self.volume = Volume.create(self.home, "vol", servers=[server.url], group=GROUP,
                                    passphrase=PASSPHRASE, log_n=10)
        self.settings = self.volume.load()
        self.keys = self.volume.unlock(PASSPHRASE)
        self.scope = bytes.fromhex(self.settings.volume_id)
        self.bootstrap = bootstrap_keys(PASSPHRASE, self.scope)
        self.index = Index.create(self.volume.index_file, scope_id=self.scope)

    def client(self) -> NNTPClient:
        return NNTPClient(ServerConfig(self.server.host, self.server.port), PoolOptions(max_connections=8),
                          policies=scaled_policies(0.01))

    async def backup(self, client, **options):
        return await post_backup(self.volume, self.volume.load(), self.keys, client, self.bootstrap,
                                 **{**QUICK, **options})

    def dump(self) -> list[str]:
        return dump(self.volume.index_file)

    def message_id(self, digest: bytes, generation: int) -> str:
        return self.keys.message_id(chunk_ident(self.scope, digest), generation)

    def recorded(self) -> dict:
        return ChunkRecord.load(self.volume.backup_record_file, self.settings.volume_id).entries


def dump(path: Path) -> list[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


async def restore_into(root: Path, machine: Machine, client) -> tuple[Volume, int]:
    home = Home(root / "config", root / "data", root / "cache")
    return await restore(home, "vol", machine.settings.volume_id, PASSPHRASE, client, ["local"])


def spool_file(server, message_id: str) -> Path:
    """The file INN keeps article `message_id` in (tradspool: one file per article)."""
    needle = f"Message-ID: {message_id}\r\n".encode()
    for path in (server.spool_dir / "articles").rglob("*"):
        if path.is_file() and needle in path.read_bytes()[:2000]:
            return path
    raise AssertionError(f"{message_id} is not in the spool")


def corrupt_body(path: Path) -> None:
    """Change one letter in the middle of the yEnc data (the CRC then disagrees)."""
    article = bytearray(path.read_bytes())
    start = article.index(b"=ypart") + 100
    for i in range(start + (len(article) - start) // 2, len(article)):
        if chr(article[i]).isalpha():
            article[i] = ord("a") if article[i] != ord("a") else ord("b")
            break
    path.write_bytes(bytes(article))


@pytest.fixture
def machine(tmp_path, inn) -> Machine:
    """A volume with 10,000 files (~100K segment rows) on the shared INN."""
    machine = Machine(tmp_path / "first", inn)
    add_files(machine.index, b"photos", 10_000)
    yield machine
    machine.index.close()


@pytest.fixture
def lone_machine(tmp_path, fresh_inn) -> Machine:
    """The same on a server of its own, whose articles can be counted."""
    machine = Machine(tmp_path / "first", fresh_inn)
    add_files(machine.index, b"photos", 10_000)
    yield machine
    machine.index.close()


async def test_a_second_backup_posts_only_the_changed_chunks(lone_machine):
    machine = lone_machine
    server = machine.server
    async with machine.client() as client:
        first = await machine.backup(client)
        assert first.seq == 1 and first.chunks >= 40
        assert first.posted == len(machine.recorded())  # every distinct chunk, index and list
        assert server.article_count() == first.posted + 2  # + the manifest and the bootstrap

        add_files(machine.index, b"holiday", 100)
        second = await machine.backup(client)
        assert second.seq == 2 and second.chunks >= first.chunks
        assert 1 <= second.posted <= first.posted // 4
        assert server.article_count() == first.posted + 2 + second.posted + 1

        third = await machine.backup(client)  # nothing changed: only a manifest
        assert (third.seq, third.posted) == (3, 0)
        assert server.article_count() == first.posted + second.posted + 4


async def test_restore_of_an_incremental_backup_is_the_same_index(machine, tmp_path):
    async with machine.client() as client:
        await machine.backup(client)
        add_files(machine.index, b"holiday", 100)
        machine.index.rename(ROOT_INODE, b"photos", ROOT_INODE, b"pictures")
        await machine.backup(client)
        expected = machine.dump()
        volume, seq = await restore_into(tmp_path / "second", machine, client)
    assert seq == 2
    assert dump(volume.index_file) == expected
    restored = Index.open(volume.index_file)
    try:
        assert restored.stats() == machine.index.stats()
        assert restored.lookup(ROOT_INODE, b"holiday") is not None
    finally:
        restored.close()
    settings = volume.load()
    assert (settings.volume_id, settings.last_backup, settings.group) == (machine.settings.volume_id, 2, GROUP)
    # The new machine knows every chunk is on the server: its first backup posts none.
    assert ChunkRecord.load(volume.backup_record_file, settings.volume_id).entries.keys() == \
        machine.recorded().keys()


async def test_a_damaged_or_missing_chunk_stops_restore_and_installs_nothing(machine, tmp_path):
    async with machine.client() as client:
        await machine.backup(client)
        digests = sorted(machine.recorded().items())
        (tampered, seen_t), (deleted, seen_d) = digests[0], digests[1]

        corrupt_body(spool_file(machine.server, machine.message_id(tampered, seen_t.generation)))
        target = tmp_path / "second"
        with pytest.raises(UserError) as failure:
            await restore_into(target, machine, client)
        message = str(failure.value)
        assert "index backup 1 is damaged on the server" in message and "does not decode" in message
        assert "\n" not in message
        assert not list((target / "data").rglob("*.sqlite*")) and not list((target / "config").rglob("*.json"))

        spool_file(machine.server, machine.message_id(deleted, seen_d.generation)).unlink()
        with pytest.raises(UserError) as failure:
            await restore_into(target, machine, client)
        assert "is missing" in str(failure.value) or "does not decode" in str(failure.value)
        assert not Volume(Home(target / "config", target / "data", target / "cache"), "vol").exists()


async def test_a_crash_before_the_manifest_leaves_the_previous_backup(machine, tmp_path):
    async with machine.client() as client:
        await machine.backup(client)
        before = machine.dump()
        add_files(machine.index, b"holiday", 100)

        crashed = BackupRun(machine.volume, machine.volume.load(), machine.keys, client, **QUICK)
        await crashed.take_snapshot()
        await crashed.post_chunks()  # ... and the process dies here
        crashed.close()
        assert crashed.stats.posted >= 1

        volume, seq = await restore_into(tmp_path / "second", machine, client)
        assert seq == 1 and dump(volume.index_file) == before

        resumed = await machine.backup(client)  # the chunks are on the server and noted
        assert (resumed.seq, resumed.posted) == (2, 0)
        volume, seq = await restore_into(tmp_path / "third", machine, client)
        assert seq == 2 and dump(volume.index_file) == machine.dump()


async def test_chunks_posted_by_a_run_that_lost_its_record_are_found_not_posted(lone_machine):
    machine = lone_machine
    async with machine.client() as client:
        first = await machine.backup(client)
        articles = machine.server.article_count()
        machine.volume.backup_record_file.unlink()
        again = await machine.backup(client)
    assert (again.posted, again.found) == (0, first.posted)
    assert machine.server.article_count() == articles + 1  # the manifest


async def test_a_manifest_posted_but_not_noted_is_not_overwritten(machine, tmp_path):
    async with machine.client() as client:
        await machine.backup(client)
        settings = machine.volume.load()
        settings.last_backup = 0  # the run died after posting manifest 1, before saving
        machine.volume.save(settings)
        add_files(machine.index, b"holiday", 10)
        second = await machine.backup(client)
        assert second.seq == 2
        volume, seq = await restore_into(tmp_path / "second", machine, client)
    assert seq == 2 and dump(volume.index_file) == machine.dump()


async def test_a_chunk_gone_from_the_server_is_posted_again_when_rechecked(machine, tmp_path):
    async with machine.client() as client:
        first = await machine.backup(client)
        # A chunk of the index, not the chunk list's (1 in ~80 recorded chunks): a lost
        # list chunk is posted again as it was, and the counts below would not hold.
        digest = sorted(set(first.basis.digests))[5]
        seen = machine.recorded()[digest]
        spool_file(machine.server, machine.message_id(digest, seen.generation)).unlink()

        unchecked = await machine.backup(client)  # seen recently: trusted, not looked for
        assert (unchecked.rechecked, unchecked.posted) == (0, 0)
        checked = await machine.backup(client, recheck_after=0)
        # Every index chunk looked for; the lost one posted again, and the chunk list,
        # which names its new generation (one list chunk here).
        assert checked.list_chunks == 1
        assert (checked.rechecked, checked.lost, checked.posted) == (first.posted - 1, 1, 2)
        assert machine.recorded()[digest].generation == seen.generation + 1

        volume, seq = await restore_into(tmp_path / "second", machine, client)
    assert seq == 3 and dump(volume.index_file) == machine.dump()


async def test_restore_without_any_backup_says_so(inn, tmp_path):
    machine = Machine(tmp_path / "first", inn)
    try:
        async with machine.client() as client:
            with pytest.raises(UserError, match="no backup of this volume"):
                await restore_into(tmp_path / "second", machine, client)
    finally:
        machine.index.close()


async def test_authentic_articles_with_other_bytes_are_never_taken_for_a_chunk(machine, tmp_path):
    """The keyed hash, not just the AEAD, decides: an article that authenticates under a
    chunk's id but holds other bytes (what two chunks sharing 64 bits of hash would
    look like) is stepped over when posting, and refused when restoring."""
    key = hash_key(machine.keys)
    copy_consistent(machine.volume.index_file, tmp_path / "peek.sqlite")
    squatted = digest_file(tmp_path / "peek.sqlite", key, CHUNK)[3]
    async with machine.client() as client:
        poster = ArticlePoster(client, VerifyOptions(delay=0.0, tries=3, interval=0.05))
        limiter = trio.CapacityLimiter(2)
        await articles.post(poster, machine.keys, chunk_ident(machine.scope, squatted), b"other bytes",
                            GROUP, limiter)
        await machine.backup(client)
        assert machine.recorded()[squatted].generation == 1  # generation 0 holds the other bytes
        volume, _ = await restore_into(tmp_path / "second", machine, client)
        assert dump(volume.index_file) == machine.dump()

        victim, seen = next((d, s) for d, s in sorted(machine.recorded().items()) if d != squatted)
        forged = await trio.to_thread.run_sync(lambda: SegmentCodec(
            segment_key(machine.keys.index_key, chunk_ident(machine.scope, victim))).encode(
                chunk_ident(machine.scope, victim), b"forged but authentic").body)
        path = spool_file(machine.server, machine.message_id(victim, seen.generation))
        article = path.read_bytes()
        # INN's spool keeps articles in wire format: CRLF, dot-stuffed (our bodies never need
        # it), ending with the "." line.
        path.write_bytes(article[:article.index(b"\r\n\r\n") + 4] + forged + b".\r\n")
        with pytest.raises(UserError, match="does not match its hash"):
            await restore_into(tmp_path / "third", machine, client)


def whole_file_digests(machine: Machine) -> list[bytes]:
    """The chunk digests of the index file as it is now, read whole (the truth the
    incremental ones must equal); the index is checkpointed first."""
    assert machine.index.checkpoint("TRUNCATE")[2] >= 0
    return digest_file(machine.volume.index_file, hash_key(machine.keys), CHUNK)


async def test_backups_of_the_tracked_index_hash_only_the_changed_chunks(machine, tmp_path):
    """The mount's path: the Index tracks the pages written, the backup freezes the file
    instead of copying it, and given the last backup's digests hashes only the chunks
    those pages fall in. The digests must equal a hash of the whole file, and the
    restore must be the same index."""
    index = machine.index
    index.track_changes(None)  # as a mount without a note starts: what changed is not known
    async with machine.client() as client:
        first = await machine.backup(client, index=index)
        assert not first.copied and first.hashed == first.chunks >= 40  # no basis: every chunk
        assert not index.changes.lost and not index.changes.pages
        assert list(first.basis.digests) == whole_file_digests(machine)

        add_files(index, b"holiday", 100)
        index.rename(ROOT_INODE, b"photos", ROOT_INODE, b"pictures")
        second = await machine.backup(client, index=index, basis=first.basis)
        assert not second.copied and 1 <= second.hashed <= second.chunks // 4
        assert list(second.basis.digests) == whole_file_digests(machine)
        assert index.checkpoints_held is False

        third = await machine.backup(client, index=index, basis=second.basis)  # nothing written
        assert third.hashed == 0 and third.posted == 0
        expected = machine.dump()
        volume, seq = await restore_into(tmp_path / "second", machine, client)
    assert seq == 3 and dump(volume.index_file) == expected


async def test_checkpoints_resume_before_a_backup_posts_and_it_holds_the_snapshot(machine, tmp_path):
    """A backup of few changes reads the chunks to post into memory and lets checkpoints
    go on (a slow server must not hold them while the WAL grows): what it posts is still
    the index as of its snapshot, though the file changes under it."""
    index = machine.index
    index.track_changes(None)
    async with machine.client() as client:
        first = await machine.backup(client, index=index)
        assert first.held == first.posted - first.list_chunks  # every new chunk, once
        add_files(index, b"holiday", 100)

        run = BackupRun(machine.volume, machine.volume.load(), machine.keys, client, index=index,
                        basis=first.basis, **QUICK)
        await run.take_snapshot()
        assert index.checkpoints_held is False and run.stats.held >= 1
        expected = machine.dump()
        add_files(index, b"later", 100)
        assert index.checkpoint("TRUNCATE")[2] >= 0  # the snapshot's pages are overwritten
        await run.post_chunks()
        await run.post_manifest(machine.bootstrap)
        run.close(done=True)
        volume, seq = await restore_into(tmp_path / "second", machine, client)
        assert seq == 2 and dump(volume.index_file) == expected

        third = await machine.backup(client, index=index, basis=run.basis)  # "later" was left for it
        assert third.hashed >= 1 and list(third.basis.digests) == whole_file_digests(machine)


async def test_a_lost_chunk_changed_since_the_snapshot_fails_the_run_and_the_next_posts_it(machine, tmp_path):
    """A re-checked chunk found gone is read from the live file again; if checkpoints
    have changed it since the snapshot, the run fails in one line (it cannot post what the
    snapshot held) and the next backup posts the chunk's new bytes."""
    index = machine.index
    index.track_changes(None)
    async with machine.client() as client:
        first = await machine.backup(client, index=index)
        run = BackupRun(machine.volume, machine.volume.load(), machine.keys, client, index=index,
                        basis=first.basis, **{**QUICK, "recheck_after": 0})
        await run.take_snapshot()  # nothing new: checkpoints resume at once
        assert run.stats.held == 0 and index.checkpoints_held is False
        add_files(index, b"holiday", 100)
        now = whole_file_digests(machine)
        changed = next(n for n, digest in enumerate(first.basis.digests) if now[n] != digest)
        lost = first.basis.digests[changed]
        spool_file(machine.server, machine.message_id(lost, machine.recorded()[lost].generation)).unlink()
        with pytest.raises(UserError, match=f"index chunk {changed} is gone from the server and has changed") as failure:
            await run.post_chunks()
        assert "\n" not in str(failure.value)
        run.close()
        second = await machine.backup(client, index=index, basis=first.basis)
        assert second.seq == 2 and list(second.basis.digests) == now
        volume, seq = await restore_into(tmp_path / "second", machine, client)
    assert seq == 2 and dump(volume.index_file) == machine.dump()


async def test_a_failed_backup_leaves_its_pages_for_the_next(machine):
    index = machine.index
    changes = index.track_changes()
    async with machine.client() as client:
        first = await machine.backup(client, index=index)
        add_files(index, b"holiday", 100)
        dead = NNTPClient(ServerConfig("127.0.0.1", 9), PoolOptions(max_connections=1),
                          policies=scaled_policies(0.001))
        async with dead:
            with pytest.raises(Exception):
                await machine.backup(dead, index=index, basis=first.basis)
        assert index.checkpoints_held is False and changes.pages  # given back
        second = await machine.backup(client, index=index, basis=first.basis)
        assert 1 <= second.hashed < second.chunks
        assert list(second.basis.digests) == whole_file_digests(machine)


async def test_an_index_a_reader_keeps_from_freezing_is_copied(machine):
    index = machine.index
    index.track_changes()
    add_files(index, b"holiday", 10)  # frames in the WAL that the reader below pins
    reader = sqlite3.connect(machine.volume.index_file)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM inodes").fetchone()  # a read snapshot before them?
        add_files(index, b"later", 10)  # ... and frames after it: the checkpoint cannot copy these
        async with machine.client() as client:
            stats = await machine.backup(client, index=index)
        assert stats.copied and stats.hashed == stats.chunks
    finally:
        reader.close()
    assert list(stats.basis.digests) != [] and index.checkpoints_held is False
