"""Private INN 2.7 news servers on loopback, for the tests and as the user's "local server".

Owns: `InnServer` (one self-contained INN instance in a data directory: writes its
configuration, starts innd on a free loopback port as user news, stops it and every
process it spawned), `Reader` (an extra `nnrpd -D` daemon sharing that instance's spool,
with authentication, implicit TLS, a refusal or a per-IP connection limit), `free_port`
and `count_connections` (ESTABLISHED server-side TCP connections, from /proc/net).

    with InnServer(datadir, groups=["alt.binaries.test"]) as inn:
        inn.url                                   # nntp://127.0.0.1:PORT
        tls = inn.add_reader("tls")               # nntps://127.0.0.1:PORT2, tls.cert_file

A data directory holds everything INN uses (INNCONF points at its etc/inn.conf):
    etc/  inn.conf, readers.conf, ...; readers/ (extra readers); tls/ (self-signed cert)
    db/   active, history             run/  innd.pid, control sockets
    log/  errlog, news, *.stderr      spool/  articles/, overview/, incoming/

The INN facts this relies on are in shared/docs/inn.md (measured on Debian's inn2).
"""

from __future__ import annotations

import inspect
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from usenetfs.errors import UserError
from usenetfs.process import process_alive

INN_BIN = Path("/usr/lib/news/bin")
NEWS_USER = "news"
# Every process of an instance carries this variable (innd and nnrpd pass their environment
# on to the nnrpd and auth programs they fork): that is how stop() finds all of them, and
# only them, even after they were re-parented.
MARKER = "USENETFS_INN_DATADIR"
NOT_INSTALLED = "inn2 is not installed (run scripts/setup.sh)"
READER_KINDS = ("auth", "tls", "starttls", "refuse", "limit")

_ESTABLISHED, _LISTEN = "01", "0A"  # TCP states as /proc/net/tcp prints them


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing is bound to right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tcp_sockets(port, state):
    """(inode, remote IP, remote port) of the sockets in `state` whose LOCAL port is `port`.

    Reads /proc/net/tcp and tcp6. Self-contained on purpose: its source is also written into
    the connection-limit resolver (see _CONNLIMIT_MAIN), which runs as news outside this package.
    """
    import ipaddress

    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except FileNotFoundError:
            continue
        for row in rows:
            local, remote, st, inode = row[1], row[2], row[3], row[9]
            if st != state or int(local.rsplit(":", 1)[1], 16) != port:
                continue
            hex_ip, hex_port = remote.rsplit(":", 1)
            # The kernel prints an address as 32-bit words in host (little-endian) order.
            raw = bytes.fromhex(hex_ip)
            ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
            if ip.version == 6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found.append((inode, str(ip), int(hex_port, 16)))
    return found


def count_connections(port: int, remote_ip: str | None = None) -> int:
    """ESTABLISHED TCP connections whose server side is local `port` (optionally from one IP)."""
    if remote_ip is not None:
        remote_ip = str(_unmapped(ipaddress.ip_address(remote_ip)))
    return sum(1 for _, ip, _ in _tcp_sockets(port, _ESTABLISHED) if remote_ip in (None, ip))


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


# The readers.conf resolver behind kind="limit". nnrpd runs it for each new connection, with
# ClientIP, ClientPort and LocalPort lines on stdin. Under a lock it keeps the list of the
# connections it admitted (socket inodes) and drops those no longer ESTABLISHED; if the client's
# IP already holds LIMIT of them, the new one gets the identity that readers.conf rejects.
# Counting admitted connections rather than all open ones keeps a just-rejected connection that
# is still closing, or one arriving at the same instant, from pushing a legitimate one out.
# Exit status 1 leaves the auth group's default identity.
_CONNLIMIT_MAIN = """
def main():
    import fcntl
    import ipaddress

    limit, state_file = int(sys.argv[1]), sys.argv[2]
    info = {}
    for line in sys.stdin:
        if line.strip() == ".":
            break
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    ip = ipaddress.ip_address(info["ClientIP"])
    ip = str(ip.ipv4_mapped or ip if ip.version == 6 else ip)
    established = _tcp_sockets(int(info["LocalPort"]), "01")
    alive = {inode for inode, _, _ in established}
    same_ip = {inode for inode, rip, _ in established if rip == ip}
    me = next((inode for inode, rip, rport in established if (rip, rport) == (ip, int(info["ClientPort"]))), None)
    with open(state_file, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        admitted = [i for i in f.read().split() if i in alive and i != me]
        over = len(same_ip.intersection(admitted)) >= limit
        if me is not None and not over:
            admitted.append(me)
        f.seek(0)
        f.truncate()
        f.write("\\n".join(admitted))
    if over:
        sys.stdout.write("User:conn-over\\r\\n")
        sys.exit(0)
    sys.exit(1)


main()
"""

