"""Tier-1 tests of the article codec: yEnc framing, SegmentCodec, article headers.

Fast, no network. The properties that matter: decode is the exact inverse of encode, and
every damaged, foreign, swapped or hostile body raises a specific CodecError subclass,
never wrong bytes.
"""

from __future__ import annotations

import os
import random
import re
import threading
import zlib

import pytest
import sabctools
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usenetfs.codec import yenc
from usenetfs.codec.article import article_head, build_article, random_poster, random_subject
from usenetfs.codec.errors import (
    CodecError,
    CorruptArticle,
    NotOurArticle,
    TamperedArticle,
    TruncatedArticle,
    WrongKey,
)
from usenetfs.codec.segment import (
    HEADER_SIZE,
    KIND_DATA,
    KIND_INDEX,
    PREFIX_SIZE,
    SegmentCodec,
    SegmentId,
)

SEG = 716800
CIPHERS = ["aes-256-gcm", "chacha20-poly1305"]
KEY = bytes(range(32))
SCOPE = bytes(range(100, 116))
IDENT = SegmentId(SCOPE, KIND_DATA, 7)

_rng = random.Random(1234)
RANDOM_SEG = _rng.randbytes(SEG)
TEXT_SEG = (
    b"".join(
        b"line %d: the quick brown fox jumps over the lazy dog %d\n" % (i, i * 7919 % 1000)
        for i in range(20000)
    )
)[:SEG]

FAST = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def codec(cipher: str = "aes-256-gcm", **kw) -> SegmentCodec:
    return SegmentCodec(KEY, cipher=cipher, **kw)


def yenc_lines(body: bytes) -> tuple[bytes, bytes, bytes]:
    """(ybegin line, ypart line, yend line) of a body."""
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    return lines[0], lines[1], lines[-2]


def blob_of(body: bytes) -> bytes:
    return bytes(yenc.decode(body, max_size=1 << 22))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", b"a", b".", b"=", RANDOM_SEG, TEXT_SEG, bytes(SEG), RANDOM_SEG[:65536]],
    ids=["empty", "nul", "a", "dot", "eq", "random716800", "text716800", "zeros716800", "64k"],
)
def test_round_trip_fixed(cipher, payload):
    c = codec(cipher)
    enc = c.encode(IDENT, payload)
    assert c.decode(IDENT, enc.body) == payload
    assert enc.payload_size == len(payload)
    assert enc.body.endswith(b"\r\n")
    begin, part, end = yenc_lines(enc.body)
    assert begin.startswith(b"=ybegin part=1 total=1 line=128 size=%d name=" % enc.stored_size)
    assert part == b"=ypart begin=1 end=%d" % enc.stored_size
    assert end == b"=yend size=%d part=1 pcrc32=%08x" % (enc.stored_size, enc.crc32)
    assert zlib.crc32(blob_of(enc.body)) == enc.crc32
    assert enc.body == b"".join(enc.parts) and enc.body_size == len(enc.body)
    assert enc.parts[0].endswith(b"\r\n") and enc.parts[2].startswith(b"\r\n=yend ")
    assert b"\r\n." not in enc.body  # never needs dot-stuffing
    assert not any(line.startswith(b".") for line in enc.body.split(b"\r\n"))


def test_compression_decisions():
    c = codec()
    assert not c.encode(IDENT, RANDOM_SEG).compressed
    assert c.encode(IDENT, TEXT_SEG).compressed
    assert c.encode(IDENT, bytes(SEG)).compressed
    assert not c.encode(IDENT, b"").compressed
    assert not c.encode(IDENT, b"a").compressed  # zstd frame would be larger
    # Compressible head, random tail: probe says yes, result is still smaller.
    mixed = TEXT_SEG[:65536] + RANDOM_SEG[: SEG - 65536]
    enc = c.encode(IDENT, mixed)
    assert enc.compressed and enc.stored_size < SEG
    assert c.decode(IDENT, enc.body) == mixed
    # Random head, compressible tail: the probe skips compression (documented trade-off).
    mixed2 = RANDOM_SEG[:65536] + TEXT_SEG[: SEG - 65536]
    assert not c.encode(IDENT, mixed2).compressed
    assert c.decode(IDENT, c.encode(IDENT, mixed2).body) == mixed2


