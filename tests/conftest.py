"""Fixtures shared by every suite: a fresh PostgreSQL database and RabbitMQ vhost per test.

Tests that need a server skip with a one-line reason when it is not reachable, except under
`CI=true`, where a missing server is a failure: CI must never pass by skipping.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg
import pytest

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required, not skipped)")
    pytest.skip(reason)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A new empty PostgreSQL database for as long as the block lasts; its SQLAlchemy URL."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        _unavailable(f"PostgreSQL not reachable: {str(error).splitlines()[0]}")
    name = f"clinic_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_postgres_url():
    """A factory of new empty databases (a test with several services needs one each); every
    database it made is dropped afterwards."""
    with ExitStack() as made:
        yield lambda: made.enter_context(scratch_postgres())


@pytest.fixture
def postgres_url(make_postgres_url):
    """A new empty database; yields its SQLAlchemy URL and drops it afterwards."""
    return make_postgres_url()


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=True)


@pytest.fixture
def amqp_url():
    """A new RabbitMQ vhost for this test alone; yields its AMQP URL and deletes it after."""
    if not _port_open(AMQP_HOST, AMQP_PORT):
        _unavailable("RabbitMQ not reachable on 127.0.0.1:5672")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl not found (needed to create a test vhost)")
    vhost = f"clinic-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'test.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """One contract test, every backend: runs the test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")
