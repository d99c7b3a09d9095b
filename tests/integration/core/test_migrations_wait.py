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


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()


def _listen_later(port: int, upstream: tuple[str, int], after: float,
                  stop: threading.Event) -> None:
    """Nothing on `port` for `after` seconds (connections refused), then a relay to
    PostgreSQL: a server that was still starting."""
    time.sleep(after)
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    with listener:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(upstream)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_waits_for_a_database_that_is_still_starting(postgres_url):
    url = sa.make_url(postgres_url)
    port, stop = _free_port(), threading.Event()
    opener = threading.Thread(target=_listen_later, daemon=True,
                              args=(port, (url.host, url.port), 1.5, stop))
    opener.start()
    engine = make_engine(url.set(port=port).render_as_string(hide_password=False))
    try:
        wait_for_database(engine, seconds=30)
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
        stop.set()
        opener.join(5)


def test_gives_up_with_the_error_when_the_database_never_comes():
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/none")
    try:
        with pytest.raises(sa.exc.OperationalError):
            wait_for_database(engine, seconds=1.5)
    finally:
        engine.dispose()
