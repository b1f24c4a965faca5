"""Level 4: the volume commands' error handling, as a user meets it (subprocesses)."""

import os
import subprocess
import sys

from t4_cli_server_test import assert_one_line_error, usenetfs


def _init(home, tmp_path, *extra, name="vol"):
    passphrase = tmp_path / "pass"
    passphrase.write_text("secret words\n")
    return usenetfs("init", name, "--server", "nntp://127.0.0.1:9", "--group", "alt.binaries.test",
                    "--passphrase-file", str(passphrase), "--kdf-log-n", "10", *extra, home=home)


def test_init_creates_a_volume_and_refuses_a_second(tmp_path):
    home = tmp_path / "home"
    first = _init(home, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created volume 'vol'" in first.stdout
    assert (home / "data/volumes/vol/index.sqlite").exists()
    key_file = home / "config/volumes/vol/key.json"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert "secret words" not in key_file.read_text()
    assert_one_line_error(_init(home, tmp_path), "already exists")
    fsck = usenetfs("fsck", "vol", home=home)
    assert fsck.returncode == 0 and "clean" in fsck.stdout


def test_fsck_and_cache_clear_refuse_a_volume_another_process_owns(tmp_path):
    """fsck and cache clear take the volume's owner lock: while another process owns the
    volume (a mount starting, `usenetfs sync` on the unmounted volume) they refuse with one
    line instead of changing the index under it."""
    from usenetfs.home import Home
    from usenetfs.volume import Volume
    home = tmp_path / "home"
    assert _init(home, tmp_path).returncode == 0
    volume = Volume(Home.resolve(str(home)), "vol")
    with volume.exclusive("usenetfs sync (pid 12345)"):
        for command in (("fsck", "vol"), ("cache", "clear", "vol")):
            assert_one_line_error(usenetfs(*command, home=home), "in use by usenetfs sync (pid 12345)")
    assert usenetfs("fsck", "vol", home=home).returncode == 0
    assert usenetfs("cache", "clear", "vol", home=home).returncode == 0


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path):
    # `usenetfs ... | head`: stdout is a pipe nobody reads any more.
    read_end, write_end = os.pipe()
    os.close(read_end)
    passphrase = tmp_path / "pass"
    passphrase.write_text("secret words\n")
    result = subprocess.run(
        [sys.executable, "-m", "usenetfs.cli.main", "init", "vol", "--server", "nntp://127.0.0.1:9",
         "--group", "alt.binaries.test", "--passphrase-file", str(passphrase), "--kdf-log-n", "10"],
        env={**os.environ, "USENETFS_HOME": str(tmp_path / "home")}, stdout=write_end,
        stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write_end)
    assert result.returncode == 1 and result.stderr == ""


def test_init_bad_input(tmp_path):
    home = tmp_path / "home"
    passphrase = tmp_path / "pass"
    passphrase.write_text("x\n")
    base = ["init", "v", "--group", "alt.binaries.test", "--passphrase-file", str(passphrase)]
    assert_one_line_error(usenetfs(*base, home=home), "--server")
    assert_one_line_error(usenetfs(*base, "--server", "ftp://x", home=home), "scheme")
    assert_one_line_error(usenetfs("init", "bad/name", "--local", "--group", "a.b",
                                   "--passphrase-file", str(passphrase), home=home), "invalid volume name")
    assert_one_line_error(usenetfs("init", "v", "--local", "--group", "a.b", home=home), "passphrase")


def test_mount_errors_are_one_line_and_leave_nothing_mounted(tmp_path):
    home = tmp_path / "home"
    assert _init(home, tmp_path).returncode == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    assert_one_line_error(usenetfs("mount", "vol", str(mnt), "--passphrase-file", str(wrong), home=home),
                          "wrong passphrase")
    right = str(tmp_path / "pass")
    assert_one_line_error(usenetfs("mount", "nosuch", str(mnt), "--passphrase-file", right, home=home),
                          "no volume named 'nosuch'")
    assert_one_line_error(usenetfs("mount", "vol", str(mnt), "-o", "frobnicate", "--passphrase-file",
                                   right, home=home), "unknown mount option")
    assert_one_line_error(usenetfs("mount", "vol", str(tmp_path / "missing"), "--passphrase-file",
                                   right, home=home), "not a directory")
    # The server (port 9, discard) is unreachable: the mount fails cleanly with exit 32.
    result = usenetfs("mount", "vol", str(mnt), "--passphrase-file", right, home=home)
    assert_one_line_error(result, "server check failed")
    assert result.returncode == 32
    assert not os.path.ismount(mnt)


def test_umount_of_something_not_mounted(tmp_path):
    assert_one_line_error(usenetfs("umount", str(tmp_path), home=tmp_path / "home"), "no usenetfs volume")