@pytest.mark.parametrize("cipher", CIPHERS)
@FAST
@given(payload=st.binary(max_size=200_000))
def test_round_trip_random_bytes(cipher, payload):
    c = codec(cipher)
    assert c.decode(IDENT, c.encode(IDENT, payload).body) == payload


@FAST
@given(
    unit=st.binary(min_size=1, max_size=40),
    reps=st.integers(min_value=1, max_value=30_000),
    level=st.sampled_from([1, 3, 9]),
)
def test_round_trip_compressible(unit, reps, level):
    payload = (unit * reps)[:SEG]
    c = codec(zstd_level=level)
    enc = c.encode(IDENT, payload)
    assert c.decode(IDENT, enc.body) == payload


@FAST
@given(
    size=st.integers(min_value=0, max_value=SEG),
    number=st.integers(min_value=0, max_value=(1 << 64) - 1),
    kind=st.sampled_from([KIND_DATA, KIND_INDEX]),
    scope=st.binary(min_size=16, max_size=16),
)
def test_round_trip_sizes_and_identities(size, number, kind, scope):
    ident = SegmentId(scope, kind, number)
    payload = RANDOM_SEG[:size]
    c = codec()
    assert c.decode(ident, c.encode(ident, payload).body) == payload


def test_memoryview_inputs():
    c = codec()
    payload = bytearray(TEXT_SEG[:100_000])
    enc = c.encode(IDENT, memoryview(payload)[1000:90_000])
    assert c.decode(IDENT, memoryview(enc.body)) == bytes(payload[1000:90_000])
    assert c.decode(IDENT, bytearray(enc.body)) == bytes(payload[1000:90_000])
    # Non-byte formats are viewed as bytes.
    import array

    arr = array.array("I", range(1000))
    assert c.decode(IDENT, c.encode(IDENT, memoryview(arr)).body) == arr.tobytes()


def test_max_plaintext_enforced():
    c = codec(max_plaintext=1000)
    c.encode(IDENT, b"x" * 1000)
    with pytest.raises(ValueError):
        c.encode(IDENT, b"x" * 1001)


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("cipher", CIPHERS)
def test_padding_makes_every_article_the_same_size(cipher):
    c = codec(cipher, pad_to=SEG + HEADER_SIZE)
    payloads = [b"", b"a", TEXT_SEG[:1000], TEXT_SEG, RANDOM_SEG[:5000], RANDOM_SEG]
    encs = [c.encode(IDENT, p) for p in payloads]
    sizes = {e.stored_size for e in encs}
    assert sizes == {SEG + HEADER_SIZE + 32}
    begins = {re.sub(rb" name=.*", b"", yenc_lines(e.body)[0]) for e in encs}
    assert len(begins) == 1  # identical `size=` for a 1-byte and a 700 KiB payload
    lengths = [len(e.body) for e in encs]
    assert max(lengths) - min(lengths) < 0.005 * max(lengths)  # only escape counts differ
    for p, e in zip(payloads, encs):
        assert c.decode(IDENT, e.body) == p


def test_padding_rejects_payload_that_does_not_fit():
    c = codec(pad_to=1000 + HEADER_SIZE)
    c.encode(IDENT, RANDOM_SEG[:1000])
    with pytest.raises(ValueError):
        c.encode(IDENT, RANDOM_SEG[:1001])
    # Compressible content larger than pad_to fits once compressed.
    enc = c.encode(IDENT, TEXT_SEG[:5000])
    assert enc.compressed
    assert c.decode(IDENT, enc.body) == TEXT_SEG[:5000]
    assert c.max_payload == 1000


