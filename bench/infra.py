"""Throwaway servers' state for one run: PostgreSQL databases and a RabbitMQ vhost, created
fresh and removed afterwards (as tests/conftest.py does per test), so a bench never touches
anybody's data and leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import amqp
import psycopg

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
AMQP_HOST = os.environ.get("BENCH_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("BENCH_AMQP_PORT", "5672"))


class RabbitmqctlFailed(ConnectionError):
    """rabbitmqctl could not do it, most often because the broker is stopped."""


def _rabbitmqctl(*args: str) -> None:
    try:
        subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                       timeout=60, check=True)
    except subprocess.CalledProcessError as error:
        raise RabbitmqctlFailed(f"rabbitmqctl {' '.join(args)}: {error.stderr.strip()}") \
            from error
    except subprocess.TimeoutExpired as error:
        raise RabbitmqctlFailed(f"rabbitmqctl {' '.join(args)} timed out") from error


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


def checkpoint() -> None:
    """Have PostgreSQL write out what earlier measurements left dirty (the notifier's million
    scheduled rows, a few seconds before), so that flushing it does not fall on the next one."""
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        try:
            admin.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass    # an admin URL without superuser or pg_checkpoint: measured as it is


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A new vhost for this run; yields its AMQP URL and deletes it (and its queues) after."""
    vhost = f"clinic-bench-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"
    finally:
        _delete_vhost(vhost)


def _delete_vhost(vhost: str) -> None:
    """Removed even when the broker went away mid-run: wait for it to come back and retry."""
    for attempt in range(3):
        try:
            _rabbitmqctl("delete_vhost", vhost)
            return
        except RabbitmqctlFailed:
            if attempt == 2:
                print(f"bench: could not delete RabbitMQ vhost {vhost}; remove it with "
                      f"`rabbitmqctl delete_vhost {vhost}`", file=sys.stderr)
                return
            wait_for_broker()


def broker_went_away(error: BaseException) -> bool:
    """A lost or refused broker connection, anywhere in the exception's chain."""
    import kombu.exceptions
    import pika.exceptions
    kinds = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionWrongStateError,
             pika.exceptions.ChannelWrongStateError, amqp.exceptions.ConnectionError,
             amqp.exceptions.RecoverableConnectionError, kombu.exceptions.OperationalError,
             ConnectionError)
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


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
