"""Level 4: mount.usenetfs and `usenetfs install-mount-helper` as mount(8) and a user meet them,
short of a working mount (t5_mount_helper_test mounts): golden help and error lines, exit codes
(1 bad usage, 32 mount failure), fake mode, the installed script run with an empty environment."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from t4_cli_server_test import usenetfs
from usenetfs.cli.mount_helper import MARKER
from usenetfs.innserver import free_port

REPO = Path(__file__).resolve().parent.parent
GOLDEN_HELP = (Path(__file__).parent / "golden/mount.usenetfs-help.txt").read_text()
USAGE_LINE = "(usage: mount.usenetfs VOLUME DIR [-sfnv] [-o OPTIONS])"


def helper(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """The top-level entry point, run as a file (not as a module) like mount(8) would."""
    return subprocess.run([sys.executable, str(REPO / "mount.py"), *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


@pytest.fixture
def home(tmp_path):
    """A home with volume 'vol' on a server nobody listens on, and its passphrase file."""
    home = tmp_path / "home"
    (tmp_path / "pass").write_text("secret words\n")
    created = usenetfs("init", "vol", "--server", f"nntp://127.0.0.1:{free_port()}", "--group",
                       "alt.binaries.test", "--passphrase-file", str(tmp_path / "pass"),
                       "--kdf-log-n", "10", home=home)
    assert created.returncode == 0, created.stderr
    (tmp_path / "mnt").mkdir()
    return home


def test_help_is_golden():
    result = helper("--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == GOLDEN_HELP


@pytest.mark.parametrize("args, message", [
    ([], "mount.usenetfs: expected VOLUME and DIR, got 0 operands"),
    (["vol"], "mount.usenetfs: expected VOLUME and DIR, got 1 operands"),
    (["vol", "/mnt", "extra"], "mount.usenetfs: expected VOLUME and DIR, got 3 operands"),
    (["vol", "/mnt", "-x"], "mount.usenetfs: option -x not recognized"),
    (["vol", "/mnt", "-o"], "mount.usenetfs: option -o requires argument"),
    (["vol", "/mnt", "-N", "/proc/1/ns/mnt"], "mount.usenetfs: mount namespaces (-N) are not supported"),
])
def test_usage_errors_are_golden_and_exit_1(args, message):
    result = helper(*args)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"{message} {USAGE_LINE}\n"


def test_option_and_volume_errors_are_golden_and_exit_32(home, tmp_path):
    mnt = str(tmp_path / "mnt")
    base = f"home={home},passphrase_file={tmp_path / 'pass'}"
    cases = [
        (["vol", mnt, "-o", f"{base},frobnicate"], "unknown mount option 'frobnicate'"),
        (["vol", mnt, "-o", f"{base},passphrase=secret words"],
         "mount option 'passphrase' refused: secrets must not be mount options (ps, logs and fstab "
         "show them); put it in a file and give passphrase_file=FILE"),
        (["vol", mnt, "-o", f"{base},uid=nobody-here"], "invalid mount option 'uid=nobody-here': "
         "no user named 'nobody-here'"),
        (["vol", mnt, "-o", f"{base},config={tmp_path}/none.conf"],
         f"cannot read the config file {tmp_path}/none.conf: No such file or directory"),
        (["nosuch", mnt, "-o", base], f"no volume named 'nosuch' in {home}/config "
         "(give home=DIR, or create it with 'usenetfs init')"),
        (["./vol.cap", mnt, "-o", f"home={home}"], "capability file ./vol.cap does not exist"),  # a share's
        (["./vol.cap", mnt, "-o", base], "a share takes share_password_file= or identity=, not a passphrase"),
        (["vol", f"{tmp_path}/missing", "-o", base], f"mountpoint {tmp_path}/missing is not a directory"),
        (["vol", mnt, "-o", f"home={home},passphrase_file={tmp_path}/nopass"],
         f"cannot read the passphrase file {tmp_path}/nopass: No such file or directory"),
    ]
    for args, message in cases:
        result = helper(*args)
        assert (result.returncode, result.stdout, result.stderr) == (32, "", f"mount.usenetfs: {message}\n"), args
        assert not os.path.ismount(mnt)


def test_wrong_passphrase_and_dead_server_exit_32_with_one_line(home, tmp_path):
    mnt = tmp_path / "mnt"
    (tmp_path / "wrong").write_text("not it\n")
    wrong = helper("vol", str(mnt), "-o", f"home={home},passphrase_file={tmp_path / 'wrong'}")
    assert (wrong.returncode, wrong.stderr) == (32, "mount.usenetfs: wrong passphrase\n")
    dead = helper("vol", str(mnt), "-o", f"home={home},passphrase_file={tmp_path / 'pass'}")
    assert dead.returncode == 32
    assert dead.stderr.startswith("mount.usenetfs: server check failed: ")
    assert len(dead.stderr.splitlines()) == 1 and "Traceback" not in dead.stderr
    assert not os.path.ismount(mnt)
    assert not (home / "data/volumes/vol/mount.json").exists()


def test_fake_mode_checks_everything_but_mounts_nothing(home, tmp_path):
    mnt = str(tmp_path / "mnt")
    options = f"home={home},passphrase_file={tmp_path / 'pass'},ro,_netdev,nofail"
    quiet = helper("vol", mnt, "-f", "-o", options)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    verbose = helper("-fnv", "vol", mnt, "-o", options)
    assert verbose.returncode == 0
    assert verbose.stderr == (f"mount.usenetfs: checking volume 'vol' of {home}/config at {mnt} "
                              f"(options: home={home},passphrase_file={tmp_path / 'pass'},ro; "
                              "ignored: _netdev,nofail)\n")
    assert helper("vol", mnt, "-f", "-o", f"{options},frobnicate").returncode == 32
    sloppy = helper("vol", mnt, "-sf", "-o", f"{options},frobnicate")
    assert (sloppy.returncode, sloppy.stderr) == (0, "")
    assert not os.path.ismount(mnt)


def test_usenetfs_mount_shares_the_parser(home, tmp_path):
    result = usenetfs("mount", "vol", str(tmp_path / "mnt"), "-o", "passphrase=x", home=home)
    assert (result.returncode, result.stderr.splitlines()[0]) == (
        32, "usenetfs: mount option 'passphrase' refused: secrets must not be mount options (ps, logs "
        "and fstab show them); put it in a file and give passphrase_file=FILE")
    other_home = usenetfs("mount", "vol", str(tmp_path / "mnt"), "-o", f"home={tmp_path}/elsewhere",
                          home=home)  # USENETFS_HOME is not --home: no conflict, -o wins
    assert "no volume named 'vol'" in other_home.stderr


def test_install_mount_helper_to_a_target(tmp_path):
    target = tmp_path / "sbin/mount.usenetfs"
    target.parent.mkdir()
    first = usenetfs("install-mount-helper", "--target", str(target), home=tmp_path)
    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout == f"mount helper installed: {target} (runs {sys.executable})\n"
    script = target.read_text()
    assert script.splitlines()[:2] == [f"#!{sys.executable} -I", MARKER]
    assert target.stat().st_mode & 0o777 == 0o755
    again = usenetfs("install-mount-helper", "--target", str(target), home=tmp_path)
    assert again.stdout == f"mount helper already installed: {target} (runs {sys.executable})\n"
    assert target.read_text() == script

    # mount(8) under systemd: no PATH, no HOME, run from /. The script finds its Python anyway.
    help_text = subprocess.run([str(target), "--help"], env={}, cwd="/", capture_output=True, text=True)
    assert (help_text.returncode, help_text.stdout) == (0, GOLDEN_HELP)

    # An older install (another Python) is updated; a file usenetfs did not write is left alone.
    target.write_text(script.replace(sys.executable, "/old/venv/bin/python"))
    updated = usenetfs("install-mount-helper", "--target", str(target), home=tmp_path)
    assert updated.stdout.startswith("mount helper updated:") and target.read_text() == script
    target.write_text("#!/bin/sh\nexec something-else \"$@\"\n")
    refused = usenetfs("install-mount-helper", "--target", str(target), home=tmp_path)
    assert (refused.returncode, refused.stderr) == (
        1, f"usenetfs: {target} exists and was not installed by usenetfs: remove it or give --force\n")
    forced = usenetfs("install-mount-helper", "--target", str(target), "--force", home=tmp_path)
    assert forced.returncode == 0 and target.read_text() == script

    blocked = usenetfs("install-mount-helper", "--target", str(tmp_path / "no/such/dir/mount.usenetfs"),
                       home=tmp_path)
    assert (blocked.returncode, blocked.stderr) == (
        1, f"usenetfs: cannot install {tmp_path}/no/such/dir/mount.usenetfs: No such file or directory "
        "(run as root, or give --target)\n")