def test_padded_and_unpadded_codecs_read_each_other():
    padded, plain = codec(pad_to=10_000), codec()
    assert plain.decode(IDENT, padded.encode(IDENT, b"hello").body) == b"hello"
    assert padded.decode(IDENT, plain.encode(IDENT, b"hello").body) == b"hello"


# --------------------------------------------------------------------------- damage


def _flip_positions(body: bytes, rng: random.Random) -> list[int]:
    n = len(body)
    first_end = body.index(b"\r\n")
    second_end = body.index(b"\r\n", first_end + 2)
    trailer = body.rindex(b"\r\n", 0, n - 2)
    pos = set(range(0, second_end + 2))  # all of =ybegin and =ypart, with their CRLF
    pos |= set(range(trailer, n))  # all of =yend, with the CRLFs around it
    pos |= set(range(second_end + 2, min(trailer, second_end + 400)))  # nonce/keycheck
    pos |= {rng.randrange(second_end + 2, trailer) for _ in range(300)}
    # line breaks and escapes inside the data
    pos |= {i for i in range(second_end, trailer) if body[i] in b"\r\n="}
    return sorted(p for p in pos if p < n)


@pytest.mark.parametrize(
    "payload", [b"hello world", RANDOM_SEG[:20_000], TEXT_SEG[:50_000]], ids=["short", "random", "text"]
)
def test_flipping_any_byte_never_gives_wrong_bytes(payload):
    c = codec()
    body = c.encode(IDENT, payload).body
    name = re.search(rb" name=([^\r]*)\r\n", body)
    name_range = range(name.start(1), name.end(1))
    rng = random.Random(len(payload))
    for i in _flip_positions(body, rng):
        for mask in (0x01, 0x80, rng.randrange(1, 256)):
            bad = bytearray(body)
            bad[i] ^= mask
            try:
                out = c.decode(IDENT, bytes(bad))
            except CodecError:
                continue
            # Never wrong bytes. The only edits that may decode at all (and then correctly)
            # are ones that don't change meaning: the random, unauthenticated name=, a
            # line-break byte turned into the other one (sabctools skips CR and LF alike),
            # or the case of a hex digit of the CRC (hex is read case-insensitively).
            assert out == payload
            harmless_break = body[i] in b"\r\n" and bad[i] in b"\r\n"
            hex_case = bytes([body[i]]) in b"abcdefABCDEF" and bad[i] == body[i] ^ 0x20
            assert i in name_range or harmless_break or hex_case, f"flip at {i} (mask {mask:#x}) accepted"


def test_data_flips_are_corrupt_article():
    c = codec()
    body = c.encode(IDENT, RANDOM_SEG[:30_000]).body
    start = body.index(b"\r\n", body.index(b"\r\n") + 2) + 2
    end = body.rindex(b"\r\n", 0, len(body) - 2)
    rng = random.Random(5)
    for i in rng.sample(range(start, end), 300):
        bad = bytearray(body)
        bad[i] ^= rng.randrange(1, 256)
        with pytest.raises(CorruptArticle):
            c.decode(IDENT, bytes(bad))


def test_crc_field_flips_are_corrupt_article():
    c = codec()
    enc = c.encode(IDENT, b"payload")
    crc_hex = b"%08x" % enc.crc32
    pos = enc.body.rindex(crc_hex)
    for i in range(pos, pos + 8):
        for mask in (0x01, 0x02, 0x04, 0x40):
            bad = bytearray(enc.body)
            bad[i] ^= mask
            if bytes(bad[i : i + 1]).lower() == bytes(enc.body[i : i + 1]):
                continue  # case change only: same CRC value
            with pytest.raises(CorruptArticle):
                c.decode(IDENT, bytes(bad))
    # Trailer without pcrc32 at all.
    no_crc = enc.body.replace(b" pcrc32=" + crc_hex, b"")
    with pytest.raises(CorruptArticle):
        c.decode(IDENT, no_crc)
    crc32_only = enc.body.replace(b" pcrc32=", b" crc32=")
    with pytest.raises(CorruptArticle):
        c.decode(IDENT, crc32_only)


