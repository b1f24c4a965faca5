"""`usenetfs server ...`: test a provider account, and run the local INN server.

    usenetfs server test URL [--password-file F] [--ca-file F] [--connections N]
                             [--articles N] [--group G] [--json]
    usenetfs server test --local ...   (against the local server, started if needed)
    usenetfs server test --volume NAME ...   (every server of a volume, with its password,
                                              group and connection cap)
    usenetfs server start | stop | status   (the local INN server in the home directory)

Exit codes of `server test`: 0 every test article round-tripped (on every server); 1 failure;
2 bad usage. `server status`: 0 running, 3 not running.
"""

from __future__ import annotations

import json
import sys

import trio

from ..errors import UserError
from ..home import Home
from ..nntp.config import parse_server_url
from .arguments import positive_int

DEFAULT_GROUP = "alt.binaries.test"


def register(commands) -> None:
    server = commands.add_parser("server", help="test a server account; run the local server")
    actions = server.add_subparsers(dest="server_command", metavar="ACTION")
    actions.required = True

    test = actions.add_parser("test", help="post, read back and time test articles",
                              description="Connect, log in, post encrypted test articles "
                              "through the connection pool, read every one back by BODY and "
                              "report what was found. Exit 0 only if all round-tripped.",
                              epilog="exit codes: 0 every test article round-tripped (with --volume: "
                              "on every server of the volume); 1 failure; 2 bad usage")
    test.add_argument("url", nargs="?", help="nntp://[user[:password]@]host[:port] or nntps://...")
    test.add_argument("--local", action="store_true", help="use the local INN server (started if needed)")
    test.add_argument("--volume", metavar="NAME",
                      help="test the servers of volume NAME (its password, CA file, group and connections)")
    test.add_argument("--password-file", metavar="FILE", help="read the password from FILE")
    test.add_argument("--ca-file", metavar="FILE", help="trust this CA or certificate file for TLS")
    test.add_argument("--connections", type=positive_int, metavar="N",
                      help="pool size (default 4, or the volume's)")
    test.add_argument("--articles", type=positive_int, default=10, metavar="N", help="test articles (default 10)")
    test.add_argument("--group", metavar="G", help=f"newsgroup (default {DEFAULT_GROUP}, or the volume's)")
    test.add_argument("--json", action="store_true",
                      help="print the report as JSON (with --volume: a list, one per server)")
    test.set_defaults(handler=_test)

    for name, handler, text in (("start", _start, "start the local INN server"),
                                ("stop", _stop, "stop the local INN server"),
                                ("status", _status, "is the local INN server running?")):
        actions.add_parser(name, help=text).set_defaults(handler=handler)


def _local_server(args):
    from ..innserver import InnServer
    home = Home.resolve(args.home).ensure()
    return InnServer(home.local_server_dir)


def _test(args) -> int:
    from ..session import local_server
    if sum(map(bool, (args.url, args.local, args.volume))) != 1:
        raise UserError("give one of: a server URL, --local, --volume NAME")
    if args.volume:
        return _test_volume(args)
    group = args.group or DEFAULT_GROUP
    connections = args.connections or 4
    if args.local:
        with local_server(Home.resolve(args.home)) as server:
            config = parse_server_url(server.url)
            report = _run_test(config, group, args.articles, connections)
    else:
        config = parse_server_url(args.url, password_file=args.password_file, ca_file=args.ca_file)
        report = _run_test(config, group, args.articles, connections)
    _print_reports([report], args.json, single=True)
    return 0 if report.ok else 1


def _test_volume(args) -> int:
    """Every server of a configured volume, as its mount would use it."""
    from ..session import volume_servers
    from ..volume import Volume
    if args.password_file or args.ca_file:
        raise UserError("--password-file and --ca-file come from the volume with --volume")
    volume = Volume(Home.resolve(args.home), args.volume)
    settings = volume.load()
    group = args.group or settings.group
    connections = args.connections or settings.learned_connection_limit or settings.connections
    with volume_servers(volume, settings) as configs:
        reports = [_run_test(config, group, args.articles, connections) for config in configs]
    _print_reports(reports, args.json, single=False)
    return 0 if all(report.ok for report in reports) else 1


def _run_test(config, group: str, articles: int, connections: int):
    from ..servertest import run_server_test
    return trio.run(lambda: run_server_test(config, group=group, articles=articles, connections=connections))


def _print_reports(reports, as_json: bool, *, single: bool) -> None:
    if as_json:
        items = [report.__dict__ | {"ok": report.ok} for report in reports]
        print(json.dumps(items[0] if single else items, indent=2, default=str))
        return
    for number, report in enumerate(reports):
        if number:
            print()
        print("\n".join(report.lines()))
        print("result:        " + ("OK, every article round-tripped" if report.ok else "FAILED"))


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
