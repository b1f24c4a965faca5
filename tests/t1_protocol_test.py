"""Level 1: NNTP framing and parsing, with bytes only (no sockets)."""

import pytest
from hypothesis import given, strategies as st

from usenetfs.errors import UserError
from usenetfs.nntp.config import parse_server_url
from usenetfs.nntp.connection import error_for
from usenetfs.nntp import errors as E
from usenetfs.nntp.posting import article_body, same_body
from usenetfs.nntp.protocol import (
    ResponseReader,
    accepted_message_id,
    check_crlf,
    dot_stuff,
    dot_unstuff,
    encode_block,
    encode_parts,
    format_command,
    is_too_many_connections,
    parse_status,
)

lines = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")),
                 max_size=30)


def test_status_line_parsing():
    assert parse_status(b"200 news.example ready") == (200, "news.example ready")
    assert parse_status(b"205") == (205, "")
    for bad in (b"", b"20", b"abc hello", b"2000 x", b"099 x"):
        with pytest.raises(E.ProtocolError):
            parse_status(bad)


def test_single_line_responses_split_across_feeds():
    reader = ResponseReader(initial_size=16)
    reader.feed(b"200 hel")
    assert reader.next_response() is None
    reader.feed(b"lo\r\n340 send\r\n240 <a@b> ok\r\n")
    assert reader.next_response().line == "200 hello"
    assert reader.next_response().code == 340
    response = reader.next_response()
    assert (response.code, accepted_message_id(response.text)) == (240, "<a@b>")
    assert reader.next_response() is None and reader.buffered == 0


def test_multiline_block_is_unstuffed_and_byte_exact():
    reader = ResponseReader()
    reader.feed(b"222 0 <a@b> body\r\n..leading dot\r\nplain\r\n...\r\n.\r\n430 no\r\n")
    response = reader.next_response()
    assert response.code == 222
    assert response.data == b".leading dot\r\nplain\r\n..\r\n"
    assert reader.next_response().code == 430


def test_empty_block_and_capabilities():
    reader = ResponseReader()
    reader.feed(b"222 0 <a@b>\r\n.\r\n101 Capability list:\r\nVERSION 2\r\nREADER\r\n.\r\n")
    assert reader.next_response().data == b""
    assert reader.next_response().lines() == ["VERSION 2", "READER"]


@given(lines, st.integers(min_value=1, max_value=50))
def test_block_round_trip_any_chunking(body_lines, chunk):
    body = b"".join(line + b"\r\n" for line in body_lines)
    wire = b"222 0 <x@y>\r\n" + b"".join(encode_block(body)) + b"223 0 <x@y>\r\n"
    reader = ResponseReader(initial_size=8)
    got = []
    for i in range(0, len(wire), chunk):
        reader.feed(wire[i:i + chunk])
        while (response := reader.next_response()) is not None:
            got.append(response)
    assert [r.code for r in got] == [222, 223]
    assert got[0].data == body


@given(lines, st.integers(min_value=1, max_value=50))
def test_stuffed_blocks_come_as_sent_and_end_at_the_terminator(body_lines, chunk):
    """next_response(stuffed=True): the block as it was sent (stuffing kept), found by its
    tail only, however the bytes arrive; the status line and the empty block as usual."""
    body = b"".join(line + b"\r\n" for line in body_lines)
    sent = b"".join(encode_block(body))
    wire = b"222 0 <x@y>\r\n" + sent
    reader = ResponseReader(initial_size=8)
    got = None
    for i in range(0, len(wire), chunk):
        assert got is None  # nothing complete before the last byte
        reader.feed(wire[i:i + chunk])
        got = reader.next_response(stuffed=True)
    assert got is not None and got.code == 222
    assert got.data == sent[:-3] if body else got.data == b""
    assert dot_unstuff(got.data) == body
    assert reader.buffered == 0
    reader.feed(b"430 no such article\r\n")  # single-line answers are unaffected
    assert reader.next_response(stuffed=True).code == 430