def test_dot_at_line_start_is_handled():
    """A damaged byte that makes a line start with '.' must not confuse the decoder."""
    c = codec()
    body = c.encode(IDENT, RANDOM_SEG[:20_000]).body
    starts = [m.end() for m in re.finditer(rb"\r\n", body)][2:-2]
    for s in starts[:40]:
        for dot in (b".", b"..", b".\r\n"):
            bad = body[:s] + dot + body[s + 1 :]
            with pytest.raises(CodecError):
                c.decode(IDENT, bad)
    # The decoder still works afterwards on this thread.
    assert c.decode(IDENT, body) == RANDOM_SEG[:20_000]


@pytest.mark.parametrize(
    "payload", [b"abc", RANDOM_SEG[:100_000], TEXT_SEG], ids=["short", "random", "text"]
)
def test_truncated_body(payload):
    c = codec()
    body = c.encode(IDENT, payload).body
    rng = random.Random(9)
    cuts = {0, 1, 8, len(body) - 1, len(body) - 2, len(body) - 3}
    cuts |= {rng.randrange(len(body)) for _ in range(60)}
    cuts |= {m.end() for m in re.finditer(rb"\r\n", body)}  # at line boundaries
    for cut in sorted(cuts):
        if cut == len(body):
            continue
        with pytest.raises((TruncatedArticle, CorruptArticle, NotOurArticle)) as ei:
            c.decode(IDENT, body[:cut])
        if cut > body.index(b"\r\n", body.index(b"\r\n") + 2) + 2:
            assert isinstance(ei.value, (TruncatedArticle, CorruptArticle)), cut


def test_missing_middle_with_intact_trailer():
    c = codec()
    body = c.encode(IDENT, RANDOM_SEG[:50_000]).body
    lines = body.split(b"\r\n")
    shortened = b"\r\n".join(lines[:10] + lines[20:])
    with pytest.raises((TruncatedArticle, CorruptArticle)):
        c.decode(IDENT, shortened)


def test_lying_sizes_are_truncated_article():
    c = codec()
    enc = c.encode(IDENT, b"some payload here")
    n = enc.stored_size
    for old, new in [
        (b"=ybegin part=1 total=1 line=128 size=%d " % n, b"=ybegin part=1 total=1 line=128 size=%d " % (n + 1)),
        (b"=ypart begin=1 end=%d" % n, b"=ypart begin=1 end=%d" % (n - 1)),
        (b"=yend size=%d " % n, b"=yend size=%d " % (n + 5)),
    ]:
        with pytest.raises(TruncatedArticle):
            c.decode(IDENT, enc.body.replace(old, new))


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\r\n",
        b"hello world\r\n",
        b"=ybegin\r\n",
        b"=ybegin garbage\r\n",
        b"=ybegin part=1 total=1 line=128 size=5 name=x\r\n",
        b"=ybegin line=128 size=3 name=x\r\n=yend size=3 crc32=00000000\r\n",
        os.urandom(5000),
        os.urandom(5000) + b"\r\n",
        b"=ybegin part=1 total=1 line=128 size=999999999 name=x\r\n=ypart begin=1 end=999999999\r\n"
        b"abc\r\n=yend size=999999999 part=1 pcrc32=00000000\r\n",
    ],
)
def test_garbage_is_not_our_article(garbage):
    with pytest.raises(NotOurArticle):
        codec().decode(IDENT, garbage)


def test_foreign_yenc_article():
    """A well-formed yEnc article from someone else (e.g. a normal binary post)."""
    data = b"not encrypted at all" * 100
    body, _ = yenc.encode(data, "holiday.jpg")
    with pytest.raises(WrongKey):  # random data: the key check fails first
        codec().decode(IDENT, body)
    with pytest.raises(TruncatedArticle):  # too short to be one of ours
        codec().decode(IDENT, yenc.encode(b"tiny", "x.bin")[0])


