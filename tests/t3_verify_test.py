"""Level 3: `Verifier` (usenetfs.verify) on a real Index, FileData and LocalSegmentStore
(the same codec as on Usenet: damaged articles are real files deleted or overwritten).
The command line and the NNTP side are in t4_cli_ops_test and t5_ops_test."""

from __future__ import annotations

import os
import random

import pytest
import trio

from usenetfs.errors import UserError
from usenetfs.index import MISSING, ROOT_INODE, VERIFIED, Index
from usenetfs.keys import VolumeKeys
from usenetfs.store import LocalSegmentStore
from usenetfs.verify import Verifier

from t3_filedata_test import SEG, index, mounted  # noqa: F401 - index is a fixture


@pytest.fixture
def store(tmp_path):
    return LocalSegmentStore(tmp_path / "store", VolumeKeys(os.urandom(32)))


def segments_of(index: Index, ino: int) -> list[int]:
    return [seg for row in index.extents(ino) for seg in range(row.segment, row.last_segment + 1)]


def article(index: Index, store: LocalSegmentStore, seg: int):
    row = index.segment(seg)
    return store.path_for(row, index.scope_bytes(row.scope))


async def write_tree(fs) -> dict[str, int]:
    docs = fs.mkdir(b"docs")
    inos = {
        "/docs/big.bin": await fs.write_file(b"big.bin", os.urandom(3 * SEG + 100), docs),
        "/docs/one.txt": await fs.write_file(b"one.txt", b"first small file\n" * 10, docs),
        "/docs/two.txt": await fs.write_file(b"two.txt", b"second small file\n" * 10, docs),
        "/top.bin": await fs.write_file(b"top.bin", os.urandom(SEG // 2), ROOT_INODE),
    }
    await fs.data.flush_all()
    return inos


async def test_reports_missing_and_corrupt_segments_with_their_files(index, store, tmp_path):
    async with mounted(index, store, tmp_path / "cache") as fs:
        inos = await write_tree(fs)
        big = segments_of(index, inos["/docs/big.bin"])
        packed = segments_of(index, inos["/docs/one.txt"])
        assert len(big) == 4 and packed == segments_of(index, inos["/docs/two.txt"])  # one pack

        report = await Verifier(index, fs.data.store).run()
        assert report.ok and report.checked == 6 and report.problems == []

        article(index, store, big[1]).unlink()
        path = article(index, store, packed[0])
        body = bytearray(path.read_bytes())
        body[len(body) // 2] ^= 0x01  # one bit flipped mid-article (still valid yEnc text)
        path.write_bytes(bytes(body))

        seen = []
        report = await Verifier(index, fs.data.store, progress=lambda done, total: seen.append((done, total))).run()
        assert not report.ok and report.checked == 6 and report.damaged == 2
        assert [p.segment for p in report.problems] == sorted([big[1], packed[0]])  # in segment order
        missing, corrupt = sorted(report.problems, key=lambda p: p.kind != "missing")
        assert (missing.segment, missing.kind, missing.files) == (big[1], "missing", ["/docs/big.bin"])
        assert (corrupt.segment, corrupt.kind) == (packed[0], "corrupt")
        assert corrupt.files == ["/docs/one.txt", "/docs/two.txt"]
        assert "CRC32" in corrupt.reason or "Tampered" in corrupt.reason
        assert seen[-1] == (6, 6) and [done for done, _ in seen] == sorted(done for done, _ in seen)
        # Without --repair nothing changed in the index.
        assert index.segment(big[1]).state == VERIFIED and index.segment(big[1]).generation == 0


async def test_repair_also_reposts_from_the_disk_cache(index, store, tmp_path):
    # Streamed segments leave the memory LRU (scan resistance); the disk cache keeps them.
    async with mounted(index, store, tmp_path / "cache", disk_cache_bytes=64 * SEG) as fs:
        inos = await write_tree(fs)
        big_ino = inos["/docs/big.bin"]
        content = await fs.read(big_ino)
        big = segments_of(index, big_ino)
        while fs.data.disk_cache.writing or big[2] not in fs.data.disk_cache:
            await trio.sleep(0.01)
        fs.data.cache.clear()  # only the disk has it now
        article(index, store, big[2]).unlink()
        report = await Verifier(index, fs.data.store, repair=True, source=fs.data.cached_payload,
                                on_repaired=fs.data.segment_repaired).run()
        assert report.repaired == 1 and report.problems[0].segment == big[2]
        fs.data.cache.clear()
        fs.data.reader.disk = None  # read past the disk cache: the server has it again
        assert await fs.read(big_ino) == content


async def test_repair_reposts_what_the_cache_holds(index, store, tmp_path):
    async with mounted(index, store, tmp_path / "cache") as fs:
        inos = await write_tree(fs)
        big_ino = inos["/docs/big.bin"]
        content = await fs.read(big_ino)  # now in the read cache
        big = segments_of(index, big_ino)
        top = segments_of(index, inos["/top.bin"])
        fs.data.cache.discard(top[0])  # top.bin was never read: the cache has no copy
        article(index, store, big[2]).unlink()
        article(index, store, top[0]).unlink()

        data = fs.data
        report = await Verifier(index, data.store, repair=True, source=data.cached_payload,
                                on_repaired=data.segment_repaired).run()
        assert report.damaged == 2 and report.repaired == 1 and not report.ok
        fixed, unfixable = sorted(report.problems, key=lambda p: not p.repaired)
        assert fixed.segment == big[2] and fixed.repaired and "generation 1" in fixed.repair
        assert unfixable.segment == top[0] and not unfixable.repaired
        assert "not in the local cache" in unfixable.repair
        row = index.segment(big[2])
        assert (row.state, row.generation) == (VERIFIED, 1)  # the re-post has the next Message-ID
        assert article(index, store, big[2]).exists()
        assert index.segment(top[0]).state == VERIFIED  # left alone: no copy to post

        data.cache.clear()
        assert await fs.read(big_ino) == content  # from the server again

        report = await Verifier(index, data.store).run()
        assert [p.segment for p in report.problems] == [top[0]] and report.problems[0].files == ["/top.bin"]

        # Deleting the damaged file leaves nothing damaged (its segment is garbage now).
        fs.delete(b"top.bin")
        report = await Verifier(index, data.store).run()
        assert report.ok and report.checked == 5


async def test_without_a_cache_a_segment_marked_missing_is_reported_not_touched(index, store, tmp_path):
    async with mounted(index, store, tmp_path / "cache") as fs:
        inos = await write_tree(fs)
        seg = segments_of(index, inos["/top.bin"])[0]
        index.mark_missing(seg, 0)  # an earlier check found it gone
        report = await Verifier(index, fs.data.store, repair=True).run()
        (problem,) = report.problems
        assert problem.kind == "missing" and "earlier check" in problem.reason
        assert problem.files == ["/top.bin"] and "only a mounted volume" in problem.repair
        assert index.segment(seg).state == MISSING and index.segment(seg).generation == 1


async def test_sample_checks_part_of_the_segments(index, store, tmp_path):
    async with mounted(index, store, tmp_path / "cache") as fs:
        for i in range(40):
            await fs.write_file(b"f%d" % i, os.urandom(SEG))  # one segment each
        await fs.data.flush_all()
        report = await Verifier(index, fs.data.store, sample=25, rng=random.Random(3)).run()
        assert report.ok and 3 <= report.checked <= 20 and report.sample_percent == 25
        assert report.candidates == 40
        report = await Verifier(index, fs.data.store, sample=100).run()
        assert report.checked == 40 and report.sample_percent is None
        with pytest.raises(UserError, match="--sample"):
            Verifier(index, fs.data.store, sample=0)