def test_a_stuffed_block_keeps_its_dots():
    reader = ResponseReader()
    reader.feed(b"222 0 <a@b> body\r\n..leading dot\r\nplain\r\n...\r\n")
    assert reader.next_response(stuffed=True) is None  # no terminator yet
    reader.feed(b".\r\n")
    assert reader.next_response(stuffed=True).data == b"..leading dot\r\nplain\r\n...\r\n"


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\0", b"").lstrip(b".")), max_size=6))
def test_an_article_in_pieces_goes_out_as_the_same_block(pieces):
    """encode_parts of dot-free pieces: the same bytes on the wire as encode_block of their
    concatenation, the pieces themselves (no join); pieces that need stuffing are joined."""
    pieces = [p.replace(b"\n.", b"\nx") for p in pieces]
    joined = b"".join(pieces)
    if joined.startswith(b".") or b"\r\n." in joined:
        return  # not dot-free: the caller would not promise it
    out = encode_parts(pieces, dot_free=True)
    assert b"".join(out) == b"".join(encode_block(joined))
    assert all(any(part is piece for piece in pieces) for part in out[:-1])
    dotted = [b"a\r\n", b".b\r\n"]
    assert b"".join(encode_parts(dotted)) == b"".join(encode_block(b"a\r\n.b\r\n"))  # stuffed
    with pytest.raises(ValueError):
        encode_parts([b"ok\r\n", b"n\0l\r\n"], dot_free=True)


def test_read_back_bodies_are_compared_piece_by_piece():
    pieces = (b"=ybegin\r\n", b"data", b"\r\n=yend\r\n")
    assert same_body(b"=ybegin\r\ndata\r\n=yend\r\n", pieces)
    assert not same_body(b"=ybegin\r\ndatA\r\n=yend\r\n", pieces)
    assert not same_body(b"=ybegin\r\ndata\r\n=yend\r\nx", pieces)
    assert not same_body(b"=ybegin\r\ndata\r\n=yend", pieces)
    assert article_body((b"H: v\r\n\r\n", *pieces)) == pieces
    assert article_body(b"H: v\r\n\r\nbody\r\n") == b"body\r\n"
    with pytest.raises(ValueError):
        article_body((b"H: v\r\n", b"body\r\n"))  # no blank line after the headers


@given(lines)
def test_stuff_unstuff_inverse(body_lines):
    body = b"".join(line + b"\r\n" for line in body_lines)
    stuffed = dot_stuff(body)
    assert b"\r\n.\r\n" not in b"\r\n" + stuffed  # no line of a stuffed block is a lone "."
    assert dot_unstuff(stuffed) == body


def test_encode_block_refuses_nul_and_check_crlf_refuses_bare_lf():
    for bad in (b"a\nb\r\n", b"a\rb\r\n", b"\n\r"):
        with pytest.raises(ValueError):
            check_crlf(bad)
    check_crlf(b"a\r\nb\r\n")
    with pytest.raises(ValueError):
        encode_block(b"a\0b\r\n")
    assert b"".join(encode_block(b"")) == b".\r\n"
    assert b"".join(encode_block(b"no newline")) == b"no newline\r\n.\r\n"
    body = b"..x\r\n"
    assert b"".join(encode_block(body)) == b"...x\r\n.\r\n"


def test_commands_cannot_smuggle_lines():
    assert format_command("BODY", "<a@b>") == b"BODY <a@b>\r\n"
    with pytest.raises(ValueError):
        format_command("BODY", "<a@b>\r\nQUIT")
    with pytest.raises(ValueError):
        format_command("AUTHINFO", "PASS", "x" * 600)


def test_garbage_and_oversized_status_lines_raise():
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(E.ProtocolError):
        reader.next_response()
    reader = ResponseReader()
    reader.feed(b"2" * 5000)
    with pytest.raises(E.ProtocolError):
        reader.next_response()


