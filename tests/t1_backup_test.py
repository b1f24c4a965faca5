"""Level 1: the pieces of incremental index backups that need no server.

Snapshots (page for page, so unchanged pages stay unchanged), the soundness check,
chunk hashing and identities, the manifest format and the local chunk record.
"""

from __future__ import annotations

import os
import stat

import pytest

from usenetfs.backup.chunks import (ChunkRef, check_chunk_size, chunk_digest, chunk_ident, digest_file,
                                    hash_key, read_chunk)
from usenetfs.backup.manifest import Manifest, decode_list, encode_list, manifest_ident
from usenetfs.backup.bootstrap import bootstrap_ident
from usenetfs.backup.record import ChunkRecord
from usenetfs.codec.segment import KIND_INDEX, KIND_INDEX_CHUNK
from usenetfs.errors import UserError
from usenetfs.index import ROOT_INODE, Index
from usenetfs.index.snapshot import check_copy, copy_consistent
from usenetfs.keys import VolumeKeys

SCOPE = bytes(range(16))
CHUNK = 16 * 1024
REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


def fill(index: Index, directory: bytes, files: int) -> None:
    with index.batch():
        parent = index.make_node(ROOT_INODE, directory, DIR, 0, 0)
        for k in range(files):
            index.make_node(parent.id, b"file-%06d" % k, REG, 0, 0)
            index.new_segment_run(1, 20, 716_800)


def test_snapshots_are_page_for_page(tmp_path):
    """The premise of incremental backups: copies of an unchanged index are identical, and
    a small change leaves most chunks of the copy as they were."""
    index = Index.create(tmp_path / "index.sqlite")
    try:
        fill(index, b"many", 5000)
        key = hash_key(VolumeKeys(os.urandom(32)))
        copy_consistent(tmp_path / "index.sqlite", tmp_path / "a")
        copy_consistent(tmp_path / "index.sqlite", tmp_path / "b")
        assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
        before = digest_file(tmp_path / "a", key, CHUNK)
        fill(index, b"few", 20)
        size = copy_consistent(tmp_path / "index.sqlite", tmp_path / "b")  # replaces the old copy
        after = digest_file(tmp_path / "b", key, CHUNK)
    finally:
        index.close()
    assert len(before) >= 50 and size == (tmp_path / "b").stat().st_size
    changed = [n for n, digest in enumerate(after) if n >= len(before) or digest != before[n]]
    assert 1 <= len(changed) <= len(before) // 5
    assert check_copy(tmp_path / "b") is None
    assert read_chunk(tmp_path / "b", 1, CHUNK) == (tmp_path / "b").read_bytes()[CHUNK:2 * CHUNK]
    assert not list(tmp_path.glob("b-*"))  # the check leaves no -wal or -shm behind


def test_check_copy_finds_a_damaged_page(tmp_path):
    index = Index.create(tmp_path / "index.sqlite")
    fill(index, b"many", 2000)
    index.close()
    copy_consistent(tmp_path / "index.sqlite", tmp_path / "copy")
    data = bytearray((tmp_path / "copy").read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle:middle + 4096] = os.urandom(4096)
    (tmp_path / "copy").write_bytes(bytes(data))
    problem = check_copy(tmp_path / "copy")
    assert problem and "\n" not in problem
    (tmp_path / "junk").write_bytes(os.urandom(10_000))
    assert check_copy(tmp_path / "junk")


def test_chunk_hashes_are_keyed_and_ids_come_from_them():
    one, other = VolumeKeys(os.urandom(32)), VolumeKeys(os.urandom(32))
    data = b"page" * 1024
    digest = chunk_digest(hash_key(one), data)
    assert digest == chunk_digest(hash_key(one), data) != chunk_digest(hash_key(other), data)
    assert len(digest) == 32 and chunk_digest(hash_key(one), data + b"!") != digest
    ident = chunk_ident(SCOPE, digest)
    assert ident.kind == KIND_INDEX_CHUNK and ident.number == int.from_bytes(digest[:8], "big")
    assert manifest_ident(SCOPE, 7).kind == KIND_INDEX
    assert manifest_ident(SCOPE, 7) != bootstrap_ident(SCOPE)
    with pytest.raises(ValueError):
        manifest_ident(SCOPE, 1 << 62)  # would collide with the bootstrap's number
    for bad in (1000, 4096 * 3 + 1, 2 << 20):
        with pytest.raises(ValueError):
            check_chunk_size(bad)


def test_manifest_round_trip_and_refusals():
    refs = [ChunkRef(os.urandom(32), n % 3) for n in range(5)]
    assert decode_list(encode_list(refs), 5, 9) == refs
    manifest = Manifest(seq=9, db_size=5 * CHUNK - 100, chunk_size=CHUNK, chunks=5,
                        list_chunks=[ChunkRef(os.urandom(32), 0)], settings={"group": "alt.test"})
    again = Manifest.decode(manifest.encode(), 9)
    assert again == manifest
    with pytest.raises(UserError, match="says it is backup 9"):
        Manifest.decode(manifest.encode(), 10)
    with pytest.raises(UserError, match="malformed"):
        Manifest.decode(b"{not json", 9)
    manifest.chunks = 4  # does not cover db_size
    with pytest.raises(UserError, match="inconsistent"):
        Manifest.decode(manifest.encode(), 9)
    with pytest.raises(UserError, match="chunk list has"):
        decode_list(encode_list(refs)[:-1], 5, 9)


def test_record_survives_torn_lines_and_ignores_other_volumes(tmp_path):
    path = tmp_path / "backup-chunks"
    a, b, c = (bytes([n]) * 32 for n in (1, 2, 3))
    record = ChunkRecord.load(path, "vol1")
    assert record.entries == {}
    record.note(a, 0, 100)
    record.note(b, 0, 100)
    record.note(a, 1, 200)  # a later line wins
    record.flush()
    record.close()
    with open(path, "a") as out:
        out.write(c.hex()[:40])  # a crash in the middle of a line
    record = ChunkRecord.load(path, "vol1")
    assert record.get(a) == (1, 200) and record.get(b) == (0, 100) and record.get(c) is None
    record.note(c, 2, 300)  # appended after the torn line, not glued to it
    record.close()
    record = ChunkRecord.load(path, "vol1")
    assert record.get(c) == (2, 300) and len(record.entries) == 3
    record.rewrite({a, c})
    assert set(ChunkRecord.load(path, "vol1").entries) == {a, c}
    assert ChunkRecord.load(path, "vol2").entries == {}  # another volume's record
    other = ChunkRecord.load(path, "vol2")
    other.note(b, 0, 1)  # starts afresh rather than mixing two volumes
    other.close()
    assert set(ChunkRecord.load(path, "vol2").entries) == {b}
    assert ChunkRecord.load(path, "vol1").entries == {}