def test_huge_body_rejected_before_work():
    c = codec(max_plaintext=1000)
    big = codec().encode(IDENT, RANDOM_SEG[:100_000]).body
    with pytest.raises(NotOurArticle):
        c.decode(IDENT, big)


# --------------------------------------------------------------------------- keys and identity


@pytest.mark.parametrize("cipher", CIPHERS)
def test_swapped_identity_is_tampered(cipher):
    c = codec(cipher)
    body = c.encode(IDENT, b"secret payload").body
    for other in [
        SegmentId(SCOPE, KIND_DATA, 8),
        SegmentId(SCOPE, KIND_INDEX, 7),
        SegmentId(bytes(16), KIND_DATA, 7),
        SegmentId(SCOPE, KIND_DATA, 7 + (1 << 63)),
    ]:
        with pytest.raises(TamperedArticle):
            c.decode(other, body)
    assert c.decode(IDENT, body) == b"secret payload"


def test_wrong_key_and_wrong_cipher():
    body = codec().encode(IDENT, TEXT_SEG[:10_000]).body
    with pytest.raises(WrongKey):
        SegmentCodec(os.urandom(32)).decode(IDENT, body)
    with pytest.raises(WrongKey):
        codec("chacha20-poly1305").decode(IDENT, body)


def test_modified_ciphertext_with_fixed_crc_is_tampered():
    """An attacker who recomputes the yEnc CRC still cannot modify the payload."""
    c = codec()
    blob = bytearray(blob_of(c.encode(IDENT, b"attack at dawn").body))
    for i in [PREFIX_SIZE, PREFIX_SIZE + 3, len(blob) - 1]:
        forged = bytearray(blob)
        forged[i] ^= 1
        body, _ = yenc.encode(bytes(forged), "abc")
        with pytest.raises(TamperedArticle):
            c.decode(IDENT, body)
    forged = bytearray(blob)
    forged[0] ^= 1  # nonce changed: keycheck no longer matches
    with pytest.raises(WrongKey):
        c.decode(IDENT, yenc.encode(bytes(forged), "abc")[0])


def _forge(c: SegmentCodec, ident: SegmentId, plaintext: bytes) -> bytes:
    """A body holding `plaintext` encrypted exactly as the codec would (a key holder's
    hostile article)."""
    nonce = os.urandom(12)
    ct = c._aead.encrypt(nonce, plaintext, c._aad(ident))
    return yenc.encode(nonce + c._keycheck(nonce) + ct, "abc")[0]


def test_zip_bomb_is_bounded():
    c = codec(max_plaintext=SEG)
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(50 << 20))
    assert len(bomb) < 10_000
    pt = bytes([1]) + len(bomb).to_bytes(4, "big") + bomb
    with pytest.raises(NotOurArticle):
        c.decode(IDENT, _forge(c, IDENT, pt))
    # Same bomb without a declared content size (streamed frame).
    cobj = zstandard.ZstdCompressor(level=19).compressobj()
    streamed = cobj.compress(bytes(50 << 20)) + cobj.flush()
    assert zstandard.frame_content_size(streamed) == -1
    pt = bytes([1]) + len(streamed).to_bytes(4, "big") + streamed
    with pytest.raises(NotOurArticle):
        c.decode(IDENT, _forge(c, IDENT, pt))
    # Just at the bound is fine; one byte over is refused.
    for size, ok in ((SEG, True), (SEG + 1, False)):
        frame = zstandard.ZstdCompressor().compress(bytes(size))
        pt = bytes([1]) + len(frame).to_bytes(4, "big") + frame
        if ok:
            assert c.decode(IDENT, _forge(c, IDENT, pt)) == bytes(size)
        else:
            with pytest.raises(NotOurArticle):
                c.decode(IDENT, _forge(c, IDENT, pt))


