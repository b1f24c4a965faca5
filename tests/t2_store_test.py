"""Level 2: segment stores. NNTPSegmentStore against a real INN, LocalSegmentStore on disk.

Segment rows come from a real Index, so what the stores see is what the uploader hands them.
"""

from __future__ import annotations

import os

import pytest
import trio

from usenetfs.codec.article import build_article
from usenetfs.codec.segment import KIND_DATA, SegmentId
from usenetfs.index import VOLUME_SCOPE, Index
from usenetfs.keys import VolumeKeys
from usenetfs.nntp.client import NNTPClient, PoolOptions
from usenetfs.nntp.config import ServerConfig
from usenetfs.nntp.posting import VerifyOptions
from usenetfs.nntp.retry import scaled_policies
from usenetfs.store import LocalSegmentStore, NNTPSegmentStore, PutResult, SegmentUnavailable, segment_key

GROUP = "alt.binaries.test"
FAST = scaled_policies(0.01)
QUICK_VERIFY = VerifyOptions(delay=0.01, tries=3, interval=0.05)


@pytest.fixture
def index(tmp_path):
    ix = Index.create(tmp_path / "index.db")
    yield ix
    ix.close()


@pytest.fixture
def keys():
    return VolumeKeys(os.urandom(32))


def new_row(index: Index, size: int):
    return index.segment(index.new_segment(VOLUME_SCOPE, size))


