"""Throwaway servers' state for one run: PostgreSQL databases and a RabbitMQ vhost, created
fresh and removed afterwards (as tests/conftest.py does per test), so a bench never touches
anybody's data and leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import amqp
import psycopg

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
AMQP_HOST = os.environ.get("BENCH_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("BENCH_AMQP_PORT", "5672"))


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60,
                   check=True)


@contextlib.contextmanager
def postgres_databases(*names: str) -> Iterator[dict[str, str]]:
    """New empty databases, one per name; yields {name: SQLAlchemy URL}, drops them after."""
    run = uuid.uuid4().hex[:10]
    databases = {name: f"clinic_bench_{run}_{name}" for name in names}
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        for database in databases.values():
            admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield {name: f"{PG_BASE}/{database}" for name, database in databases.items()}
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            for database in databases.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A new vhost for this run; yields its AMQP URL and deletes it (and its queues) after."""
    vhost = f"clinic-bench-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def wait_for_broker(timeout: float = 120.0) -> None:
    """Another engineer's e2e suite stops RabbitMQ for ~30 s now and then: wait it out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = amqp.Connection(f"{AMQP_HOST}:{AMQP_PORT}", connect_timeout=3)
            connection.connect()
            connection.close()
            return
        except (OSError, amqp.exceptions.AMQPError) as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ not available after {timeout:.0f} s") from error
            time.sleep(2)
