"""Level 4: the share commands as a user runs them (subprocesses): --help against golden
files, every error one line with its exit code, identities, and a share published from an
unmounted volume (--volume) and looked at with `share ls/info/list/log` against real INN.
Real mounts of shares are in t5_share_test.

Golden files live in tests/golden/; after a deliberate change of a help text, run the tests
once with USENETFS_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess

import pytest

from t4_cli_ops_test import assert_help_matches_golden, usenetfs

PASSPHRASE = "secret words"


run = functools.partial(usenetfs, timeout=120)


@pytest.mark.parametrize("command", ["share publish", "share grant", "share revoke", "share ls", "share refresh",
                                     "share log", "id create"])
def test_help_matches_golden(command, tmp_path):
    assert_help_matches_golden(command, tmp_path)


@pytest.fixture
def owner(tmp_path, inn) -> dict:
    """A volume `vol` on the test INN, with a passphrase file, never mounted."""
    home = tmp_path / "owner"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    made = run("init", "vol", "--server", inn.url, "--group", "alt.binaries.test", "--passphrase-file",
               str(passphrase), "--kdf-log-n", "10", home=home)
    assert made.returncode == 0, made.stderr
    return {"home": home, "passphrase": str(passphrase), "server": inn}


def one_line(result: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert (result.returncode, result.stderr, result.stdout) == (code, f"usenetfs: {text}\n", ""), result


def test_identities(tmp_path):
    made = run("id", "create", str(tmp_path / "me.id"), home=tmp_path)
    assert made.returncode == 0 and made.stdout.startswith("usenetfs-pub1:") and len(made.stdout.split()) == 1
    assert stat.S_IMODE((tmp_path / "me.id").stat().st_mode) == 0o600
    assert "USENETFS-SECRET-KEY-1:" in (tmp_path / "me.id").read_text()
    assert made.stdout.strip() not in (tmp_path / "me.id").read_text().split("\n")[-2]  # the secret line
    shown = run("id", "show", str(tmp_path / "me.id"), home=tmp_path)
    assert shown.stdout == made.stdout
    one_line(run("id", "create", str(tmp_path / "me.id"), home=tmp_path), 1,
             f"{tmp_path / 'me.id'} exists: refusing to overwrite an identity (give --force)")
    again = run("id", "create", str(tmp_path / "me.id"), "--force", home=tmp_path)
    assert again.returncode == 0 and again.stdout != made.stdout


def test_share_errors_are_one_exact_line(owner, tmp_path):
    home = owner["home"]
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    cap_file = tmp_path / "cap"
    identity = tmp_path / "me.id"
    public = run("id", "create", str(identity), home=tmp_path).stdout.strip()
    cases = [
        (["share", "publish", str(nowhere)], 1,
         f"{nowhere} is not inside a volume of this home mounted here (to publish from an unmounted volume, "
         "give --volume NAME and the path inside it, like /photos)"),
        (["share", "publish", "photos", "--volume", "vol"], 1,
         "with --volume, PATH is a path inside the volume from its root, like /photos"),
        (["share", "publish", "/photos", "--volume", "nosuch"], 1,
         "no volume named 'nosuch' (create it with 'usenetfs init')"),
        (["share", "publish", "/", "--volume", "vol", "--expires", "next week"], 1,
         "invalid date 'next week': use 2030-01-31, '2030-01-31 18:00' or +7d"),
        (["share", "publish", "/", "--volume", "vol", "--expires", "2001-01-01"], 1, "--expires is in the past"),
        (["share", "grant", "/", "usenetfs-pub1:abcdefgh", "--volume", "vol"], 1,
         "recipient public key is damaged (its checksum does not match)"),
        (["share", "grant", "/", "age1xyz", "--volume", "vol"], 1,
         "not a recipient public key (it should start with 'usenetfs-pub1:')"),
        (["share", "revoke", "nosuch", public], 1, "no share named 'nosuch'"),
        (["share", "info", "nosuch"], 1, "no share named 'nosuch'"),
        (["share", "log", "nosuch"], 1, "no share named 'nosuch'"),
        (["share", "refresh", str(nowhere)], 1, f"no share of this home is mounted at {nowhere}"),
        (["share", "ls", str(cap_file)], 1, f"capability file {cap_file} does not exist"),
        (["share", "ls", "usenetfs-cap1:aaaa"], 1, "capability is damaged: too short (was it cut?)"),
        (["mount", str(cap_file), str(nowhere)], 32, f"capability file {cap_file} does not exist"),
        (["mount", "vol", str(nowhere), "--identity", str(identity)], 32,
         "--password-file, --identity, --server and --poll are for mounting a share's capability"),
        (["mount", str(cap_file), str(nowhere), "-o", "server=nntp://me:pw@news.example.com"], 32,
         "mount option 'server' refused: a password in the URL would show in ps, logs and fstab; give "
         "server_password_file=FILE"),
    ]
    for args, code, line in cases:
        one_line(run(*args, home=home), code, line)

    # A damaged capability (a mistyped letter, a cut) is one line wherever it comes from.
    published = run("share", "publish", "/", "--volume", "vol", "--passphrase-file", owner["passphrase"],
                    "--out", str(cap_file), home=home)
    assert published.returncode == 0, published.stderr
    text = cap_file.read_text().splitlines()[-1]
    typo = text[:30] + ("a" if text[30] != "a" else "b") + text[31:]
    for damaged in (typo, text[:-5]):
        (tmp_path / "bad").write_text(damaged + "\n")
        for args, code in ((["share", "ls", str(tmp_path / "bad")], 1),
                           (["mount", str(tmp_path / "bad"), str(nowhere)], 32),
                           (["mount", "-", str(nowhere)], 32)):
            result = run(*args, home=tmp_path / "elsewhere", stdin=damaged + "\n")
            assert result.returncode == code and result.stdout == "", result
            assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
            assert result.stderr.startswith("usenetfs: capability is damaged: "), result.stderr
    assert not os.path.ismount(nowhere)


def test_a_share_of_an_unmounted_volume(owner, tmp_path):
    home = owner["home"]
    cap_file = tmp_path / "cap"
    published = run("share", "publish", "/", "--volume", "vol", "--name", "everything", "--expires", "+30d",
                    "--passphrase-file", owner["passphrase"], "--out", str(cap_file), home=home)
    assert published.returncode == 0 and published.stdout == "", published.stderr
    assert "published share 'everything': root 1 of epoch 1, 0 files in 1 folders" in published.stderr
    assert stat.S_IMODE(cap_file.stat().st_mode) == 0o600
    cap = cap_file.read_text().splitlines()[-1]
    assert cap.startswith("usenetfs-cap1:")

    listed = run("share", "ls", str(cap_file), home=tmp_path / "elsewhere")  # an empty home
    assert listed.returncode == 0 and listed.stdout == "", listed.stderr
    assert "# share 'everything', root 1 of epoch 1: 0 files in 1 folders" in listed.stderr
    assert not (tmp_path / "elsewhere").exists()  # nothing written

    again = run("share", "publish", "/", "--volume", "vol", "--passphrase-file", owner["passphrase"], home=home)
    assert again.returncode == 0 and again.stdout.strip() == cap  # the same capability
    assert "root 2 of epoch 1" in again.stderr and "0 index articles posted" in again.stderr

    info = json.loads(run("share", "info", "everything", "--json", home=home).stdout)
    assert (info["path"], info["mode"], info["root"], info["keyring"], info["expired"]) == ("/", "open", 2, 1, False)
    assert run("share", "info", "everything", "--capability", home=home).stdout.strip() == cap
    listing = json.loads(run("share", "list", "--json", home=home).stdout)
    assert [s["name"] for s in listing["shares"]] == ["everything"] and listing["subscriptions"] == []
    log = run("share", "log", "everything", "--json", home=home)
    events = [entry["event"] for entry in json.loads(log.stdout)]
    assert events == ["create", "publish", "publish"]
    assert all(len(entry["key"]) == 16 for entry in json.loads(log.stdout))  # fingerprints, not keys
    state = (home / "config/volumes/vol/shares/everything/share.json").read_text()
    assert json.loads(state)["epoch_key"] not in log.stdout

    one_line(run("share", "publish", "/nosuch", "--volume", "vol", "--passphrase-file", owner["passphrase"],
                 home=home), 1, "/nosuch: no such folder in the volume")
    one_line(run("share", "revoke", "everything", run("id", "create", str(tmp_path / "x.id"),
                                                        home=tmp_path).stdout.strip(), home=home), 1,
             "share 'everything' opens with its capability, not for named recipients: there is no one to revoke "
             "(whoever has the capability keeps it; publish the folder as a new share to leave them behind)")
