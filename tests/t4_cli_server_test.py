"""Level 4: `usenetfs server test` as a user runs it (a subprocess), against real INN."""

import json
import os
import subprocess
import sys
import time

import pytest

from usenetfs.innserver import free_port


def usenetfs(*args: str, home, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "USENETFS_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "usenetfs.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_round_trip_report(inn, tmp_path):
    result = usenetfs("server", "test", inn.url, "--articles", "6", "--connections", "3",
                      "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["round_tripped"] == 6
    assert report["greeting"].startswith("200")
    assert "READER" in report["capabilities"]
    assert 1 <= report["connections_peak"] <= 3


def test_text_report_with_password_file(inn_auth, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("wonderland\n")
    url = inn_auth.url.replace("nntp://", "nntp://alice@")
    result = usenetfs("server", "test", url, "--password-file", str(secret), "--articles", "3",
                      home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "login:         ok" in result.stdout
    assert "3/3 round-tripped" in result.stdout
    assert "wonderland" not in result.stdout + result.stderr


def test_tls_with_trusted_certificate(inn_tls, tmp_path):
    result = usenetfs("server", "test", inn_tls.url, "--ca-file", str(inn_tls.cert_file),
                      "--articles", "2", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TLS:           TLSv1" in result.stdout


def test_bad_password_fails_fast_with_one_line(inn_auth, tmp_path):
    started = time.monotonic()
    result = usenetfs("server", "test", inn_auth.url.replace("nntp://", "nntp://alice:nope@"),
                      home=tmp_path)
    assert time.monotonic() - started < 20  # no retry storm (generous: a slow CI box)
    assert_one_line_error(result, "481")


def test_untrusted_certificate_fails_with_one_line(inn_tls, tmp_path):
    result = usenetfs("server", "test", inn_tls.url, home=tmp_path)
    assert_one_line_error(result, "not trusted")


def test_refused_connection_fails_with_one_line(tmp_path):
    result = usenetfs("server", "test", f"nntp://127.0.0.1:{free_port()}", home=tmp_path)
    assert_one_line_error(result, "cannot connect")


def test_refusing_server_fails_with_one_line(inn_refuse, tmp_path):
    result = usenetfs("server", "test", inn_refuse.url, home=tmp_path)
    assert_one_line_error(result, "502")


@pytest.mark.parametrize("args,fragment", [
    (["server", "test", "http://x"], "scheme"),
    (["server", "test"], "give one of: a server URL, --local, --volume NAME"),
    (["server", "test", "nntp://h", "--articles", "0"], "at least 1"),
    (["server", "test", "nntp://h", "--password-file", "/nonexistent"], "cannot read"),
    (["server", "frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line(args, fragment, tmp_path):
    assert_one_line_error(usenetfs(*args, home=tmp_path), fragment)


def test_local_server_lifecycle(tmp_path):
    assert usenetfs("server", "status", home=tmp_path).returncode == 3
    started = usenetfs("server", "start", home=tmp_path)
    assert started.returncode == 0, started.stderr
    try:
        url = started.stdout.strip()
        assert url.startswith("nntp://127.0.0.1:")
        status = usenetfs("server", "status", home=tmp_path)
        assert status.returncode == 0 and url in status.stdout
        result = usenetfs("server", "test", "--local", "--articles", "2", home=tmp_path)
        assert result.returncode == 0, result.stderr
        assert usenetfs("server", "status", home=tmp_path).returncode == 0  # still running
    finally:
        assert usenetfs("server", "stop", home=tmp_path).returncode == 0
    assert usenetfs("server", "status", home=tmp_path).returncode == 3
