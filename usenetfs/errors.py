"""The root of usenetfs's own exceptions, and the one for errors a user can act on.

`UserError` carries a one-line message and an exit code; the command line prints it
without a traceback. Every other exception escaping a command is a bug.
"""


class UsenetfsError(Exception):
    """Base class of every error usenetfs raises on purpose."""


class UserError(UsenetfsError):
    """Something the user can fix: bad input, a wrong passphrase, an unreachable server."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
