"""Reaching a volume's server from a command, and the segment store a volume posts with.

Owns
- `local_server(home)`: the project's own INN server for volumes made with `--local`,
  started for the duration of a command if it was not running (and stopped again);
- `volume_servers(volume, settings)`: the volume's server configurations, with the local
  server running meanwhile if the volume uses it;
- `check_server(config)`: one direct connection and login, so an unreachable server or a
  wrong password is one clear line within seconds, not a retry policy running out;
- `segment_store(client, keys, settings)`: the `NNTPSegmentStore` with the volume's
  cipher, padding and read-back settings, the same for the mount daemon and for commands
  that work on an unmounted volume (verify).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from .errors import UserError
from .home import Home
from .keys import VolumeKeys
from .nntp import errors as E
from .nntp.client import NNTPClient
from .nntp.config import ServerConfig
from .nntp.connection import NNTPConnection
from .nntp.posting import VerifyOptions
from .store import NNTPSegmentStore
from .volume import LOCAL_SERVER, Volume, VolumeSettings

# Read back at once, then back off while the server answers 430: a fixed propagation
# delay per segment would cap uploads at in-flight / delay.
READ_BACK = VerifyOptions(delay=0.0, tries=6, interval=1.0)


@contextmanager
def local_server(home: Home) -> Iterator:
    """The local INN server (an `InnServer`), running; stopped afterwards only if it
    was started here."""
    from .innserver import InnServer

    server = InnServer(home.ensure().local_server_dir)
    started_here = not server.is_running()
    server.start()
    try:
        yield server
    finally:
        if started_here:
            server.stop()


@contextmanager
def volume_servers(volume: Volume, settings: VolumeSettings) -> Iterator[list[ServerConfig]]:
    """The volume's server configurations (passwords included), with the local server
    running for the duration if the volume uses it."""
    if LOCAL_SERVER in settings.servers:
        with local_server(volume.home) as server:
            yield volume.server_configs(settings, server.url)
    else:
        yield volume.server_configs(settings)


async def check_server(config: ServerConfig, tries: int = 3, *, group: str | None = None) -> None:
    """One direct connection: the server answers and takes our login (and, given `group`,
    does not deny carrying that newsgroup: every post to it would be refused), or one
    clear line.

    A temporary failure (a greeting cut off, a refused connect while a server restarts) is
    tried again twice, half a second apart; a permanent one (bad password) is not.
    """
    for attempt in range(tries):
        try:
            conn = await NNTPConnection.open(config)
        except E.TemporaryError as error:
            if attempt + 1 == tries:
                raise UserError(f"server check failed: {error}") from None
            await trio.sleep(0.5)
            continue
        except E.NNTPError as error:
            raise UserError(f"server check failed: {error}") from None
        try:
            if group is not None and await conn.group_exists(group) is False:
                raise UserError(f"server check failed: {config.describe()} has no newsgroup {group!r}, "
                                "so it would refuse every post (choose a group it carries)")
        except E.NNTPError as error:
            raise UserError(f"server check failed: {error}") from None
        finally:
            await conn.aclose()
        return


def segment_store(client: NNTPClient, keys: VolumeKeys, settings: VolumeSettings) -> NNTPSegmentStore:
    return NNTPSegmentStore(client, keys, settings.group, cipher=settings.cipher,
                            pad=settings.pad_articles or None, verify=READ_BACK)


__all__ = ["READ_BACK", "check_server", "local_server", "segment_store", "volume_servers"]