@pytest.mark.parametrize("code,text,expected", [
    (502, "Too many connections", True),
    (482, "Too many connections for your user.", True),
    (502, "Your per-user connection limit reached", True),
    (400, "Permission denied: Too many connections from your IP address", True),
    (481, "Simultaneous IP login detected", True),
    (502, "You have no permission to talk.  Goodbye!", False),
    (481, "Authentication failed", False),
    (502, "Download limit exceeded", False),
    (441, "Too many connections", False),
])
def test_too_many_connections_clues(code, text, expected):
    assert is_too_many_connections(code, text) is expected


@pytest.mark.parametrize("code,text,kind", [
    (430, "No such article", E.ArticleNotFound),
    (441, "435 Duplicate", E.DuplicateArticle),
    (441, "Article is bigger than local limit", E.PostRejected),
    (440, "Posting not allowed", E.PostingNotAllowed),
    (481, "Authentication failed", E.AuthenticationFailed),
    (502, "Too many connections", E.TooManyConnections),
    (502, "You have no permission to talk", E.ServerUnavailable),
    (503, "Timeout", E.ServerError),
])
def test_error_classification(code, text, kind):
    error = error_for(code, text, "X")
    assert type(error) is kind
    assert error.code == code


def test_server_urls():
    config = parse_server_url("nntps://alice:s%40cret@news.example.com")
    assert (config.host, config.port, config.tls, config.user, config.password) == \
        ("news.example.com", 563, True, "alice", "s@cret")
    assert parse_server_url("nntp://127.0.0.1:1190").port == 1190
    assert parse_server_url("nntp://h?starttls=1").starttls
    assert "cret" not in parse_server_url("nntps://alice:s%40cret@h").describe()
    for bad in ("http://x", "nntp://", "nntp://h:99999", "nntp://h/path", "nntp://h?x=1",
                "nntps://h?starttls=1"):
        with pytest.raises(UserError):
            parse_server_url(bad)


def test_password_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    assert parse_server_url("nntp://bob@h", password_file=secret).password == "hunter2"
    with pytest.raises(UserError, match="cannot read"):
        parse_server_url("nntp://bob@h", password_file=tmp_path / "missing")


def test_dot_free_blocks_skip_stuffing_but_not_the_terminator():
    assert b"".join(encode_block(b"=ybegin x\r\nabc\r\n", dot_free=True)) == b"=ybegin x\r\nabc\r\n.\r\n"


def test_our_articles_are_dot_free():
    """The dot_free promise: sabctools escapes a dot at the start of every yEnc line."""
    import os
    from usenetfs.codec.article import build_article
    from usenetfs.codec.segment import SegmentCodec, SegmentId
    codec = SegmentCodec(os.urandom(32))
    for payload in (bytes([4]) * 300_000, os.urandom(300_000)):  # 4 + 42 = ord(".")
        body = codec.encode(SegmentId(bytes(16), 0, 1), payload).body
        article = build_article("<a@b.c>", "alt.test", body)
        assert dot_stuff(article) == article


def test_a_lent_block_is_a_view_and_one_kept_does_not_stop_the_buffer_growing():
    """next_response(stuffed=True, lend=True): the block where it lies in the receive
    buffer, for a consumer done with it before the next receive. One still referenced
    (by a traceback, say) when a bigger response arrives leaves the reader its buffer and
    the reader goes on in a new one; without `lend`, a copy."""
    reader = ResponseReader(initial_size=64)
    reader.feed(b"222 0 <a@b> body\r\nline one\r\nline two\r\n.\r\n")
    got = reader.next_response(stuffed=True, lend=True)
    assert isinstance(got.data, memoryview) and bytes(got.data) == b"line one\r\nline two\r\n"
    kept = got.data[5:]
    big = b"x" * 1000 + b"\r\n"
    reader.feed(b"222 0 <a@b> body\r\n" + big + b".\r\n")  # more than the 64 bytes there are
    again = reader.next_response(stuffed=True)
    assert type(again.data) is bytes and again.data == big
    assert bytes(kept) == b"one\r\nline two\r\n"
