"""Tests of usenetfs.innserver against the real INN: what the other tests rely on.

Owns: proof that the INN fixtures serve what they claim (greeting, byte-exact POST/BODY,
auth, TLS, refusal, per-IP limit, idle timeout), that instances coexist and stop without
leaving a process behind, and that count_connections / article_count are exact. Plain
blocking sockets on purpose: it must not depend on the project's NNTP client.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from usenetfs import innserver
from usenetfs.errors import UserError
from usenetfs.innserver import InnServer, free_port
from usenetfs.process import process_alive

pytestmark = pytest.mark.inn


class Conn:
    """A minimal NNTP line client: enough to drive INN by hand."""

    def __init__(self, port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
        self.sock = socket.create_connection((host, port), timeout=10)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> str:
        return self.file.readline().decode()

    def cmd(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\r\n")
        return self.line()

    def block(self) -> bytes:
        """A multi-line data block, un-dot-stuffed, lines joined with CRLF."""
        lines = []
        while (line := self.file.readline()) != b".\r\n":
            assert line.endswith(b"\r\n"), line
            lines.append(line[1:] if line.startswith(b"..") else line)
        return b"".join(lines)

    def post(self, article: bytes) -> str:
        response = self.cmd("POST")
        assert response.startswith("340"), response
        stuffed = b"".join(b"." + l if l.startswith(b".") else l for l in article.splitlines(keepends=True))
        self.sock.sendall(stuffed + b".\r\n")
        return self.line()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def article(body: bytes, groups: str = "alt.binaries.test") -> tuple[str, bytes]:
    msgid = f"<{uuid.uuid4().hex}@usenetfs.test>"
    head = f"From: poster <poster@usenetfs.test>\r\nNewsgroups: {groups}\r\nSubject: test\r\nMessage-ID: {msgid}\r\n"
    return msgid, head.encode() + b"\r\n" + body


# Dot-stuffing, an empty line, a tab, 8-bit bytes, a line of a lone dot and a long line.
BODY = b"first line\r\n.starts with a dot\r\n\r\n.\r\n\ttab \xe9\xff\x01 bytes\r\n" + b"y" * 900 + b"\r\n"


def post_and_fetch(port: int, body: bytes) -> bytes:
    msgid, art = article(body)
    c = Conn(port)
    assert c.post(art).startswith("240")
    c.close()
    c = Conn(port)
    response = c.cmd(f"BODY {msgid}")
    assert response.startswith("222"), response
    got = c.block()
    c.close()
    return got


def test_greeting_and_byte_exact_post_body(inn):
    c = Conn(inn.port)
    assert c.greeting.startswith("200 "), c.greeting
    c.close()
    assert inn.url == f"nntp://127.0.0.1:{inn.port}"
    assert post_and_fetch(inn.port, BODY) == BODY


def test_two_instances_at_once_are_separate(inn, fresh_inn):
    assert fresh_inn.port != inn.port and fresh_inn.is_running() and inn.is_running()
    msgid, art = article(b"only on the fresh one\r\n")
    c = Conn(fresh_inn.port)
    assert c.post(art).startswith("240")
    assert c.cmd(f"STAT {msgid}").startswith("223")
    c.close()
    c = Conn(inn.port)
    assert c.cmd(f"STAT {msgid}").startswith("430")
    c.close()


def test_stop_leaves_no_process_and_is_quick(make_inn):
    t0 = time.monotonic()
    server = make_inn()
    started = time.monotonic() - t0
    reader = server.add_reader("tls")
    idle = Conn(server.port)  # its nnrpd child outlives innd unless stop() ends it
    busy = Conn(reader.port, tls=ssl.create_default_context(cafile=str(reader.cert_file)))
    pids = server.pids
    assert server.innd_pid in pids and reader.pid in pids and len(pids) >= 4, pids
    t0 = time.monotonic()
    server.stop()
    stopped = time.monotonic() - t0
    assert server.pids == set()
    assert not any(process_alive(pid) for pid in pids)
    assert idle.sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        Conn(server.port)
    idle.close()
    busy.close()
    # Measured: start about 0.1 s, stop about 0.03 s; generous bounds, only to catch a
    # stop that falls back to waiting out innd's timers.
    assert started < 3 and stopped < 3, (started, stopped)
    assert not server.is_running() and server.innd_pid is None
    server.stop()  # a second stop is harmless


def test_restart_keeps_port_and_articles(make_inn):
    server = make_inn()
    port = server.port
    msgid, art = article(b"survives a restart\r\n")
    c = Conn(port)
    assert c.post(art).startswith("240")
    c.close()
    server.stop()
    server.start()
    assert server.port == port
    c = Conn(port)
    assert c.cmd(f"STAT {msgid}").startswith("223")
    c.close()


def test_second_handle_adopts_a_running_instance(fresh_inn):
    other = InnServer(fresh_inn.datadir)
    assert other.is_running() and other.url == fresh_inn.url  # as `usenetfs server status` asks
    other = InnServer(fresh_inn.datadir)
    other.start()
    assert other.port == fresh_inn.port and other.innd_pid == fresh_inn.innd_pid is not None
    with pytest.raises(UserError, match="already runs"):
        InnServer(fresh_inn.datadir, port=free_port()).start()


def test_auth_reader(inn, inn_auth):
    msgid, art = article(b"read me after login\r\n")
    c = Conn(inn.port)
    assert c.post(art).startswith("240")
    c.close()
    c = Conn(inn_auth.port)
    assert c.greeting.startswith("200"), c.greeting
    assert c.cmd(f"BODY {msgid}").startswith("480")
    assert c.cmd("POST").startswith("480")
    assert c.cmd("AUTHINFO USER alice").startswith("381")
    assert c.cmd("AUTHINFO PASS wrong").startswith("481")
    assert c.cmd("AUTHINFO USER alice").startswith("381")
    assert c.cmd("AUTHINFO PASS wonderland").startswith("281")
    assert c.cmd(f"BODY {msgid}").startswith("222")  # the same spool as the main port
    assert c.block() == b"read me after login\r\n"
    c.close()


def test_tls_reader(inn, inn_tls):
    assert inn_tls.url == f"nntps://127.0.0.1:{inn_tls.port}"
    trusting = ssl.create_default_context(cafile=str(inn_tls.cert_file))
    c = Conn(inn_tls.port, tls=trusting)
    assert c.greeting.startswith("200"), c.greeting
    assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    c.close()
    # 127.0.0.1 is in the certificate too.
    with socket.create_connection(("127.0.0.1", inn_tls.port), timeout=10) as raw:
        with trusting.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.recv(3) == b"200"
    with pytest.raises(ssl.SSLCertVerificationError):
        Conn(inn_tls.port, tls=ssl.create_default_context())
    msgid, art = article(BODY)
    c = Conn(inn_tls.port, tls=trusting)
    assert c.post(art).startswith("240")
    assert c.cmd(f"BODY {msgid}").startswith("222")
    assert c.block() == BODY
    c.close()


def test_refuse_reader(inn_refuse):
    c = Conn(inn_refuse.port)
    assert c.greeting == "502 You have no permission to talk.  Goodbye!\r\n"
    assert c.sock.recv(1) == b""
    c.close()


def test_limit_reader(inn_limited):
    reader = inn_limited(2)
    first, second = Conn(reader.port), Conn(reader.port)
    assert first.greeting.startswith("200") and second.greeting.startswith("200")
    third = Conn(reader.port)
    assert third.greeting == "400 Permission denied: Too many connections from your IP address\r\n"
    assert third.sock.recv(1) == b""
    third.close()
    # Freeing a slot admits the next one at once, even with rejected ones still closing.
    second.close()
    again = Conn(reader.port)
    assert again.greeting.startswith("200"), again.greeting
    assert Conn(reader.port).greeting.startswith("400")
    assert first.cmd("DATE").startswith("111")  # the admitted ones keep working
    for c in (first, again):
        c.close()
    # Arriving all at once (connected before any is greeted), exactly `limit` get in.
    socks = [socket.create_connection(("127.0.0.1", reader.port), timeout=10) for _ in range(6)]
    greetings = sorted(s.makefile("rb").readline()[:3] for s in socks)
    assert greetings == [b"200"] * 2 + [b"400"] * 4
    for s in socks:
        s.close()


def test_count_connections(fresh_inn):
    assert fresh_inn.count_connections() == 0
    conns = [Conn(fresh_inn.port) for _ in range(3)]
    assert fresh_inn.count_connections() == 3
    assert innserver.count_connections(fresh_inn.port, "127.0.0.1") == 3
    assert innserver.count_connections(fresh_inn.port, "192.0.2.1") == 0
    reader = fresh_inn.add_reader("refuse")
    assert fresh_inn.count_connections(reader.port) == 0
    for c in conns:
        c.close()
    assert fresh_inn.count_connections() == 0


def test_client_timeout_closes_idle_connections_silently(make_inn):
    server = make_inn(client_timeout=1)
    c = Conn(server.port)
    assert c.cmd("DATE").startswith("111")
    t0 = time.monotonic()
    assert c.sock.recv(100) == b""  # no response line, just the close
    assert 0.5 < time.monotonic() - t0 < 5
    c.close()


def test_article_count_is_exact(fresh_inn):
    assert fresh_inn.article_count() == 0
    c = Conn(fresh_inn.port)
    for i in range(4):
        assert c.post(article(f"article {i}\r\n".encode())[1]).startswith("240")
    # A cross-post is one article, although tradspool files it under both groups.
    assert c.post(article(b"both\r\n", groups="alt.binaries.test,alt.binaries.misc")[1]).startswith("240")
    msgid, art = article(b"twice\r\n")
    assert c.post(art).startswith("240")
    assert c.post(art).startswith("441")  # duplicate Message-ID
    c.close()
    assert fresh_inn.article_count() == 6
    assert b"twice" in b"".join(p.read_bytes() for p in fresh_inn.spool_dir.rglob("*") if p.is_file())


def test_add_group_at_run_time(fresh_inn):
    c = Conn(fresh_inn.port)
    assert c.cmd("GROUP alt.binaries.new").startswith("411")
    fresh_inn.add_group("alt.binaries.new")
    assert c.cmd("GROUP alt.binaries.new").startswith("211")
    fresh_inn.add_group("alt.binaries.new")  # again: harmless
    with pytest.raises(UserError, match="ctlinnd failed"):
        fresh_inn.ctlinnd("nosuchcommand")
    c.close()


def test_posts_while_throttled_are_only_spooled_and_not_counted(fresh_inn):
    """inn.md's trap: a 240 is no proof. article_count() must not hide it."""
    reader = fresh_inn.add_reader("limit", limit=5)  # an nnrpd -D still answers while innd is throttled
    assert fresh_inn.ctlinnd("throttle", "testing") == "Ok"
    c = Conn(fresh_inn.port)
    assert c.greeting == "400 testing\r\n"
    c.close()
    c = Conn(reader.port)
    msgid, art = article(b"spooled only\r\n")
    assert c.post(art).startswith("240")
    assert c.cmd(f"STAT {msgid}").startswith("430")
    c.close()
    with pytest.raises(RuntimeError, match="only spooled"):
        fresh_inn.article_count()
    fresh_inn.ctlinnd("go", "testing")