def payload_of(size: int) -> bytes:
    # Half random, half zeros: exercises the compression decision without being trivial.
    return os.urandom(size // 2) + bytes(size - size // 2)


async def test_nntp_put_get_round_trip(inn, index, keys):
    scope = index.volume_id
    async with NNTPClient(ServerConfig(inn.host, inn.port), PoolOptions(max_connections=2), policies=FAST) as client:
        store = NNTPSegmentStore(client, keys, GROUP, pad=200_000, verify=QUICK_VERIFY)
        payloads = {}
        for size in (1, 1000, 150_000):
            row = new_row(index, size)
            payloads[row.id] = payload_of(size)
            result = await store.put(row, scope, payloads[row.id])
            assert isinstance(result, PutResult)
            assert result.generation == 0
            assert 0 <= result.crc32 <= 0xFFFFFFFF
            assert index.mark_posted(row.id, result.generation, result.stored_size, result.crc32)
            assert index.mark_verified(row.id, result.generation)
        sizes = set()
        for seg, payload in payloads.items():
            row = index.segment(seg)
            sizes.add(row.stored_size)
            assert await store.get(row, scope) == payload
        # Padding: every article the same size whatever the payload.
        assert len(sizes) == 1
        # The article really is where the derived Message-ID says, under our group.
        ident = SegmentId(scope, KIND_DATA, row.id)
        assert await client.stat(keys.message_id(ident, 0))
        assert not await client.stat(keys.message_id(ident, 1))


async def test_nntp_missing_and_foreign_articles_are_unavailable(inn, index, keys):
    scope = index.volume_id
    async with NNTPClient(ServerConfig(inn.host, inn.port), policies=FAST) as client:
        store = NNTPSegmentStore(client, keys, GROUP, verify=QUICK_VERIFY)
        never_posted = new_row(index, 10)
        with pytest.raises(SegmentUnavailable) as info:
            await store.get(never_posted, scope)
        assert info.value.segment == never_posted.id
        assert "not found" in info.value.reason

        # Someone else's article under our segment's Message-ID: it must not decode.
        squatted = new_row(index, 10)
        mid = keys.message_id(SegmentId(scope, KIND_DATA, squatted.id), 0)
        await client.post(build_article(mid, GROUP, b"=ybegin part=1 total=1 line=128 size=3 name=x\r\nabc\r\n"))
        with pytest.raises(SegmentUnavailable) as info:
            await store.get(squatted, scope)
        assert info.value.segment == squatted.id

        # An article of one segment does not pass as another (identity in the AAD and key).
        row_a = new_row(index, 100)
        await store.put(row_a, scope, b"a" * 100)
        row_b = new_row(index, 100)
        body = await client.body(keys.message_id(SegmentId(scope, KIND_DATA, row_a.id), 0))
        await client.post(build_article(keys.message_id(SegmentId(scope, KIND_DATA, row_b.id), 0), GROUP, body))
        with pytest.raises(SegmentUnavailable) as info:
            await store.get(row_b, scope)
        assert "WrongKey" in info.value.reason


async def test_nntp_squatted_id_moves_to_next_generation(make_inn, index, keys):
    server = make_inn()
    scope = index.volume_id
    async with NNTPClient(ServerConfig(server.host, server.port), policies=FAST) as client:
        store = NNTPSegmentStore(client, keys, GROUP, verify=QUICK_VERIFY)
        row = new_row(index, 5000)
        mid0 = keys.message_id(SegmentId(scope, KIND_DATA, row.id), 0)
        await client.post(build_article(mid0, GROUP, b"not what we will post\r\n"))
        payload = os.urandom(5000)
        result = await store.put(row, scope, payload)
        assert result.generation == 1  # generation 0 is taken by a different body
        index.mark_posted(row.id, 0, result.stored_size, result.crc32)
        index.mark_missing(row.id, 0)
        index.mark_posted(row.id, 1, result.stored_size, result.crc32)
        assert await store.get(index.segment(row.id), scope) == payload

        # A resumed upload (the row was tried before) finds the article and keeps it.
        again = await store.put(index.segment(row.id), scope, payload)
        assert again.generation == 1


async def test_local_round_trip_and_durability(tmp_path, index, keys):
    scope = index.volume_id
    store = LocalSegmentStore(tmp_path / "store", keys, pad=True)
    rows = [new_row(index, n) for n in (1, 2, 700_000)]
    data = {r.id: payload_of(r.payload_size) for r in rows}
    sizes = set()
    for r in rows:
        result = await store.put(r, scope, data[r.id])
        assert result.generation == r.generation == 0
        assert store.path_for(r, scope).is_file()
        sizes.add(result.stored_size)
    assert not list((tmp_path / "store").rglob("*.tmp"))  # atomic writes leave no temporaries
    assert len(sizes) == 1  # padded: the same blob size whatever the payload
    reopened = LocalSegmentStore(tmp_path / "store", keys, pad=True)
    for r in rows:
        assert await reopened.get(r, scope) == data[r.id]


async def test_local_store_without_keys_keeps_its_key(tmp_path, index):
    scope = index.volume_id
    row = new_row(index, 4)
    await LocalSegmentStore(tmp_path / "s").put(row, scope, b"abcd")
    assert await LocalSegmentStore(tmp_path / "s").get(row, scope) == b"abcd"
    assert (tmp_path / "s" / "local-store.key").stat().st_mode & 0o777 == 0o600


async def test_local_missing_corrupt_and_swapped_are_unavailable(tmp_path, index, keys):
    scope = index.volume_id
    store = LocalSegmentStore(tmp_path / "store", keys)
    a, b, c = (new_row(index, 1000) for _ in range(3))
    with pytest.raises(SegmentUnavailable, match="not found"):
        await store.get(a, scope)
    await store.put(a, scope, os.urandom(1000))
    await store.put(b, scope, os.urandom(1000))
    # Flip one byte inside the yEnc data of a: CRC or AEAD catches it.
    path = store.path_for(a, scope)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(SegmentUnavailable) as info:
        await store.get(a, scope)
    assert info.value.segment == a.id
    # b's article stored as c: the per-segment key differs.
    store.path_for(c, scope).parent.mkdir(exist_ok=True)
    store.path_for(c, scope).write_bytes(store.path_for(b, scope).read_bytes())
    with pytest.raises(SegmentUnavailable, match="WrongKey"):
        await store.get(c, scope)
    # A row whose payload size disagrees with the article is not trusted either.
    with pytest.raises(SegmentUnavailable, match="index says"):
        await store.get(b._replace(payload_size=999), scope)


def test_per_segment_keys_differ(keys):
    scope = os.urandom(16)
    ids = [SegmentId(scope, KIND_DATA, n) for n in (1, 2)] + [SegmentId(os.urandom(16), KIND_DATA, 1)]
    derived = {segment_key(keys.data_key, i) for i in ids}
    assert len(derived) == 3
    assert keys.data_key not in derived
    assert segment_key(keys.data_key, ids[0]) == segment_key(keys.data_key, SegmentId(scope, KIND_DATA, 1))
    other = VolumeKeys(os.urandom(32))
    assert segment_key(other.data_key, ids[0]) != segment_key(keys.data_key, ids[0])


async def test_codec_runs_behind_the_limiter(tmp_path, index, keys):
    limiter = trio.CapacityLimiter(1)
    store = LocalSegmentStore(tmp_path / "store", keys, limiter=limiter)
    scope = index.volume_id
    rows = [new_row(index, 200_000) for _ in range(6)]
    peak = 0

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, limiter.borrowed_tokens)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as puts:
            for r in rows:
                puts.start_soon(store.put, r, scope, os.urandom(200_000))
        nursery.cancel_scope.cancel()
    assert peak == 1
