"""Level 1: the pure parts of shares: capabilities, keyring stanzas and identities, signed
documents, the tree objects' format and how directories are cut into pieces."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from usenetfs.cli.share_cmd import parse_when
from usenetfs.errors import UserError
from usenetfs.share import capability, stanzas, tree
from usenetfs.share.documents import Forged, Keyring, Root
from usenetfs.share.wire import Malformed

SHARE = bytes(range(16))


def make_cap(**kw) -> capability.Capability:
    fields = dict(share_id=SHARE, access_key=os.urandom(32), verify_key=os.urandom(32),
                  flags=capability.FLAG_PASSWORD, hint="nntp://news.example.net:119/alt.binaries.test")
    fields.update(kw)
    return capability.Capability(**fields)


# ---------------------------------------------------------------- capabilities

def test_capability_round_trip_is_one_line_with_server_hint():
    cap = make_cap()
    text = cap.encode()
    assert text.startswith("usenetfs-cap1:") and "\n" not in text and text == text.lower()
    back = capability.parse("  " + text.upper().replace("USENETFS-CAP1:", "usenetfs-cap1:") + "\n")
    assert back == cap
    assert back.needs_password and not back.needs_identity
    assert back.server_url() == "nntp://news.example.net:119" and back.group() == "alt.binaries.test"


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[:-10], "capability is damaged"),
    (lambda t: t[:40] + ("b" if t[40] != "b" else "c") + t[41:], "checksum does not match"),
    (lambda t: t + "!!", "not base32"),
    (lambda t: "usenetfs-cap2:" + t[14:], "unsupported version"),
    (lambda t: "hello", "not a usenetfs capability"),
    (lambda t: t[:14] + "aaaa", "too short"),
])
def test_a_damaged_capability_is_one_clear_line(damage, message):
    with pytest.raises(UserError, match=message) as raised:
        capability.parse(damage(make_cap().encode()))
    assert "\n" not in str(raised.value)


def test_hint_never_carries_credentials():
    assert capability.make_hint("nntps://news.example.net:563", "a.b") == "nntps://news.example.net:563/a.b"
    with pytest.raises(ValueError):
        capability.make_hint("nntp://alice:secret@news.example.net:119", "a.b")


def test_capability_from_file_with_comments_stdin_or_text(tmp_path, monkeypatch):
    cap = make_cap()
    path = tmp_path / "cap"
    path.write_text(f"# a comment\n\n{cap.encode()}\n")
    assert capability.read_capability(str(path)) == cap
    assert capability.read_capability(cap.encode()) == cap
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(cap.encode() + "\n"))
    assert capability.read_capability("-") == cap
    with pytest.raises(UserError, match="does not exist"):
        capability.read_capability(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(UserError, match="is empty"):
        capability.read_capability(str(tmp_path / "empty"))


# ---------------------------------------------------------------- stanzas and identities

def test_open_and_password_stanzas():
    key = os.urandom(32)
    assert stanzas.unwrap([stanzas.open_stanza(key)], SHARE, 1) == key
    locked = [stanzas.scrypt_stanza(key, "pässword", SHARE, 3, log_n=10)]
    assert stanzas.unwrap(locked, SHARE, 3, password="pässword") == key
    with pytest.raises(UserError, match="wrong password for this share"):
        stanzas.unwrap(locked, SHARE, 3, password="password")
    with pytest.raises(UserError, match="give --password-file"):
        stanzas.unwrap(locked, SHARE, 3)
    with pytest.raises(UserError, match="wrong password"):  # bound to the epoch and share
        stanzas.unwrap(locked, SHARE, 4, password="pässword")
    too_hard = [{**locked[0], "log_n": 30}]
    with pytest.raises(stanzas.NotForUs):
        stanzas.unwrap(too_hard, SHARE, 3, password="pässword")
    with pytest.raises(ValueError):  # a password stanza must be alone (age's rule)
        stanzas.unwrap(locked + [stanzas.open_stanza(key)], SHARE, 3, password="pässword")


def test_x25519_stanzas_open_only_for_their_recipient():
    key = os.urandom(32)
    alice, bob, eve = stanzas.Identity.generate(), stanzas.Identity.generate(), stanzas.Identity.generate()
    ring = [stanzas.x25519_stanza(key, alice.public, SHARE, 1), stanzas.x25519_stanza(key, bob.public, SHARE, 1)]
    assert "recipient" not in str(ring)  # no identifiers: recipients try each stanza
    assert stanzas.unwrap(ring, SHARE, 1, identity=alice) == key
    assert stanzas.unwrap(ring, SHARE, 1, identity=bob) == key
    with pytest.raises(stanzas.NotForUs):
        stanzas.unwrap(ring, SHARE, 1, identity=eve)
    with pytest.raises(stanzas.NotForUs):  # another epoch's AAD
        stanzas.unwrap(ring, SHARE, 2, identity=alice)
    with pytest.raises(UserError, match="give --identity"):
        stanzas.unwrap(ring, SHARE, 1)
    with pytest.raises(UserError, match="low-order"):
        stanzas.x25519_stanza(key, bytes(32), SHARE, 1)


def test_identity_files_and_public_keys(tmp_path):
    identity = stanzas.Identity.generate()
    path = tmp_path / "me.id"
    stanzas.write_identity(path, identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stanzas.read_identity(str(path)).public == identity.public
    with pytest.raises(UserError, match="refusing to overwrite"):
        stanzas.write_identity(path, stanzas.Identity.generate())
    text = identity.public_text()
    assert text.startswith("usenetfs-pub1:") and stanzas.parse_public_key(text.upper()) == identity.public
    with pytest.raises(UserError, match="checksum"):
        stanzas.parse_public_key(text[:-3] + ("a" if text[-3] != "a" else "b") + text[-2:])
    with pytest.raises(UserError, match="not a recipient public key"):
        stanzas.parse_public_key("age1qqqq")
    path.write_text("garbage\n")
    with pytest.raises(UserError, match="identity"):
        stanzas.read_identity(str(path))


# ---------------------------------------------------------------- signed documents

def test_documents_open_only_with_the_publishers_key_and_their_own_number():
    signer = Ed25519PrivateKey.generate()
    public = signer.public_key().public_bytes_raw()
    ring = Keyring(share=SHARE.hex(), number=2, epoch=1, stanzas=[{"type": "open", "key": "x"}])
    payload = ring.sign(signer)
    assert Keyring.open(public, payload, SHARE, 2).stanzas == ring.stanzas
    with pytest.raises(Forged):
        Keyring.open(public, payload, SHARE, 3)  # replayed under another number
    with pytest.raises(Forged):
        Keyring.open(Ed25519PrivateKey.generate().public_key().public_bytes_raw(), payload, SHARE, 2)
    with pytest.raises(Forged):
        Keyring.open(public, payload[:-2] + b"9}", SHARE, 2)  # one byte of the JSON changed
    forged = ring.sign(Ed25519PrivateKey.generate())  # signed, by someone else
    with pytest.raises(Forged):
        Keyring.open(public, forged, SHARE, 2)

    root = Root(share=SHARE.hex(), epoch=1, seq=5, name="photos",
                top={"mode": 0o40755, "uid": 0, "gid": 0, "mtime_ns": 1, "ctime_ns": 1},
                tree=[os.urandom(32).hex(), 0],
                data={"scope": os.urandom(16).hex(), "cipher": "aes-256-gcm", "pad": None, "domain": "a.com"})
    opened = Root.open(public, root.sign(signer), SHARE, 1, 5)
    assert opened.tree_ref == root.tree_ref
    with pytest.raises(Forged):
        Root.open(public, root.sign(signer), SHARE, 2, 5)  # another epoch
    bad = Root(**{**root.__dict__, "tree": ["zz", 0]})
    with pytest.raises(Forged):
        Root.open(public, bad.sign(signer), SHARE, 1, 5)


# ---------------------------------------------------------------- tree objects

def seg_info(seg_id: int) -> tree.SegmentInfo:
    return tree.SegmentInfo(seg_id, seg_id % 3, 1000 + seg_id, os.urandom(32), "abcdefghijklmnopqrstuvwxyz")


def test_objects_round_trip():
    segs = {5: seg_info(5), 6: seg_info(6), 9: seg_info(9)}
    entries = [
        tree.Entry(name=b"a dir", ino=7, mode=stat.S_IFDIR | 0o755, uid=1, gid=2, size=0, mtime_ns=-5,
                   ctime_ns=10**18, child=tree.Ref(os.urandom(32), 1), xattrs=((b"user.k", b"v" * 300),)),
        tree.Entry(name=b"file", ino=8, mode=stat.S_IFREG | 0o600, uid=0, gid=0, size=3000, mtime_ns=1,
                   ctime_ns=2, extents=((0, 1006, 5, 0, 2, 1005), (2000, 1000, 9, 0, 1, 1009))),
        tree.Entry(name=b"link", ino=9, mode=stat.S_IFLNK | 0o777, uid=0, gid=0, size=4, mtime_ns=1,
                   ctime_ns=2, target=b"file"),
        tree.Entry(name=b"pipe", ino=10, mode=stat.S_IFIFO | 0o644, uid=0, gid=0, size=0, mtime_ns=1, ctime_ns=2),
    ]
    raw = tree.encode_piece([tree.encode_entry(e) for e in entries], segs)
    piece = tree.decode_piece(raw)
    assert piece.entries == entries and piece.segments == segs
    refs = [tree.Ref(os.urandom(32), 0), tree.Ref(os.urandom(32), 2)]
    assert tree.decode_directory(tree.encode_directory(refs)) == refs
    file_map = tree.FileMap([(0, 10, 5, 0, 1, 1005)], {5: segs[5]})
    assert tree.decode_file_map(tree.encode_file_map(file_map)) == file_map


@pytest.mark.parametrize("mangle", [
    lambda raw: raw[:-1],  # truncated
    lambda raw: raw + b"\0",  # left over
    lambda raw: bytes([3]) + raw[1:],  # another kind
    lambda raw: raw.replace(b"file", b"fi/e"),  # a slash in a name
    lambda raw: raw.replace(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),  # bad locator
])
def test_malformed_objects_are_refused(mangle):
    entry = tree.Entry(name=b"file", ino=8, mode=stat.S_IFREG | 0o600, uid=0, gid=0, size=10, mtime_ns=1,
                       ctime_ns=2, extents=((0, 10, 5, 0, 1, 1005),))
    raw = tree.encode_piece([tree.encode_entry(entry)], {5: seg_info(5)})
    tree.decode_piece(raw)
    with pytest.raises(Malformed):
        tree.decode_piece(mangle(raw))


def test_a_piece_must_describe_the_segments_its_entries_use():
    entry = tree.Entry(name=b"f", ino=8, mode=stat.S_IFREG | 0o600, uid=0, gid=0, size=10, mtime_ns=1, ctime_ns=2,
                       extents=((0, 10, 5, 0, 1, 1005),))
    with pytest.raises(Malformed, match="does not describe"):
        tree.decode_piece(tree.encode_piece([tree.encode_entry(entry)], {6: seg_info(6)}))


def test_one_new_name_changes_one_piece():
    key = os.urandom(32)

    def pieces(names):
        entries = [tree.Entry(name=n, ino=int.from_bytes(n[-8:], "big"), mode=stat.S_IFREG | 0o644, uid=0, gid=0,
                              size=0, mtime_ns=0, ctime_ns=0) for n in sorted(names)]
        encoded = [(e, tree.encode_entry(e), set()) for e in entries]
        return {b"".join(encoded[i][1] for i in group) for group in tree.cut_pieces(encoded, key)}

    names = [f"photo-{i:05d}.jpg".encode() for i in range(3000)]
    before = pieces(names)
    assert 20 < len(before) < 150  # ~64 entries a piece
    assert pieces(names) == before  # deterministic
    after = pieces(names + [b"photo-01234x.jpg"])
    assert len(before - after) == 1 and 1 <= len(after - before) <= 2  # that piece (maybe split in two)


def test_big_files_are_cut_into_file_maps_at_segment_boundaries():
    stride = 100
    segs = {s: seg_info(s) for s in range(10, 10 + 5000)}
    extents = [(0, 5000 * stride - 30, 10, 0, 5000, stride)]
    maps = tree.split_file_map(extents, segs, per_map=2048)
    assert [len(m.segments) for m in maps] == [2048, 2048, 904]
    covered = []
    for m in maps:
        for offset, length, segment, segment_offset, run, s in m.extents:
            assert segment_offset == 0 and s == stride and set(range(segment, segment + run)) <= set(m.segments)
            covered.append((offset, length))
    assert covered == [(0, 204800), (204800, 204800), (409600, 5000 * stride - 30 - 409600)]


def test_parse_when():
    assert parse_when("+2d", now=1000.0) == 1000.0 + 2 * 86400
    assert parse_when("+90m", now=0.0) == 5400.0
    import datetime as dt
    utc = dt.datetime(2030, 1, 31, tzinfo=dt.timezone.utc).timestamp()
    assert parse_when("2030-01-31T00:00:00+00:00") == utc
    assert parse_when("2030-01-31") == dt.datetime(2030, 1, 31).astimezone().timestamp()  # local time
    with pytest.raises(UserError, match="invalid date"):
        parse_when("next tuesday")


def test_share_mount_options():
    from usenetfs.cli.mount_options import parse_mount_options
    options = parse_mount_options("identity=/keys/me.id,share_password_file=/keys/pw,server=nntps://me@news.example:563,"
                                  "server_password_file=/keys/server,poll=30")
    assert options.share_fields() == {"identity": "/keys/me.id", "password_file": "/keys/pw",
                                      "server": "nntps://me@news.example:563", "server_password_file": "/keys/server"}
    assert options.poll == 30.0 and options.has_share_fields()
    assert not parse_mount_options("ro,allow_other").has_share_fields()
    for bad, message in (("poll=0", "poll takes seconds"), ("poll=soon", "poll takes seconds"),
                         ("server=nntp://me:pw@news.example", "a password in the URL"),
                         ("identity", "identity takes a value"), ("password=x", "secrets must not be mount options")):
        with pytest.raises(UserError, match=message):
            parse_mount_options(bad)
