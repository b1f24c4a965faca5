"""Level 4: `usenetfs sync` as a user runs it (subprocesses), volume unmounted: --help
against its golden file, every error as one exact line with its exit code, and a sync
into an unmounted volume against real INN (posted before the command returns, then
nothing left to do; the volume owned by one process at a time).

Golden files live in tests/golden/; after a deliberate change of a help text, run the
tests once with USENETFS_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from t4_cli_ops_test import PASSPHRASE, assert_help_matches_golden
from t4_cli_ops_test import usenetfs as run_usenetfs
from usenetfs.home import Home
from usenetfs.index import Index
from usenetfs.volume import Volume

usenetfs = functools.partial(run_usenetfs, timeout=120)  # a sync may take a while


def make_volume(tmp_path: Path, server_url: str) -> dict:
    home = tmp_path / "home"
    files = {name: tmp_path / name for name in ("right", "wrong")}
    files["right"].write_text(PASSPHRASE + "\n")
    files["wrong"].write_text("not it\n")
    made = usenetfs("init", "vol", "--server", server_url, "--group", "alt.binaries.misc",
                    "--passphrase-file", str(files["right"]), "--kdf-log-n", "10", home=home)
    assert made.returncode == 0, made.stderr
    source = tmp_path / "source"
    (source / "docs").mkdir(parents=True)
    (source / "docs/a.txt").write_text("alpha\n")
    (source / "docs/b.bin").write_bytes(os.urandom(900_000))
    os.symlink("docs/a.txt", source / "link")
    return {"home": home, "source": source, **{name: str(path) for name, path in files.items()}}


def test_help_matches_golden(tmp_path):
    assert_help_matches_golden("sync", tmp_path)


def test_usage_errors_are_one_line_with_exit_2(tmp_path):
    cases = [
        (["sync", "src"], "usenetfs sync: error: the following arguments are required: [VOLUME:]DEST"),
        (["sync", "--batch-files", "0", "a", "b"], "usenetfs sync: error: argument --batch-files: must be at least 1"),
        (["sync", "--batch-files", "many", "a", "b"],
         "usenetfs sync: error: argument --batch-files: not a number: 'many'"),
    ]
    for args, line in cases:
        result = usenetfs(*args, home=tmp_path)
        assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", ""), args


def test_errors_are_one_exact_line(tmp_path):
    vol = make_volume(tmp_path, "nntp://127.0.0.1:9")  # a server that never answers
    home, source = vol["home"], str(vol["source"])
    (tmp_path / "a-file").write_text("x")
    missing = str(tmp_path / "missing")
    cases = [
        (["sync", missing, "vol:/x"], f"source {missing} does not exist"),
        (["sync", str(tmp_path / "a-file"), "vol:/x"], f"source {tmp_path / 'a-file'} is not a directory"),
        (["sync", source, "nosuch:/x"], "no volume named 'nosuch' (create it with 'usenetfs init')"),
        (["sync", source, str(tmp_path / "elsewhere")], f"{tmp_path / 'elsewhere'} is not inside a mounted volume "
                                                         "and there is no volume named 'default': write VOLUME:PATH"),
        (["sync", source, "vol:/x"], "no passphrase: give --passphrase-file or set USENETFS_PASSPHRASE_FILE"),
        (["sync", source, "vol:/x", "--passphrase-file", vol["wrong"]], "wrong passphrase"),
    ]
    for args, line in cases:
        result = usenetfs(*args, home=home)
        assert (result.returncode, result.stderr, result.stdout) == (1, f"usenetfs: {line}\n", ""), args
    # The server does not answer: one line at once, nothing synced.
    result = usenetfs("sync", source, "vol:/x", "--passphrase-file", vol["right"], home=home)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "server check failed" in lines[0], result.stderr
    volume = Volume(Home.resolve(home), "vol")
    assert not volume.index_file.exists() or Index.open(volume.index_file).lookup(1, b"x") is None


def test_sync_into_an_unmounted_volume_posts_it_all(inn, tmp_path):
    vol = make_volume(tmp_path, inn.url)
    home, source = vol["home"], str(vol["source"])
    result = usenetfs("sync", source, "vol:/backup/docs", "--passphrase-file", vol["right"], home=home)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"synced {source} to vol:/backup/docs in ")
    assert "2 files checked; 2 new, 0 changed, 0.9 MB copied" in result.stdout
    assert result.stdout.endswith("  everything is posted and read back\n")
    volume = Volume(Home.resolve(home), "vol")
    assert [n for n in os.listdir(volume.data_dir / "staging") if not n.startswith("spare-")] == []
    assert volume.load().last_backup == 1  # the index was backed up, as at an umount
    # ... with the pages written tracked, as a mount does: the note carries that backup's
    # chunks, and that nothing was written since, to the next mount or sync.
    carried = json.loads(volume.backup_current_file.read_text())
    assert (carried["backup"], carried["pages"]) == (1, [])

    again = usenetfs("sync", source, "vol:/backup/docs", "--passphrase-file", vol["right"], "--json", home=home)
    stats = json.loads(again.stdout)
    assert (stats["new_files"], stats["changed_files"], stats["unchanged"], stats["batches"]) == (0, 0, 4, 0)
    assert json.loads(volume.backup_current_file.read_text())["backup"] == 1  # taken, and noted again

    (vol["source"] / "docs/c.txt").write_text("gamma\n")
    third = usenetfs("sync", source, "vol:/backup/docs", "--passphrase-file", vol["right"], home=home)
    assert third.returncode == 0, third.stderr
    assert volume.load().last_backup == 2
    assert json.loads(volume.backup_current_file.read_text())["backup"] == 2
    assert usenetfs("fsck", "vol", "--no-repair", home=home).returncode == 0
    verified = usenetfs("verify", "vol", "--passphrase-file", vol["right"], "--json", home=home)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"]

    # One process owns a volume at a time: while another holds it, sync says who.
    with volume.exclusive("the test (pid 1)"):
        busy = usenetfs("sync", source, "vol:/y", "--passphrase-file", vol["right"], home=home)
    assert (busy.returncode, busy.stderr) == (1, "usenetfs: volume 'vol' is in use by the test (pid 1)\n")
