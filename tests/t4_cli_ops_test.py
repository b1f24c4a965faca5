"""Level 4: `usenetfs status | flush | verify | passwd` and `server test --volume` as a user
runs them (subprocesses): --help against golden files, every error as one exact line with
its exit code, passwd on disk, server test of a configured volume against real INN.

Golden files live in tests/golden/; after a deliberate change of a help text, run the
tests once with USENETFS_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from usenetfs.home import Home
from usenetfs.volume import Volume

GOLDEN = Path(__file__).parent / "golden"
PASSPHRASE = "secret words"


def usenetfs(*args: str, home: Path, timeout: float = 60, stdin: str = "") -> subprocess.CompletedProcess:
    """A usenetfs command in `home`, as a user without USENETFS_PASSPHRASE_FILE runs it;
    `stdin` is all it can read (nothing by default)."""
    env = {k: v for k, v in os.environ.items() if k != "USENETFS_PASSPHRASE_FILE"}
    env.update(USENETFS_HOME=str(home), COLUMNS="100")  # argparse wraps help at COLUMNS
    return subprocess.run([sys.executable, "-m", "usenetfs.cli.main", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def assert_help_matches_golden(command: str, home: Path) -> None:
    """`usenetfs COMMAND --help` is tests/golden/help-COMMAND.txt (spaces as dashes), and
    documents its exit codes (USENETFS_UPDATE_GOLDEN=1 rewrites the file instead)."""
    result = usenetfs(*command.split(), "--help", home=home)
    assert result.returncode == 0 and result.stderr == ""
    golden = GOLDEN / f"help-{command.replace(' ', '-')}.txt"
    if os.environ.get("USENETFS_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(result.stdout)
    assert result.stdout == golden.read_text()
    assert "exit codes: 0 " in result.stdout  # documented where a user looks


@pytest.fixture
def vol(tmp_path) -> dict:
    """A volume `vol` whose server (port 9, discard) never answers, and passphrase files."""
    home = tmp_path / "home"
    files = {name: tmp_path / name for name in ("right", "wrong", "new", "empty")}
    files["right"].write_text(PASSPHRASE + "\n")
    files["wrong"].write_text("not it\n")
    files["new"].write_text("a new passphrase\n")
    files["empty"].write_text("")
    made = usenetfs("init", "vol", "--server", "nntp://127.0.0.1:9", "--group", "alt.binaries.misc",
                    "--passphrase-file", str(files["right"]), "--kdf-log-n", "10", home=home)
    assert made.returncode == 0, made.stderr
    return {"home": home, **{name: str(path) for name, path in files.items()}}


@pytest.mark.parametrize("command", ["status", "flush", "verify", "passwd", "server test"])
def test_help_matches_golden(command, tmp_path):
    assert_help_matches_golden(command, tmp_path)


def test_usage_errors_are_one_line_with_exit_2(tmp_path):
    cases = [
        (["flush"], "usenetfs flush: error: the following arguments are required: mountpoint"),
        (["verify", "--sample", "0"], "usenetfs verify: error: argument --sample: must be above 0 and at most 100"),
        (["verify", "--sample", "half"], "usenetfs verify: error: argument --sample: not a number: 'half'"),
        (["status", "--frobnicate"], "usenetfs: error: unrecognized arguments: --frobnicate"),
    ]
    for args, line in cases:
        result = usenetfs(*args, home=tmp_path)
        assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", ""), args


def test_errors_are_one_exact_line(vol, tmp_path):
    home = vol["home"]
    nowhere = str(tmp_path / "nowhere")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    cases = [
        (["status", nowhere], 1, f"no usenetfs volume of this home is mounted at {nowhere}"),
        (["flush", nowhere], 1, f"no usenetfs volume of this home is mounted at {nowhere}"),
        (["verify", "nosuch"], 1, "no volume named 'nosuch' (create it with 'usenetfs init')"),
        (["verify", "vol"], 1, "no passphrase: give --passphrase-file or set USENETFS_PASSPHRASE_FILE"),
        (["verify", "vol", "--passphrase-file", vol["wrong"]], 1, "wrong passphrase"),
        (["passwd", "vol", "--passphrase-file", vol["wrong"], "--new-passphrase-file", vol["new"]], 1,
         "wrong passphrase: the current passphrase does not open the key; nothing changed"),
        (["passwd", "vol", "--passphrase-file", vol["right"]], 1, "no passphrase: give --new-passphrase-file"),
        (["passwd", "vol", "--passphrase-file", vol["right"], "--new-passphrase-file", vol["right"]], 1,
         "the new passphrase is the same as the current one: nothing changed"),
        (["passwd", "vol", "--passphrase-file", vol["right"], "--new-passphrase-file", vol["empty"]], 1,
         "the passphrase is empty"),
        (["passwd", "vol", "--passphrase-file", vol["right"], "--new-passphrase-file", nowhere], 1,
         f"cannot read the passphrase file {nowhere}: No such file or directory"),
        (["verify", "vol", "--passphrase-file", str(binary)], 1, f"the passphrase file {binary} is not text"),
        (["server", "test", "nntp://127.0.0.1:9", "--password-file", str(binary)], 1,
         f"the password file {binary} is not text"),
        (["server", "test", "--volume", "vol", "nntp://example.com"], 1,
         "give one of: a server URL, --local, --volume NAME"),
        (["server", "test", "--volume", "vol", "--password-file", vol["right"]], 1,
         "--password-file and --ca-file come from the volume with --volume"),
        (["server", "test", "--volume", "nosuch"], 1, "no volume named 'nosuch' (create it with 'usenetfs init')"),
    ]
    key_file = home / "config/volumes/vol/key.json"
    key_before = key_file.read_bytes()
    for args, code, line in cases:
        result = usenetfs(*args, home=home)
        assert (result.returncode, result.stderr, result.stdout) == (code, f"usenetfs: {line}\n", ""), args
    assert key_file.read_bytes() == key_before  # no failed passwd changed anything

    # The volume's server does not answer: verify fails at once with one line (not after a
    # retry policy), and so does server test of the volume.
    for args in (["verify", "vol", "--passphrase-file", vol["right"]],
                 ["server", "test", "--volume", "vol", "--articles", "1"]):
        result = usenetfs(*args, home=home)
        lines = result.stderr.splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "127.0.0.1:9" in lines[0] or "server check failed" in lines[0], lines[0]


def test_verify_of_a_volume_another_process_owns_says_so(vol):
    """Offline verify owns the volume while it runs (a mount started meanwhile is refused
    in one line, and the other way round): here another process holds it."""
    volume = Volume(Home.resolve(vol["home"]), "vol")
    with volume.exclusive("usenetfs sync (pid 4242)"):
        result = usenetfs("verify", "vol", "--passphrase-file", vol["right"], home=vol["home"])
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "usenetfs: volume 'vol' is in use by usenetfs sync (pid 4242)\n"


def test_status_with_nothing_mounted(vol):
    result = usenetfs("status", home=vol["home"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "no volume of this home is mounted\n", "")
    result = usenetfs("status", "--json", home=vol["home"])
    assert result.returncode == 3 and json.loads(result.stdout) == []


def test_passwd_rewraps_the_key_atomically(vol):
    home = vol["home"]
    volume = Volume(Home.resolve(home), "vol")
    master = volume.unlock(PASSPHRASE).key_check()
    result = usenetfs("passwd", "vol", "--passphrase-file", vol["right"], "--new-passphrase-file", vol["new"],
                      home=home)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("passphrase of volume 'vol' changed\n")
    assert "still open with the old one" in result.stdout
    assert volume.unlock("a new passphrase").key_check() == master  # the same key, re-wrapped
    with pytest.raises(Exception, match="wrong passphrase"):
        volume.unlock(PASSPHRASE)
    config = volume.config_dir
    assert sorted(p.name for p in config.iterdir()) == ["key.json", "secrets.json", "volume.json"]  # no temp left
    assert oct((config / "key.json").stat().st_mode & 0o777) == "0o600"
    # The old passphrase no longer opens it from the command line either.
    result = usenetfs("passwd", "vol", "--passphrase-file", vol["right"], "--new-passphrase-file", vol["new"],
                      home=home)
    assert result.returncode == 1 and result.stderr.startswith("usenetfs: wrong passphrase")


def test_server_test_of_a_configured_volume(inn, tmp_path):
    home = tmp_path / "home"
    passphrase = tmp_path / "pass"
    passphrase.write_text("x y z\n")
    made = usenetfs("init", "vol", "--server", inn.url, "--group", "alt.binaries.misc", "--connections", "2",
                    "--passphrase-file", str(passphrase), "--kdf-log-n", "10", home=home)
    assert made.returncode == 0, made.stderr
    before = inn.article_count()
    result = usenetfs("server", "test", "--volume", "vol", "--articles", "3", "--json", home=home)
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert report["ok"] and report["round_tripped"] == 3 and report["connections_cap"] == 2
    assert report["server"] == inn.url
    assert inn.article_count() == before + 3
    text = usenetfs("server", "test", "--volume", "vol", "--articles", "1", home=home)
    assert text.returncode == 0 and "result:        OK, every article round-tripped" in text.stdout
