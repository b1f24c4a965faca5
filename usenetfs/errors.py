"""The root of usenetfs's own exceptions, and the one for errors a user can act on.

`UserError` carries a one-line message and an exit code; the command line prints it
without a traceback. Every other exception escaping a command is a bug. `read_user_file`
reads a file the user named, failing with such a line.
"""

from pathlib import Path


class UsenetfsError(Exception):
    """Base class of every error usenetfs raises on purpose."""


class UserError(UsenetfsError):
    """Something the user can fix: bad input, a wrong passphrase, an unreachable server."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def read_user_file(path, what: str) -> str:
    """The text of a file the user named (`what`: "config", "identity", "password", ...),
    or a one-line UserError: "cannot read the WHAT file PATH: REASON" (missing, unreadable,
    a directory) or "the WHAT file PATH is not text"."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"the {what} file {path} is not text") from None


def user_error_behind(raised: BaseException) -> "UserError | KeyboardInterrupt | None":
    """The UserError (or Ctrl-C) behind `raised`, looking inside exception groups that
    concurrent tasks produce; None if anything else is in there (a bug: show it)."""
    if isinstance(raised, (UserError, KeyboardInterrupt)):
        return raised
    if isinstance(raised, BaseExceptionGroup):
        found = [user_error_behind(inner) for inner in raised.exceptions]
        if found and all(item is not None for item in found):
            return found[0]
    return None