def test_authenticated_but_malformed_plaintext():
    c = codec()
    cases = [
        bytes([0x80]) + (3).to_bytes(4, "big") + b"abc",  # unknown flag
        bytes([0]) + (4).to_bytes(4, "big") + b"abc",  # content_len past the end
        bytes([0]) + (2).to_bytes(4, "big") + b"abc",  # trailing bytes without padding flag
        bytes([2]) + (9).to_bytes(4, "big") + b"abc",  # padded, content_len too big
        bytes([1]) + (3).to_bytes(4, "big") + b"abc",  # "compressed" but not zstd
    ]
    for pt in cases:
        with pytest.raises(NotOurArticle):
            c.decode(IDENT, _forge(c, IDENT, pt))
    # Padded with content inside: fine.
    assert c.decode(IDENT, _forge(c, IDENT, bytes([2]) + (3).to_bytes(4, "big") + b"abc" + bytes(10))) == b"abc"
    # Uncompressed content larger than max_plaintext.
    small = codec(max_plaintext=10)
    with pytest.raises(NotOurArticle):
        small.decode(IDENT, _forge(small, IDENT, bytes([0]) + (11).to_bytes(4, "big") + b"x" * 11))


# --------------------------------------------------------------------------- nothing constant


def test_same_payload_twice_gives_unrelated_bodies():
    c = codec()
    for payload in (b"", b"a", TEXT_SEG[:100_000], RANDOM_SEG[:100_000]):
        a, b = c.encode(IDENT, payload), c.encode(IDENT, payload)
        assert a.body != b.body
        na = re.search(rb"name=(\S+)", a.body).group(1)
        nb = re.search(rb"name=(\S+)", b.body).group(1)
        assert na != nb
        ba, bb = blob_of(a.body), blob_of(b.body)
        assert len(ba) == len(bb)
        same = sum(x == y for x, y in zip(ba, bb))
        assert same <= max(4, len(ba) * 0.02), same  # ~1/256 by chance
        assert ba[:16] != bb[:16]


def test_blob_has_no_constant_prefix_across_codecs_and_payloads():
    firsts = set()
    for cipher in CIPHERS:
        for payload in (b"", TEXT_SEG[:1000], RANDOM_SEG[:1000]):
            for _ in range(8):
                firsts.add(blob_of(codec(cipher).encode(IDENT, payload).body)[:2])
    assert len(firsts) > 40  # 48 draws of 2 random bytes: almost surely all distinct


def test_yenc_name_random_and_overridable():
    c = codec()
    names = set()
    for _ in range(50):
        name = re.search(rb" name=(.*)\r\n=ypart", c.encode(IDENT, b"x").body).group(1)
        assert re.fullmatch(rb"[a-z2-7]{16,24}", name), name
        names.add(name)
    assert len(names) == 50
    body = c.encode(IDENT, b"x", yenc_name="my file.bin").body
    assert b" name=my file.bin\r\n" in body
    assert c.decode(IDENT, body) == b"x"
    for bad in ["", " lead", "trail ", "a\r\nb", "nul\x00"]:
        with pytest.raises(ValueError):
            c.encode(IDENT, b"x", yenc_name=bad)


# --------------------------------------------------------------------------- article


def test_article_headers_are_innocuous():
    body = codec().encode(IDENT, TEXT_SEG[:5000]).body
    art = build_article("<abc@example.com>", ["alt.binaries.test", "alt.binaries.misc"], body)
    head, sep, rest = art.partition(b"\r\n\r\n")
    assert sep and rest == body
    assert b"usenetfs" not in art.lower()
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n")]
    assert names == [b"From", b"Newsgroups", b"Subject", b"Message-ID"]
    for line in head.split(b"\r\n"):
        low = line.lower()
        assert not low.startswith((b"date:", b"user-agent:", b"x-", b"organization:"))
    assert b"Newsgroups: alt.binaries.test,alt.binaries.misc\r\n" in head
    assert head.endswith(b"\r\nMessage-ID: <abc@example.com>")
    assert b"\n" not in art.replace(b"\r\n", b"")


