"""`clinic db upgrade` started with its database (compose, a fresh cluster) waits for the server
to accept connections instead of failing on the first refusal."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import sqlalchemy as sa

from shared.db import make_engine
from shared.migrations import wait_for_database
from tests.fakes.tcp_proxy import TcpProxy


def _open_later(port: int, upstream: tuple[str, int], after: float,
                opened: list[TcpProxy]) -> None:
    """Nothing on `port` for `after` seconds (connections refused), then a relay to
    PostgreSQL: a server that was still starting."""
    time.sleep(after)
    opened.append(TcpProxy(*upstream, listen_port=port))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_waits_for_a_database_that_is_still_starting(postgres_url):
    url = sa.make_url(postgres_url)
    port, opened = _free_port(), []
    opener = threading.Thread(target=_open_later, daemon=True,
                              args=(port, (url.host, url.port), 1.5, opened))
    opener.start()
    engine = make_engine(url.set(port=port).render_as_string(hide_password=False))
    try:
        wait_for_database(engine, seconds=30)
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
        opener.join(5)
        for proxy in opened:
            proxy.cut()


def test_gives_up_with_the_error_when_the_database_never_comes():
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/none")
    try:
        with pytest.raises(sa.exc.OperationalError):
            wait_for_database(engine, seconds=1.5)
    finally:
        engine.dispose()
