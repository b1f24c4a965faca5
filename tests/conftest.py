"""Shared pytest fixtures: real INN servers on loopback (usenetfs.innserver).

Owns the fixtures
    inn           session: an InnServer with alt.binaries.test and alt.binaries.misc
    inn_auth      session: Reader on `inn` requiring AUTHINFO, user alice / wonderland
    inn_tls       session: Reader on `inn` speaking implicit TLS (trust Reader.cert_file)
    inn_refuse    session: Reader on `inn` that greets with 502 and hangs up
    inn_limited   function: factory, inn_limited(n) -> Reader admitting n connections per IP
    make_inn      function: factory, make_inn(**InnServer kwargs) -> a started, separate server
    fresh_inn     function: make_inn() with the same groups as `inn`
Without inn2 installed these fixtures FAIL (never skip): an untested pass would be a lie.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from usenetfs.errors import UserError
from usenetfs.innserver import InnServer, Reader

GROUPS = ("alt.binaries.test", "alt.binaries.misc")
ALICE = {"alice": "wonderland"}


def _inn_datadir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    path = tmp_path_factory.mktemp(name)
    if os.geteuid() == 0:
        # INN runs as user news, who must be able to pass through pytest's base directories
        # (created mode 700). Search permission only: their listings stay private.
        base = tmp_path_factory.getbasetemp()
        for d in (base.parent, base):
            d.chmod(d.stat().st_mode | 0o001)
    return path


def _started(server: InnServer) -> InnServer:
    try:
        server.start()
        return server
    except UserError as e:
        error = str(e)
    pytest.fail(f"cannot start the INN test server: {error}", pytrace=False)


def _reader(server: InnServer, kind: str, **opts) -> Reader:
    try:
        return server.add_reader(kind, **opts)
    except UserError as e:
        error = str(e)
    pytest.fail(f"cannot start the INN {kind} reader: {error}", pytrace=False)


@pytest.fixture(scope="session")
def inn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InnServer]:
    server = _started(InnServer(_inn_datadir(tmp_path_factory, "inn"), groups=GROUPS))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def inn_auth(inn: InnServer) -> Iterator[Reader]:
    reader = _reader(inn, "auth", users=ALICE)
    yield reader
    reader.stop()


@pytest.fixture(scope="session")
def inn_tls(inn: InnServer) -> Iterator[Reader]:
    reader = _reader(inn, "tls")
    yield reader
    reader.stop()


@pytest.fixture(scope="session")
def inn_refuse(inn: InnServer) -> Iterator[Reader]:
    reader = _reader(inn, "refuse")
    yield reader
    reader.stop()


@pytest.fixture
def inn_limited(inn: InnServer) -> Iterator[Callable[[int], Reader]]:
    readers: list[Reader] = []

    def make(limit: int) -> Reader:
        readers.append(_reader(inn, "limit", limit=limit))
        return readers[-1]

    yield make
    for reader in readers:
        reader.stop()


@pytest.fixture
def make_inn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., InnServer]]:
    servers: list[InnServer] = []

    def make(**kwargs) -> InnServer:
        kwargs.setdefault("groups", GROUPS)
        servers.append(_started(InnServer(_inn_datadir(tmp_path_factory, "fresh-inn"), **kwargs)))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def fresh_inn(make_inn: Callable[..., InnServer]) -> InnServer:
    return make_inn()