def test_article_random_headers_differ_and_look_plausible():
    subjects = {random_subject() for _ in range(50)}
    posters = {random_poster() for _ in range(50)}
    assert len(subjects) == 50 and len(posters) == 50
    for p in posters:
        assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+ <[a-z0-9._]+@[a-z]+\.(com|net|org)>", p), p
        assert "usenetfs" not in p.lower()
    a1 = article_head("<a@b.c>", "alt.test")
    a2 = article_head("<a@b.c>", "alt.test")
    assert a1 != a2  # From and Subject random per call by default
    fixed = article_head("<a@b.c>", "alt.test", subject="s", poster="P <p@q.r>")
    assert fixed == b"From: P <p@q.r>\r\nNewsgroups: alt.test\r\nSubject: s\r\nMessage-ID: <a@b.c>\r\n\r\n"


def test_article_rejects_header_injection_and_bad_input():
    body = b"x\r\n"
    with pytest.raises(ValueError):
        build_article("<a@b.c>", "alt.test", body, subject="x\r\nX-Injected: 1")
    with pytest.raises(ValueError):
        build_article("<a@b.c>", "alt.test", body, poster="a\nb")
    with pytest.raises(ValueError):
        build_article("no-brackets@b.c", "alt.test", body)
    with pytest.raises(ValueError):
        build_article("<a b@c.d>", "alt.test", body)
    with pytest.raises(ValueError):
        build_article("<a@b.c>", "alt.test,alt.other", body)
    with pytest.raises(ValueError):
        build_article("<a@b.c>", [], body)
    with pytest.raises(ValueError):
        build_article("<a@b.c>", "alt.test", b"no final crlf")


# --------------------------------------------------------------------------- threads


