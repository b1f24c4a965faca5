"""The `usenetfs` command: argument parsing and the error boundary.

Each sub-command lives in its own module and registers itself here. A `UserError`
becomes one line on stderr and its exit code; no traceback is shown for anything the
user can fix. Exit codes: 0 success, 1 failure, 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import user_error_behind
from . import mount_helper, ops_cmd, server_cmd, share_cmd, sync_cmd, volume_cmd

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="usenetfs", description="A FUSE filesystem that keeps files on Usenet.")
    parser.add_argument("--version", action="version", version=f"usenetfs {__version__}")
    parser.add_argument("--home", metavar="DIR",
                        help="keep all state under DIR (default: $USENETFS_HOME, else XDG dirs)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    volume_cmd.register(commands)
    server_cmd.register(commands)
    mount_helper.register(commands)
    ops_cmd.register(commands)
    share_cmd.register(commands)
    sync_cmd.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(logging.DEBUG, level), format="%(levelname)s: %(message)s")
    try:
        return args.handler(args) or EXIT_OK
    except BrokenPipeError:
        # The reader went away (`usenetfs status | head`): stop quietly, as cat does.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except BaseException as raised:  # noqa: BLE001 - sorted below; bugs are re-raised
        error = user_error_behind(raised)
        if isinstance(error, KeyboardInterrupt):
            print("usenetfs: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if error is None:
            raise
        print(f"usenetfs: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
