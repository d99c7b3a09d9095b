"""Readiness as the deployment reads it: a web process is ready to serve when its database
answers and has this code's schema (or a newer one); the broker is the workers' concern, so
it is in the contract's `/readyz` but not in the web probe's `/readyz/database`."""
from __future__ import annotations

import socket

import pytest
import sqlalchemy as sa

from services.booking.app import bootstrap, create_app
from shared.config import Config
from shared.db import make_engine
from shared.migrations import upgrade


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_on():
    engines = []

    def build(url: str, amqp_url: str = "memory://"):
        config = Config(database_urls={"booking": url}, amqp_url=amqp_url, testing=True)
        engines.append(make_engine(url))
        return create_app(config, bootstrap(config, engine=engines[-1])).test_client()

    yield build
    for engine in engines:
        engine.dispose()


def _checks(client, path: str) -> tuple[int, dict]:
    response = client.get(path)
    return response.status_code, response.get_json()["checks"]


def test_a_broker_outage_leaves_the_web_process_ready_to_serve(database_url, app_on):
    engine = make_engine(database_url)
    try:
        upgrade(engine, "booking")
    finally:
        engine.dispose()
    client = app_on(database_url, f"amqp://guest:guest@127.0.0.1:{_closed_port()}/")
    assert _checks(client, "/readyz") == (503, {"database": True, "schema": True,
                                                "broker": False})
    assert _checks(client, "/readyz/database") == (200, {"database": True, "schema": True})


def test_a_database_not_yet_migrated_to_this_code_is_not_ready(database_url, app_on):
    """The release's migration did not run (or ran an older image): new code on old tables
    must not take traffic. Never migrated, or one revision behind: both not ready."""
    client = app_on(database_url)
    assert _checks(client, "/readyz/database") == (503, {"database": True, "schema": False})

    engine = make_engine(database_url)
    try:
        upgrade(engine, "booking", "0002")
        assert _checks(client, "/readyz/database") == (503, {"database": True,
                                                             "schema": False})
        upgrade(engine, "booking")
        assert _checks(client, "/readyz/database")[0] == 200
        # A newer schema (the next release migrated first, this pod still serving during the
        # rollout) is no reason to stop serving.
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
        assert _checks(client, "/readyz/database") == (200, {"database": True,
                                                             "schema": True})
    finally:
        engine.dispose()
