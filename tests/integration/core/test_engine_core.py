"""The shared PostgreSQL engine and outbox: a connection the server dropped is never handed to
a request, and an outbox row wakes the relay on commit only."""
from __future__ import annotations

import contextlib
import time

import psycopg
import pytest
import sqlalchemy as sa

from shared.clock import SystemClock
from shared.db import (
    UnitOfWork,
    add_shared_tables,
    make_engine,
    one_statement,
    outbox_channel,
)
from shared.events import new_event

CLOCK = SystemClock()


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _backend(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()


def test_a_pooled_connection_the_server_dropped_is_replaced_at_checkout(postgres_url):
    engine = make_engine(postgres_url)
    try:
        before = _backend(engine)
        with psycopg.connect(_libpq(postgres_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (before,))  # waits for exit
        time.sleep(0.2)  # the goodbye reaches the pooled connection's socket

        after = _backend(engine)  # no error: the dropped connection was not handed out

        assert after != before
    finally:
        engine.dispose()


def test_pooled_connections_notice_a_vanished_peer_in_seconds_not_hours(postgres_url):
    """A database host that dies or is cut off without closing the socket: a query on a
    pooled connection must fail within seconds (libpq's keepalives and user timeout), and the
    server must not keep a dead worker's transaction, and its row locks, for TCP's two hours.
    Over TCP, as in production (both are ignored on a Unix socket)."""
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            server = {name: connection.exec_driver_sql(f"SHOW {name}").scalar() for name in (
                "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
                "tcp_user_timeout")}
            ours = connection.connection.dbapi_connection.info.get_parameters()
        assert server == {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                          "tcp_keepalives_count": "3", "tcp_user_timeout": "30000"}
        assert (ours["keepalives"], ours["keepalives_idle"], ours["tcp_user_timeout"]) == (
            "1", "10", "30000")
    finally:
        engine.dispose()


def test_an_outbox_row_wakes_the_relay_when_committed_and_not_when_rolled_back(postgres_url):
    metadata = sa.MetaData()
    tables = add_shared_tables(metadata)
    engine = make_engine(postgres_url)
    metadata.create_all(engine)
    channel = outbox_channel("test")
    listener = psycopg.connect(_libpq(postgres_url), autocommit=True)
    try:
        listener.execute(f'LISTEN "{channel}"')

        with UnitOfWork(engine, tables, CLOCK, channel) as uow:
            uow.outbox.add(new_event("/test", "test.thing.happened", "a1", {}, CLOCK))
        assert list(listener.notifies(timeout=0.5)) == []

        with UnitOfWork(engine, tables, CLOCK, channel) as uow:
            uow.outbox.add(new_event("/test", "test.thing.happened", "a1", {"n": 1}, CLOCK))
            uow.outbox.add(new_event("/test", "test.thing.happened", "a1", {"n": 2}, CLOCK))
            uow.commit()
        woken = list(listener.notifies(timeout=0.5))

        assert [n.channel for n in woken] == [channel]  # one wake-up per transaction
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(
                tables.outbox)).scalar() == 2
    finally:
        listener.close()
        engine.dispose()


def test_a_database_error_does_not_carry_the_values_it_was_given(postgres_url):
    """Error texts reach logs and dead-letter headers: no patient's phone or email in them."""
    import sqlalchemy as sa

    from shared.db import make_engine
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE t (phone varchar(5))"))
        with pytest.raises(sa.exc.DBAPIError) as raised, engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO t VALUES (:phone)"),
                               {"phone": "+447400123456"})
        assert "+447400123456" not in str(raised.value)
    finally:
        engine.dispose()


def test_a_refusal_quoting_the_value_is_described_by_names_only(postgres_url):
    """PostgreSQL's own message quotes the refused key (DETAIL: Key (phone)=(...)), which
    `hide_parameters` cannot hide: `describe_error` names the error, SQLSTATE, constraint
    and table instead, for logs and dead-letter reasons."""
    from shared.db import describe_error
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(
                "CREATE TABLE contacts (phone text CONSTRAINT contacts_phone UNIQUE)"))
            connection.execute(sa.text("INSERT INTO contacts VALUES ('+447400123456')"))
        with pytest.raises(sa.exc.IntegrityError) as raised, engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO contacts VALUES ('+447400123456')"))
        assert "+447400123456" in str(raised.value.orig)  # what we must not pass on
        assert describe_error(raised.value) == (
            "UniqueViolation (SQLSTATE 23505, constraint contacts_phone, table contacts)")
    finally:
        engine.dispose()


def _scratch_table(engine) -> sa.Table:
    table = sa.Table("scratch_rows", sa.MetaData(), sa.Column("n", sa.Integer))
    table.create(engine)
    return table


def test_one_statement_commits_each_statement_by_itself(postgres_url):
    """Autocommit on PostgreSQL: a statement is kept even if a later one fails, as a
    one-statement write relies on (nothing to commit, no BEGIN round trip)."""
    engine = make_engine(postgres_url, pool_size=1)
    try:
        table = _scratch_table(engine)
        with pytest.raises(sa.exc.DataError), one_statement(engine) as connection:
            connection.execute(table.insert().values(n=1))
            connection.execute(sa.text("SELECT 1 / 0"))
        with engine.connect() as connection:
            assert connection.execute(sa.select(table.c.n)).scalars().all() == [1]
    finally:
        engine.dispose()


@pytest.mark.parametrize("failing", [False, True])
def test_a_connection_back_from_one_statement_runs_transactions_again(postgres_url, failing):
    """The same pooled connection (a pool of one) next serves a unit of work: its writes must
    roll back with it, whether or not the one-statement use ended in an error."""
    engine = make_engine(postgres_url, pool_size=1)
    try:
        table = _scratch_table(engine)
        pid = _backend(engine)
        with pytest.raises(sa.exc.DataError) if failing else contextlib.nullcontext(), \
                one_statement(engine) as connection:
            connection.execute(sa.text("SELECT 1 / 0" if failing else "SELECT 1"))
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
            connection.execute(table.insert().values(n=2))
            connection.rollback()
            assert connection.execute(sa.select(sa.func.count()).select_from(table)
                                      ).scalar() == 0
    finally:
        engine.dispose()


def test_a_connection_the_server_drops_inside_one_statement_fails_as_a_lost_connection(
        postgres_url):
    """The error is the lost connection (OperationalError: the API's 503), not a failure to
    switch autocommit back on a dead connection; the pool then hands out a healthy one."""
    engine = make_engine(postgres_url, pool_size=1)
    try:
        with pytest.raises(sa.exc.OperationalError), one_statement(engine) as connection:
            pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            with psycopg.connect(_libpq(postgres_url), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            time.sleep(0.2)
            connection.execute(sa.text("SELECT 1"))
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid
            connection.execute(sa.text("SELECT 1"))
            assert connection.connection.driver_connection.autocommit is False
    finally:
        engine.dispose()