def test_user_errors(fresh_inn, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=f"port {fresh_inn.port} on 127.0.0.1 is in use"):
        InnServer(fresh_inn.datadir.parent / "clash", port=fresh_inn.port).start()
    monkeypatch.setattr(innserver, "INN_BIN", tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"inn2 is not installed \(run scripts/setup.sh\)"):
        InnServer(tmp_path / "never").start()


def test_runs_for_a_user_other_than_root_and_news(tmp_path_factory):
    """The local server of a user without root: innd in a user namespace mapped to news.
    (Run as non-root, the whole suite takes that path; as root, this test takes it as nobody.)"""
    datadir = tmp_path_factory.mktemp("userns") / "inn"
    prefix = []
    if os.geteuid() == 0:
        datadir.parent.chmod(0o777)
        base = tmp_path_factory.getbasetemp()
        for d in (base.parent, base):
            d.chmod(d.stat().st_mode | 0o001)
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    script = textwrap.dedent(
        f"""
        import socket
        from pathlib import Path
        from usenetfs.innserver import InnServer
        with InnServer(Path({str(datadir)!r})) as s:
            c = socket.create_connection((s.host, s.port), timeout=10)
            print(c.makefile("rb").readline().decode().strip())
            c.close()
        """
    )
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(innserver.__file__).parents[1])}
    result = subprocess.run([*prefix, python, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("200 "), result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="only root, mapped to news, could open the console")
def test_root_under_a_closed_directory_keeps_inn_off_the_console(tmp_path):
    """Root with a data directory news cannot reach (under /root, mode 700) runs INN in a
    user namespace where root-owned files are news's, /dev/console too, and INN's syslog
    falls back to the console where nothing listens on /dev/log: there, INN sees /dev/null
    in its place."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with InnServer(closed / "inn") as server:
        assert server._closed_parents()
        seen = os.stat(f"/proc/{server._innd_pid}/root/dev/console")
        assert (os.major(seen.st_rdev), os.minor(seen.st_rdev)) == (1, 3)  # /dev/null
        assert os.stat("/dev/console").st_rdev != seen.st_rdev  # ours is untouched
        with socket.create_connection((server.host, server.port), timeout=10) as c:
            assert c.makefile("rb").readline().startswith(b"200 ")