def test_concurrent_encode_decode():
    codecs = [codec("aes-256-gcm"), codec("chacha20-poly1305", pad_to=SEG + 5)]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(12):
                c = codecs[(seed + i) % 2]
                ident = SegmentId(SCOPE, KIND_DATA, seed * 100 + i)
                payload = (TEXT_SEG if rng.random() < 0.5 else RANDOM_SEG)[: rng.randrange(SEG)]
                body = c.encode(ident, payload).body
                if i % 3 == 0:  # a failing decode in between must not poison the thread
                    with pytest.raises(CodecError):
                        c.decode(ident, body[: len(body) // 2])
                assert c.decode(ident, body) == payload
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_sabctools_version_pinned():
    # The Decoder behaviour this codec relies on was checked against 9.7.
    assert sabctools.__version__.startswith("9.7.")


def test_segment_id_validation():
    with pytest.raises(ValueError):
        SegmentId(b"short", 0, 0)
    with pytest.raises(ValueError):
        SegmentId(SCOPE, 256, 0)
    with pytest.raises(ValueError):
        SegmentId(SCOPE, 0, 1 << 64)
    with pytest.raises(ValueError):
        SegmentId(SCOPE, 0, -1)
    assert SegmentId(SCOPE, 1, 2).to_bytes() == SCOPE + b"\x01" + (2).to_bytes(8, "big")
    with pytest.raises(ValueError):
        SegmentCodec(b"short")
    with pytest.raises(ValueError):
        SegmentCodec(KEY, cipher="rot13")


# --------------------------------------------------------------------------- lower-level entry points


def test_yenc_lines_are_at_most_129_columns():
    body = codec().encode(IDENT, RANDOM_SEG).body
    lines = body.split(b"\r\n")[2:-2]
    assert max(map(len, lines)) <= 129  # 128, or 129 when an escape pair starts at 128
    assert sum(len(line) == 128 for line in lines) > len(lines) * 0.5


def test_decode_blob_and_check_response_for_a_receiving_nntp_layer():
    """The NNTP layer may yEnc-decode on receipt with its own sabctools.Decoder."""
    c = codec()
    enc = c.encode(IDENT, TEXT_SEG[:300_000])
    dec = sabctools.Decoder(64 * 1024)
    wire = b"222 0 <x@y>\r\n" + enc.body + b".\r\n"
    dec.expect("mine")
    responses = []
    for i in range(0, len(wire), 50_000):
        chunk = wire[i : i + 50_000]
        pos = 0
        while pos < len(chunk):
            with memoryview(dec) as ring:
                k = min(len(ring), len(chunk) - pos)
                ring[:k] = chunk[pos : pos + k]
            dec.process(k)
            pos += k
            responses.extend(dec)
    assert [r.context for r in responses] == ["mine"]
    blob = yenc.check_response(responses[0], size=None, max_size=c.max_stored_size)
    assert c.decode_blob(IDENT, blob) == TEXT_SEG[:300_000]
    with pytest.raises(TamperedArticle):
        c.decode_blob(SegmentId(SCOPE, KIND_DATA, 8), blob)
    with pytest.raises(NotOurArticle):
        codec(max_plaintext=1000).decode_blob(IDENT, blob_of(c.encode(IDENT, RANDOM_SEG).body))
    with pytest.raises(NotOurArticle):
        yenc.check_response(responses[0], size=None, max_size=100)


def test_padded_codec_reads_large_unpadded_articles():
    small_pad = codec(pad_to=1000)
    big = codec().encode(IDENT, RANDOM_SEG).body
    assert small_pad.decode(IDENT, big) == RANDOM_SEG


def test_tune_malloc_smoke():
    # In a child process: mallopt is process-wide, and other tests share this one.
    import subprocess
    import sys

    code = (
        "import os; from usenetfs.codec import tune_malloc, SegmentCodec, SegmentId\n"
        "assert tune_malloc() is True\n"
        "c = SegmentCodec(bytes(32)); i = SegmentId(bytes(16), 0, 0); p = os.urandom(716800)\n"
        "assert c.decode(i, c.encode(i, p).body) == p\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def lent(body: bytes) -> memoryview:
    """`body` as the NNTP layer lends it to a decoder: a view into a larger receive buffer,
    with other bytes on both sides."""
    buffer = bytearray(b"222 0 <x@y> body\r\n" + body + b".\r\n430 next\r\n")
    return memoryview(buffer)[18:18 + len(body)]


def outcome(decode, body) -> object:
    try:
        return bytes(decode(body))
    except CodecError as e:
        return type(e)


def test_a_body_lent_as_a_view_decodes_exactly_as_a_copy():
    """decode() reads a view without copying it whole (only its first and last lines): the
    same payload or the same error as from bytes, for good, cut, damaged, lying and
    foreign bodies."""
    c = codec()
    rng = random.Random(11)
    bodies = []
    for payload in (b"", b"abc", RANDOM_SEG[:100_000], TEXT_SEG):
        body = c.encode(IDENT, payload).body
        bodies.append(body)
        bodies += [body[:cut] for cut in {0, 1, 8, len(body) - 1, len(body) - 2, len(body) - 3,
                                          *(rng.randrange(len(body)) for _ in range(20))}]
        for i in rng.sample(range(len(body)), 20):
            bad = bytearray(body)
            bad[i] ^= rng.randrange(1, 256)
            bodies.append(bytes(bad))
    enc = c.encode(IDENT, b"some payload here")
    n = enc.stored_size
    bodies += [enc.body.replace(b"size=%d " % n, b"size=%d " % (n + 1), 1),
               enc.body.replace(b"=ypart begin=1 end=%d" % n, b"=ypart begin=1 end=%d" % (n - 1)),
               enc.body.replace(b"pcrc32=", b"crc32="),
               yenc.encode(b"not encrypted at all" * 100, "holiday.jpg")[0],
               b"=ybegin part=1 total=1 line=128 size=5 name=x\r\n", os.urandom(5000) + b"\r\n"]
    assert len(bodies) > 150
    for body in bodies:
        copied = outcome(lambda b: c.decode(IDENT, b), body)
        assert outcome(lambda b: c.decode(IDENT, b), lent(body)) == copied
    assert outcome(lambda b: c.decode(IDENT, b), lent(bodies[0])) == b""  # the empty payload's body
