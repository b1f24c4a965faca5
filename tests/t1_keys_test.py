"""Tier-1 tests of usenetfs.keys: the passphrase envelope and the derived volume keys.

scrypt runs at log_n=10 here for speed; the default (17) is exercised once.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from usenetfs.codec.segment import KIND_DATA, KIND_INDEX, SegmentId
from usenetfs.errors import UserError
from usenetfs.keys import (
    DEFAULT_LOG_N,
    BadEnvelope,
    VolumeKeys,
    WrongPassphrase,
    create_envelope,
    rewrap_envelope,
    unwrap_envelope,
)

LOG_N = 10
MSGID_RE = re.compile(r"^<[a-z2-7]{26}@[a-z0-9.-]+\.[a-z]+>$")
SCOPE = bytes(range(16))
MASTER = bytes(range(32))


# --------------------------------------------------------------------------- envelope


def test_envelope_round_trip_and_shape():
    key, env = create_envelope("correct horse", log_n=LOG_N)
    assert len(key) == 32
    env = json.loads(json.dumps(env))  # JSON-serialisable, and survives the trip
    assert set(env) == {"version", "kdf", "log_n", "r", "p", "salt", "nonce", "wrapped"}
    assert env["version"] == 1 and env["kdf"] == "scrypt"
    assert (env["log_n"], env["r"], env["p"]) == (LOG_N, 8, 1)
    assert len(base64.b64decode(env["salt"])) == 16
    assert len(base64.b64decode(env["nonce"])) == 12
    assert len(base64.b64decode(env["wrapped"])) == 48
    assert unwrap_envelope(env, "correct horse") == key
    assert unwrap_envelope(env, b"correct horse") == key


def test_envelopes_are_fresh():
    k1, e1 = create_envelope("pw", log_n=LOG_N)
    k2, e2 = create_envelope("pw", log_n=LOG_N)
    assert k1 != k2 and e1["salt"] != e2["salt"] and e1["wrapped"] != e2["wrapped"]


def test_default_work_factor():
    assert DEFAULT_LOG_N == 17
    key, env = create_envelope("pw")
    assert env["log_n"] == 17
    assert unwrap_envelope(env, "pw") == key


def test_wrong_passphrase():
    _, env = create_envelope("right", log_n=LOG_N)
    with pytest.raises(WrongPassphrase) as ei:
        unwrap_envelope(env, "wrong")
    assert str(ei.value) == "wrong passphrase"
    assert isinstance(ei.value, UserError) and ei.value.exit_code == 1
    with pytest.raises(WrongPassphrase):
        unwrap_envelope(env, "")


def test_unicode_passphrase_normalised():
    key, env = create_envelope("caf\u00e9", log_n=LOG_N)  # precomposed é
    assert unwrap_envelope(env, "cafe\u0301") == key  # e + combining accent


def test_rewrap_keeps_master_key_and_retires_old_passphrase():
    key, env = create_envelope("old", log_n=LOG_N)
    new = rewrap_envelope(env, "old", "new")
    assert unwrap_envelope(new, "new") == key
    with pytest.raises(WrongPassphrase):
        unwrap_envelope(new, "old")
    assert new["salt"] != env["salt"] and new["nonce"] != env["nonce"]
    assert new["log_n"] == env["log_n"]
    assert {k: v for k, v in new.items() if k not in ("salt", "nonce", "wrapped")} == {
        k: v for k, v in env.items() if k not in ("salt", "nonce", "wrapped")
    }
    stronger = rewrap_envelope(new, "new", "newer", log_n=11)
    assert stronger["log_n"] == 11 and unwrap_envelope(stronger, "newer") == key
    with pytest.raises(WrongPassphrase):
        rewrap_envelope(env, "not it", "x")


@pytest.mark.parametrize(
    "field,value",
    [
        ("log_n", LOG_N + 1),  # a downgrade/upgrade of the work factor
        ("salt", base64.b64encode(bytes(16)).decode()),
        ("nonce", base64.b64encode(bytes(12)).decode()),
        ("wrapped", base64.b64encode(bytes(48)).decode()),
    ],
)
def test_tampered_params_rejected(field, value):
    _, env = create_envelope("pw", log_n=LOG_N)
    bad = dict(env, **{field: value})
    with pytest.raises(WrongPassphrase):
        unwrap_envelope(bad, "pw")


@pytest.mark.parametrize(
    "change",
    [
        {"log_n": 9},
        {"log_n": 23},
        {"log_n": 40},
        {"log_n": "17"},
        {"log_n": 17.0},
        {"log_n": True},
        {"r": 16},
        {"p": 2},
        {"version": 2},
        {"kdf": "argon2id"},
        {"salt": "not base64!"},
        {"salt": base64.b64encode(bytes(8)).decode()},
        {"wrapped": base64.b64encode(bytes(47)).decode()},
        {"nonce": None},
    ],
)
def test_malformed_or_unbounded_envelope_rejected_clearly(change):
    _, env = create_envelope("pw", log_n=LOG_N)
    with pytest.raises(BadEnvelope) as ei:
        unwrap_envelope(dict(env, **change), "pw")
    assert isinstance(ei.value, UserError)
    assert "\n" not in str(ei.value)


def test_missing_field_and_non_dict():
    _, env = create_envelope("pw", log_n=LOG_N)
    del env["salt"]
    with pytest.raises(BadEnvelope):
        unwrap_envelope(env, "pw")
    with pytest.raises(BadEnvelope):
        unwrap_envelope(["not", "a", "dict"], "pw")  # type: ignore[arg-type]


def test_create_bounds():
    with pytest.raises(BadEnvelope):
        create_envelope("pw", log_n=9)
    with pytest.raises(UserError):
        create_envelope("", log_n=LOG_N)


# --------------------------------------------------------------------------- volume keys


def test_subkeys_distinct_and_deterministic():
    a, b = VolumeKeys(MASTER), VolumeKeys(MASTER)
    keys = [a.data_key, a.index_key, a.locate_key, a.key_check()]
    assert len(set(keys)) == 4
    assert [len(k) for k in keys] == [32, 32, 32, 16]
    assert keys == [b.data_key, b.index_key, b.locate_key, b.key_check()]
    assert MASTER not in keys
    other = VolumeKeys(bytes(32))
    assert other.data_key != a.data_key and other.key_check() != a.key_check()
    with pytest.raises(ValueError):
        VolumeKeys(b"short")


def test_message_id_deterministic_and_well_formed():
    vk = VolumeKeys(MASTER)
    ident = SegmentId(SCOPE, KIND_DATA, 42)
    mid = vk.message_id(ident, 0)
    assert MSGID_RE.match(mid), mid
    assert mid == VolumeKeys(MASTER).message_id(SegmentId(SCOPE, KIND_DATA, 42), 0)
    assert vk.message_id(ident) == mid  # generation defaults to 0
    assert "usenetfs" not in mid.lower()
    assert len(mid) <= 250


def test_message_id_differs_by_every_input():
    vk = VolumeKeys(MASTER)
    base = vk.message_id(SegmentId(SCOPE, KIND_DATA, 1), 0)
    variants = [
        vk.message_id(SegmentId(SCOPE, KIND_DATA, 1), 1),
        vk.message_id(SegmentId(SCOPE, KIND_DATA, 2), 0),
        vk.message_id(SegmentId(SCOPE, KIND_INDEX, 1), 0),
        vk.message_id(SegmentId(bytes(16), KIND_DATA, 1), 0),
        VolumeKeys(bytes(32)).message_id(SegmentId(SCOPE, KIND_DATA, 1), 0),
    ]
    lefts = {m.split("@")[0] for m in [base, *variants]}
    assert len(lefts) == 6
    for m in variants:
        assert MSGID_RE.match(m)


def test_message_ids_unique_over_many():
    vk = VolumeKeys(MASTER)
    ids = {
        vk.message_id(SegmentId(SCOPE, kind, n), g)
        for kind in (KIND_DATA, KIND_INDEX)
        for n in range(500)
        for g in range(3)
    }
    assert len(ids) == 3000
    assert all(MSGID_RE.match(m) for m in ids)
    assert vk.message_id(SegmentId(SCOPE, 0, (1 << 64) - 1), (1 << 32) - 1)
    with pytest.raises(ValueError):
        vk.message_id(SegmentId(SCOPE, 0, 0), 1 << 32)
    with pytest.raises(ValueError):
        vk.message_id(SegmentId(SCOPE, 0, 0), -1)


def test_domain_derived_from_key_and_overridable():
    domains = {VolumeKeys(bytes([i]) * 32).domain for i in range(40)}
    assert len(domains) > 30
    for d in domains:
        assert re.fullmatch(r"[a-z]+\.(com|net|org)", d), d
        assert "usenetfs" not in d
    vk = VolumeKeys(MASTER, domain="Example.ORG")
    mid = vk.message_id(SegmentId(SCOPE, 0, 0))
    assert mid.endswith("@example.org>") and MSGID_RE.match(mid)
    # The left part does not depend on the domain.
    assert mid.split("@")[0] == VolumeKeys(MASTER).message_id(SegmentId(SCOPE, 0, 0)).split("@")[0]
    for bad in ["", "nodot", "a..b.com", "-a.com", "a b.com", "a@b.com", "a.com.", "ex_ample.com"]:
        with pytest.raises(ValueError):
            VolumeKeys(MASTER, domain=bad)