_LOOPBACK_READERS = """\
auth "loopback" {
    hosts: "localhost, 127.0.0.1, ::1, stdin"
    default: "<local>"
}
access "loopback" {
    users: "<local>"
    newsgroups: "*"
    access: RPA
}
"""


# -- processes, by PID only -------------------------------------------------------------


def _pids_with_marker(datadir: Path) -> set[int]:
    """Live processes whose environment names this data directory."""
    needle = f"{MARKER}={datadir}".encode()
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return found


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _terminate(pids: Iterable[int], grace: float = 2.0) -> None:
    """SIGTERM the given PIDs, then SIGKILL whichever are still alive after `grace` seconds."""
    pids = {p for p in pids if p != os.getpid()}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            _kill(pid, sig)
        deadline = time.monotonic() + grace
        while (pids := {p for p in pids if process_alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.005)
        if not pids:
            return


def _open_paths(pid: int) -> list[str]:
    """Files `pid` has open or mapped."""
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    with open(f"/proc/{pid}/maps") as f:
        paths += [line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6]
    return paths


def _owns_listener(pid: int, port: int) -> bool:
    """Whether `pid` holds a LISTEN socket on `port` (so we talk to it, not to a squatter)."""
    inodes = {f"socket:[{inode}]" for inode, _, _ in _tcp_sockets(port, _LISTEN)}
    try:
        return bool(inodes) and any(p in inodes for p in _open_paths(pid))
    except OSError:
        return False


def _greeting(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=10) as s:
        line = s.makefile("rb").readline().decode(errors="replace").strip()
        s.sendall(b"QUIT\r\n")
        return line


def _read_from(path: Path, offset: int = 0) -> str:
    """The text of `path` after byte `offset` ("" if unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _openssl(args: list[str], stdin: str = "") -> str:
    try:
        result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("openssl is not installed (run scripts/setup.sh)") from None
    if result.returncode != 0:
        raise UserError(f"openssl {args[0]} failed: {_first_line(result.stderr)}")
    return result.stdout


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _PortTaken(Exception):
    """The daemon could not bind: someone else took its port."""


class Reader:
    """An extra `nnrpd -D` daemon on its own port, serving the spool of an `InnServer`."""

    def __init__(self, kind: str, host: str, port: int, proc: subprocess.Popen, cert_file: Path | None):
        self.kind, self.host, self.port, self.cert_file = kind, host, port, cert_file
        self._proc = proc

    @property
    def url(self) -> str:
        return f"{'nntps' if self.kind == 'tls' else 'nntp'}://{_url_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int:
        """The listener's PID (it forks one child per connection)."""
        return self._proc.pid

    def stop(self) -> None:
        """Stop the listener and the per-connection children it forked."""
        if self._proc.poll() is None:
            # Children are collected while the listener lives: once it is gone they are
            # re-parented, and (short of the environment marker) no longer recognisable.
            _terminate({self.pid} | _children(self.pid))
        self._proc.wait()

    def __repr__(self) -> str:
        return f"<Reader {self.kind} {self.url}>"


def _children(pid: int) -> set[int]:
    """Children of `pid`, and theirs, from the parent links in /proc."""
    parent = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    parent[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


class InnServer:
    """One private INN instance living in `datadir`, listening on `host`:`port`.

    `port=None` picks a free port (and keeps it across restarts while it stays free).
    `client_timeout` (seconds) makes nnrpd drop idle connections silently, as providers do.
    """

    def __init__(
        self,
        datadir: Path,
        *,
        port: int | None = None,
        groups: Sequence[str] = ("alt.binaries.test",),
        host: str = "127.0.0.1",
        client_timeout: int | None = None,
    ):
        self.datadir = Path(datadir).absolute()
        self.host = host
        self.port = port
        self.groups = tuple(groups)
        self.client_timeout = client_timeout
        self.readers: list[Reader] = []
        self._fixed_port = port is not None
        self._proc: subprocess.Popen | None = None
        self._innd_pid: int | None = None

    etc = property(lambda self: self.datadir / "etc")
    db = property(lambda self: self.datadir / "db")
    run = property(lambda self: self.datadir / "run")
    log = property(lambda self: self.datadir / "log")
    inn_conf = property(lambda self: self.datadir / "etc" / "inn.conf")

    @property
    def spool_dir(self) -> Path:
        """Where posted data lands: articles/ (one file per article), overview/, incoming/."""
        return self.datadir / "spool"

    @property
    def url(self) -> str:
        return f"nntp://{_url_host(self.host)}:{self.port}"

    def is_running(self) -> bool:
        """Whether an innd of this datadir runs, started by this object or by another (in
        any process). If so, this object learns its PID and, unless given one, its port."""
        if self._innd_pid is not None and process_alive(self._innd_pid):
            return True
        pid = self._pidfile_pid()
        if pid is None or pid not in self.pids:
            return False
        self._innd_pid = pid
        if not self._fixed_port:
            self.port = self._configured_port()
        return True

    @property
    def innd_pid(self) -> int | None:
        return self._innd_pid if self.is_running() else None

    @property
    def pids(self) -> set[int]:
        """Every live process of this instance: innd, the nnrpd it forked, extra readers."""
        return _pids_with_marker(self.datadir)

    def __repr__(self) -> str:
        return f"<InnServer {self.datadir} {self.url}>"

    def __enter__(self) -> InnServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- start / stop -------------------------------------------------------------------

    def start(self) -> None:
        """Start innd, or adopt the one already running in datadir, and wait until it greets."""
        if self._innd_pid is not None and process_alive(self._innd_pid):
            return
        for tool in ("innd", "nnrpd", "ctlinnd", "makedbz"):
            if not os.access(INN_BIN / tool, os.X_OK):
                raise UserError(NOT_INSTALLED)
        if self._adopt():
            return
        if not self._fixed_port:
            self.port = self._configured_port() or free_port(self.host)
        self._prepare()
        for attempt in range(3):
            try:
                self._launch()
                return
            except _PortTaken:
                if self._fixed_port or attempt == 2:
                    raise UserError(f"INN failed to start: port {self.port} on {self.host} is in use") from None
                # Taken between our pick and innd's bind (or since the last run): pick again.
                self.port = free_port(self.host)
                self._write(self.inn_conf, self._inn_conf_text())

    def stop(self) -> None:
        """Stop the extra readers, innd and the nnrpd serving open connections: this
        instance's PIDs only. Safe to call when nothing runs."""
        for reader in self.readers:
            reader.stop()
        self.readers.clear()
        pid = self._innd_pid or self._pidfile_pid()
        if pid and pid in self.pids:
            # A clean shutdown flushes history and active. (SIGTERM would only be acted on
            # when innd's select() times out, -t 10.)
            result = self._as_news([str(INN_BIN / "ctlinnd"), "-s", "-t", "5", "shutdown", "usenetfs stop"], check=False)
            deadline = time.monotonic() + (5 if result.returncode == 0 else 0)
            while process_alive(pid) and time.monotonic() < deadline:
                if self._shut_down(pid):
                    # innd has closed every file and now sleeps one second before removing
                    # its pidfile and exiting: skip the sleep, remove the pidfile ourselves.
                    _kill(pid, signal.SIGKILL)
                    (self.run / "innd.pid").unlink(missing_ok=True)
                    break
                time.sleep(0.005)
        # innd if the shutdown failed, and the nnrpd of connections still open (they outlive innd).
        _terminate(self.pids)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        self._innd_pid = None

    def _shut_down(self, pid: int) -> bool:
        """Whether innd has no file of this instance open or mapped any more (except its logs)."""
        try:
            paths = _open_paths(pid)
        except OSError:
            return False
        mine, logs = f"{self.datadir}/", f"{self.log}/"
        return not any(p.startswith(mine) and not p.startswith(logs) for p in paths)

    def _adopt(self) -> bool:
        """Reuse the innd that an earlier start() (maybe of another process) left running."""
        pid = self._pidfile_pid()
        if pid is None or pid not in self.pids:
            return False
        port = self._configured_port()
        if self._fixed_port and self.port != port:
            raise UserError(f"an INN server already runs in {self.datadir} on port {port}, not {self.port}")
        self.port, self._innd_pid = port, pid
        self._wait_ready(pid, self.log / "errlog", 0)
        return True

    def _launch(self) -> None:
        (self.run / "innd.pid").unlink(missing_ok=True)  # stale: innd would refuse to start
        errlog = self.log / "errlog"
        offset = errlog.stat().st_size if errlog.exists() else 0
        with open(self.log / "innd.stderr", "wb") as out:
            # -f: no fork, so the PID we hold is innd's (it still sends its output to log/).
            # -t 10: see inn.md.
            self._proc = self._spawn([str(INN_BIN / "innd"), "-f", "-t", "10"], out)
        self._innd_pid = self._proc.pid
        try:
            self._wait_ready(self._proc.pid, errlog, offset)
        except (UserError, _PortTaken):
            self.stop()
            raise

    def _wait_ready(self, pid: int, errlog: Path, offset: int, timeout: float = 10.0) -> None:
        """Wait until `pid` listens on our port, then check that a connection gets "200"."""
        deadline = time.monotonic() + timeout
        while not _owns_listener(pid, self.port):
            if not process_alive(pid):
                # innd reports most fatal errors only to syslog; a bind failure goes to errlog.
                why = _first_line(_read_from(errlog, offset)) or _first_line(_read_from(self.log / "innd.stderr"))
                if "Address already in use" in why:
                    raise _PortTaken()
                raise UserError(f"INN failed to start: {why or 'innd exited (it logs the reason to syslog)'}")
            if time.monotonic() > deadline:
                raise UserError(f"INN failed to start: innd is not listening on port {self.port} after {timeout:.0f} s")
            time.sleep(0.005)
        try:
            greeting = _greeting(self.host, self.port)
        except OSError as e:
            raise UserError(f"INN failed to start: connecting to port {self.port}: {e}") from None
        if not greeting.startswith("200"):
            raise UserError(f"INN failed to start: it greets with {greeting!r} instead of 200")

    # -- configuration ------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create the directory tree, configuration and databases, all owned by news.

        The configuration is rewritten on every start (it follows the constructor's options);
        the active file and history are created once and kept.
        """
        self.datadir.mkdir(parents=True, exist_ok=True)
        spool = self.spool_dir
        for d in [self.datadir, self.etc, self.db, self.run, self.log, self.datadir / "http",
                  self.datadir / "filter", spool, spool / "articles", spool / "overview",
                  spool / "incoming", spool / "incoming/tmp", spool / "outgoing", spool / "archive"]:
            d.mkdir(parents=True, exist_ok=True)
            self._own(d)
        self._write(self.inn_conf, self._inn_conf_text())
        self._write(self.etc / "newsfeeds", "ME:!*/!local::\n")
        # No peers: every connection, from loopback too, is handed to nnrpd as a reader.
        self._write(self.etc / "incoming.conf", "streaming: true\nmax-connections: 0\n")
        self._write(self.etc / "storage.conf", "method tradspool {\n    newsgroups: *\n    class: 0\n}\n")
        self._write(self.etc / "readers.conf", _LOOPBACK_READERS)
        for name in ("moderators", "distributions", "passwd.nntp"):
            self._write(self.etc / name, "")
        for name in ("active", "active.times", "newsgroups"):
            if not (self.db / name).exists():
                self._write(self.db / name, "")
        self._add_to_active(self.groups)
        if not (self.db / "history").exists():
            self._write(self.db / "history", "")
            self._as_news([str(INN_BIN / "makedbz"), "-i", "-o"])

    def _add_to_active(self, groups: Iterable[str]) -> None:
        # innd refuses to start without the control and junk groups.
        wanted = {g: "y" for g in groups} | {"control": "n", "control.cancel": "n", "junk": "n"}
        have = {line.split()[0] for line in (self.db / "active").read_text().splitlines() if line.strip()}
        now = int(time.time())
        with open(self.db / "active", "a") as active, open(self.db / "active.times", "a") as times:
            for group, flag in wanted.items():
                if group not in have:
                    active.write(f"{group} 0000000000 0000000001 {flag}\n")
                    times.write(f"{group} {now} usenetfs\n")

    def add_group(self, name: str) -> None:
        """Create newsgroup `name`: through ctlinnd while innd runs, else at the next start."""
        if name not in self.groups:
            self.groups += (name,)
        if self.is_running():
            self.ctlinnd("newgroup", name, "y", "usenetfs")

    def ctlinnd(self, *args: str) -> str:
        """Run `ctlinnd ARGS` against this instance, e.g. ("throttle", "reason") or ("go", "reason").

        Mind the trap: while innd is throttled or paused, nnrpd still answers 240 to POST but
        only spools the article to spool/incoming (article_count() then refuses to count).
        """
        result = self._as_news([str(INN_BIN / "ctlinnd"), "-t", "10", *args])
        return result.stdout.strip()

    def _inn_conf_text(self, **extra: str) -> str:
        d = self.datadir
        keys = {
            "domain": "usenetfs.test",
            "pathhost": "usenetfs.test",
            "server": self.host,
            ("bindaddress6" if ":" in self.host else "bindaddress"): f'"{self.host}"',
            "port": str(self.port),
            "pathnews": "/usr/lib/news",
            "pathbin": str(INN_BIN),
            "pathetc": f"{d}/etc",
            "pathdb": f"{d}/db",
            "pathrun": f"{d}/run",
            "pathlog": f"{d}/log",
            "pathhttp": f"{d}/http",
            "pathfilter": f"{d}/filter",
            "pathspool": f"{d}/spool",
            "patharticles": f"{d}/spool/articles",
            "pathoverview": f"{d}/spool/overview",
            "pathincoming": f"{d}/spool/incoming",
            "pathtmp": f"{d}/spool/incoming/tmp",
            "pathoutgoing": f"{d}/spool/outgoing",
            "patharchive": f"{d}/spool/archive",
            # Both default to 1000000; a usenetfs segment after yEnc is bigger.
            "maxartsize": "16000000",
            "localmaxartsize": "16000000",
            "artcutoff": "0",
            "icdsynccount": "1",
            "maxconnections": "0",
            "nnrpdloadlimit": "0",
            "status": "0",
            "timer": "0",
            "ovmethod": "tradindexed",  # nnrpd refuses to start without overview
            "hismethod": "hisv6",
            "enableoverview": "true",
            "mta": '"/bin/true %s"',  # a private server mails nobody
            "organization": '"usenetfs"',
            "doinnwatch": "false",
        }
        if self.client_timeout is not None:
            keys["clienttimeout"] = keys["initialtimeout"] = str(int(self.client_timeout))
        keys.update(extra)
        return "".join(f"{k}: {v}\n" for k, v in keys.items())

    def _configured_port(self) -> int | None:
        try:
            for line in self.inn_conf.read_text().splitlines():
                if line.startswith("port:"):
                    return int(line.split(":", 1)[1])
        except (OSError, ValueError):
            pass
        return None

    def _pidfile_pid(self) -> int | None:
        try:
            return int((self.run / "innd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # -- running things as news ---------------------------------------------------------

    def _news_ids(self) -> tuple[int, int]:
        try:
            pw = pwd.getpwnam(NEWS_USER)
        except KeyError:
            raise UserError(f"{NOT_INSTALLED}: there is no user {NEWS_USER}") from None
        return pw.pw_uid, pw.pw_gid

    def _news_prefix(self) -> list[str]:
        """How to run a command as news, the only user INN agrees to run as: setpriv from root
        when news can reach the data directory; otherwise (another user, or root with a data
        directory under a closed one such as /root) a user namespace mapping us to news."""
        uid, gid = self._news_ids()
        if os.geteuid() == uid:
            return []
        if not self._needs_userns():
            return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]
        if not shutil.which("unshare"):
            raise UserError("running INN as a user other than root or news needs unshare (util-linux)")
        as_news = ["unshare", "--user", f"--map-user={uid}", f"--map-group={gid}", "--"]
        if os.geteuid() != 0:
            return as_news
        # Root mapped to news owns every root-owned file in there, /dev/console included, and
        # INN logs through syslog(3) with LOG_CONS: on a machine where nothing listens on
        # /dev/log, every line nnrpd and innd log went to the console, on a VM a serial port
        # written under a spinlock, and INN posted at half speed (120 against 269 MB/s with
        # 4 connections). An outer namespace, root as root, hides the console behind
        # /dev/null in a mount namespace of its own first (INN runs all the same without it).
        return ["unshare", "--user", "--map-root-user", "--mount", "--", "sh", "-c",
                'mount --bind /dev/null /dev/console 2>/dev/null; exec "$@"', "sh", *as_news]

    def _needs_userns(self) -> bool:
        return os.geteuid() != 0 or bool(self._closed_parents())

    def _env(self, innconf: Path | None = None) -> dict[str, str]:
        return {
            "INNCONF": str(innconf or self.inn_conf),
            MARKER: str(self.datadir),
            "PATH": f"{INN_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.datadir),
            "LANG": "C.UTF-8",
            "TMPDIR": f"{self.spool_dir}/incoming/tmp",
        }

    def _spawn(self, argv: list[str], output, innconf: Path | None = None) -> subprocess.Popen:
        # A session of its own, so a Ctrl-C meant for the caller does not hit INN half-way:
        # stop() ends it in order.
        return subprocess.Popen(
            self._news_prefix() + argv,
            env=self._env(innconf),
            cwd=self.datadir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )

    def _as_news(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(
                self._news_prefix() + argv,
                env=self._env(),
                cwd=self.datadir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            result = subprocess.CompletedProcess(argv, 127, "", str(e))
        if check and result.returncode != 0:
            why = _first_line(result.stderr + result.stdout) or f"exit status {result.returncode}"
            raise UserError(f"{Path(argv[0]).name} failed: {why}")
        return result

    def _own(self, path: Path) -> None:
        if not self._needs_userns():
            os.chown(path, *self._news_ids())

    def _write(self, path: Path, text: str, mode: int = 0o644) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        self._own(tmp)
        tmp.replace(path)  # an nnrpd starting meanwhile reads the old file or the new one, whole

    def _closed_parents(self) -> list[str]:
        """The directories above datadir that news cannot pass through (/root is mode 700)."""
        news_uid = self._news_ids()[0]
        return [
            str(parent)
            for parent in reversed(self.datadir.parents)
            if not ((st := parent.stat()).st_mode & 0o001 or (st.st_uid == news_uid and st.st_mode & 0o100))
        ]

    # -- extra readers ------------------------------------------------------------------

    def add_reader(self, kind: str, **opts) -> Reader:
        """Start an extra `nnrpd -D` on its own port, sharing this instance's spool.

        kind "auth": AUTHINFO required; opts users={"name": "password"}.
        kind "tls": implicit TLS with a self-signed certificate (Reader.cert_file) for
            localhost, 127.0.0.1 and ::1.
        kind "starttls": plain, offering STARTTLS with that certificate.
        kind "refuse": every connection gets "502 You have no permission to talk".
        kind "limit": opts limit=N; the N+1th simultaneous connection from one IP gets
            "400 Permission denied: Too many connections from your IP address".
        opts port=: a fixed port instead of a free one.
        """
        if kind not in READER_KINDS:
            raise ValueError(f"unknown reader kind {kind!r}, not one of {READER_KINDS}")
        self.start()
        fixed = opts.get("port")
        for attempt in range(3):
            port = fixed or free_port(self.host)
            try:
                reader = self._start_reader(kind, port, opts)
                self.readers.append(reader)
                return reader
            except _PortTaken:
                if fixed or attempt == 2:
                    raise UserError(f"INN reader ({kind}) failed to start: port {port} is in use") from None

    def _start_reader(self, kind: str, port: int, opts: dict) -> Reader:
        base = self.etc / "readers" / f"{kind}-{port}"
        base.parent.mkdir(exist_ok=True)
        self._own(base.parent)
        innconf, cert_file, flags = None, None, []
        if kind == "auth":
            users = opts.get("users") or {}
            passwd = base.with_suffix(".passwd")
            hashes = self._hash_passwords(list(users.values()))
            self._write(passwd, "".join(f"{u}:{h}\n" for u, h in zip(users, hashes)), mode=0o600)
            readers = (
                f'auth "users" {{\n    hosts: "*"\n    auth: "ckpasswd -f {passwd}"\n}}\n'
                'access "users" {\n    users: "*"\n    newsgroups: "*"\n    access: RPA\n}\n'
            )
        elif kind in ("tls", "starttls"):
            cert_file, key_file = self._tls_files()
            # nnrpd -D reads inn.conf once: give this daemon its own, with the TLS keys.
            innconf = base.with_suffix(".inn.conf")
            self._write(innconf, self._inn_conf_text(tlscertfile=str(cert_file), tlskeyfile=str(key_file)))
            readers, flags = _LOOPBACK_READERS, ["-S"] if kind == "tls" else []
        elif kind == "refuse":
            # Only 192.0.2.1 (a documentation address) may talk: nobody real matches.
            readers = 'auth "nobody" {\n    hosts: "192.0.2.1"\n    default: "<nobody>"\n}\n'
            readers += 'access "nobody" {\n    users: "<nobody>"\n    newsgroups: "*"\n}\n'
        else:  # limit
            limit = int(opts.get("limit", 1))
            script, state = base.with_suffix(".connlimit"), base.with_suffix(".admitted")
            # news must be able to run the interpreter (a pyenv under /root is out of reach).
            python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
            source = inspect.getsource(_tcp_sockets) + _CONNLIMIT_MAIN
            self._write(script, f"#!{python} -I\nimport sys\n\n\n{source}", mode=0o755)
            readers = (
                f'auth "limit" {{\n    hosts: "*"\n    res: "{script} {limit} {state}"\n    default: "<local>"\n}}\n'
                'access "local" {\n    users: "<local>"\n    newsgroups: "*"\n    access: RPA\n}\n'
                'access "over" {\n    users: "conn-over"\n'
                '    reject_with: "Too many connections from your IP address"\n}\n'
            )
        readers_file = base.with_suffix(".readers.conf")
        self._write(readers_file, readers)
        bind = ["-6" if ":" in self.host else "-4", self.host]
        argv = [str(INN_BIN / "nnrpd"), "-D", "-f", "-p", str(port), *bind, "-c", str(readers_file), *flags]
        log_path = self.log / f"nnrpd-{kind}-{port}.stderr"
        with open(log_path, "wb") as out:
            reader = Reader(kind, self.host, port, self._spawn(argv, out, innconf), cert_file)
        deadline = time.monotonic() + 10
        while not _owns_listener(reader.pid, port):
            if reader._proc.poll() is not None or time.monotonic() > deadline:
                reader.stop()
                if _tcp_sockets(port, _LISTEN):
                    raise _PortTaken()
                why = _first_line(_read_from(log_path)) or f"nnrpd exited with status {reader._proc.returncode} (see syslog)"
                raise UserError(f"INN reader ({kind}) failed to start on port {port}: {why}")
            time.sleep(0.005)
        return reader

    @staticmethod
    def _hash_passwords(passwords: list[str]) -> list[str]:
        if not passwords:
            return []
        # On stdin: on the command line `ps` would show them.
        return _openssl(["passwd", "-5", "-stdin"], "".join(p + "\n" for p in passwords)).split()

    def _tls_files(self) -> tuple[Path, Path]:
        """A self-signed certificate for localhost, 127.0.0.1 and ::1, made once per datadir."""
        tls = self.etc / "tls"
        cert, key = tls / "cert.pem", tls / "key.pem"
        if not (cert.exists() and key.exists()):
            tls.mkdir(exist_ok=True)
            self._own(tls)
            _openssl(
                ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-days", "3650", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
                 "-keyout", str(key), "-out", str(cert)]
            )
            key.chmod(0o600)  # nnrpd refuses a key that others can read
            self._own(key)
            self._own(cert)
        return cert, key

    # -- what tests look at -------------------------------------------------------------

    def count_connections(self, port: int | None = None) -> int:
        """ESTABLISHED server-side connections on `port` (default: the main port)."""
        return count_connections(port or self.port)

    def article_count(self) -> int:
        """Articles filed in the spool. tradspool links a cross-post into each group's
        directory, so this counts distinct files, not names.

        Raises RuntimeError while posts wait in spool/incoming: nnrpd answered 240 for them
        while innd was throttled, paused or down, and nobody can fetch them (see inn.md).
        """
        incoming = self.spool_dir / "incoming"
        waiting = [p.name for p in incoming.iterdir() if p.is_file()] if incoming.is_dir() else []
        if waiting:
            raise RuntimeError(f"{len(waiting)} posted article(s) only spooled in {incoming}, not filed")
        files = set()
        for root, _dirs, names in os.walk(self.spool_dir / "articles"):
            for name in names:
                st = os.lstat(os.path.join(root, name))
                if stat.S_ISREG(st.st_mode):  # not a symlink (tradspool's fallback for links)
                    files.add((st.st_dev, st.st_ino))
        return len(files)
