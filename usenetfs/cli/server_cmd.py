"""`usenetfs server ...`: test a provider account, and run the local INN server.

    usenetfs server test URL [--password-file F] [--ca-file F] [--connections N]
                             [--articles N] [--group G] [--json]
    usenetfs server test --local ...   (against the local server, started if needed)
    usenetfs server start | stop | status   (the local INN server in the home directory)
"""

from __future__ import annotations

import json
import sys

import trio

from ..errors import UserError
from ..home import Home
from ..nntp.config import parse_server_url

DEFAULT_GROUP = "alt.binaries.test"


def register(commands) -> None:
    server = commands.add_parser("server", help="test a server account; run the local server")
    actions = server.add_subparsers(dest="server_command", metavar="ACTION")
    actions.required = True

    test = actions.add_parser("test", help="post, read back and time test articles",
                              description="Connect, log in, post encrypted test articles "
                              "through the connection pool, read every one back by BODY and "
                              "report what was found. Exit 0 only if all round-tripped.")
    test.add_argument("url", nargs="?", help="nntp://[user[:password]@]host[:port] or nntps://...")
    test.add_argument("--local", action="store_true", help="use the local INN server (started if needed)")
    test.add_argument("--password-file", metavar="FILE", help="read the password from FILE")
    test.add_argument("--ca-file", metavar="FILE", help="trust this CA or certificate file for TLS")
    test.add_argument("--connections", type=_positive, default=4, metavar="N", help="pool size (default 4)")
    test.add_argument("--articles", type=_positive, default=10, metavar="N", help="test articles (default 10)")
    test.add_argument("--group", default=DEFAULT_GROUP, metavar="G", help=f"newsgroup (default {DEFAULT_GROUP})")
    test.add_argument("--json", action="store_true", help="print the report as JSON")
    test.set_defaults(handler=_test)

    for name, handler, text in (("start", _start, "start the local INN server"),
                                ("stop", _stop, "stop the local INN server"),
                                ("status", _status, "is the local INN server running?")):
        actions.add_parser(name, help=text).set_defaults(handler=handler)


def _positive(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _local_server(args):
    from ..innserver import InnServer
    home = Home.resolve(args.home).ensure()
    return InnServer(home.local_server_dir)


def _test(args) -> int:
    from ..servertest import run_server_test
    if bool(args.url) == bool(args.local):
        raise UserError("give either a server URL or --local")
    server = None
    if args.local:
        server = _local_server(args)
        started_here = not server.is_running()
        server.start()
        url = server.url
    else:
        started_here = False
        url = args.url
    config = parse_server_url(url, password_file=args.password_file, ca_file=args.ca_file)
    try:
        report = trio.run(lambda: run_server_test(config, group=args.group, articles=args.articles,
                                                  connections=args.connections))
    finally:
        if server is not None and started_here:
            server.stop()
    if args.json:
        print(json.dumps(report.__dict__ | {"ok": report.ok}, indent=2, default=str))
    else:
        print("\n".join(report.lines()))
        print("result:        " + ("OK, every article round-tripped" if report.ok else "FAILED"))
    return 0 if report.ok else 1


def _start(args) -> int:
    server = _local_server(args)
    server.start()
    print(server.url)
    return 0


def _stop(args) -> int:
    server = _local_server(args)
    if not server.is_running():
        print("the local server is not running", file=sys.stderr)
        return 0
    server.stop()
    return 0


def _status(args) -> int:
    server = _local_server(args)
    if server.is_running():
        print(f"running: {server.url}")
        return 0
    print("not running")
    return 3
