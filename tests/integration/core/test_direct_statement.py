"""`shared.direct.DirectStatement` on PostgreSQL: what it skips of SQLAlchemy must not change
what a statement means. Parameters and results are converted by the columns' types, errors
are SQLAlchemy's (a lost connection a lost connection), and listeners still see the SQL."""
from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
import sqlalchemy as sa

from shared.db import UTCDateTime, make_engine, one_statement
from shared.direct import DirectStatement

metadata = sa.MetaData()
visits = sa.Table(
    "direct_visits", metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kept", sa.Boolean, nullable=False),
    sa.Column("notes", sa.JSON, nullable=True),
)
_VALUES = {column.key: sa.bindparam(column.key, type_=column.type) for column in visits.c}
ADD = sa.select(sa.func.count()).select_from(
    visits.insert().from_select(list(_VALUES), sa.select(*_VALUES.values()))
    .returning(visits.c.id).cte("added"))
READ = sa.select(visits.c.id, visits.c.at, visits.c.kept, visits.c.notes,
                 sa.literal("fixed").label("fixed")).where(
    visits.c.id == sa.bindparam("id", type_=sa.Uuid))


@pytest.fixture
def engine(postgres_url):
    engine = make_engine(postgres_url, pool_size=1)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


def _visit(**changes) -> dict:
    return {"id": uuid.uuid4(), "at": datetime(2027, 3, 28, 1, 30, tzinfo=UTC), "kept": True,
            "notes": {"room": 2}} | changes


def test_values_go_in_and_come_out_as_sqlalchemy_would_have_them(engine):
    """An instant given in another zone is stored as that instant and read back in UTC, JSON
    round-trips, and a value the statement itself holds (a literal) is sent too."""
    visit = _visit(at=datetime(2027, 3, 28, 3, 30, tzinfo=timezone(timedelta(hours=2))))
    with one_statement(engine) as connection:
        assert DirectStatement(ADD).one(connection, visit) == (1,)
        row = DirectStatement(READ).one(connection, {"id": visit["id"]})
        expected = connection.execute(READ, {"id": visit["id"]}).one()
    assert row == tuple(expected)
    assert row[1] == datetime(2027, 3, 28, 1, 30, tzinfo=UTC) and row[1].tzinfo is UTC
    assert row[3] == {"room": 2} and row[4] == "fixed"


def test_a_naive_datetime_is_refused_before_anything_is_sent(engine):
    seen = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    with pytest.raises(sa.exc.StatementError, match="naive"), \
            one_statement(engine) as connection:
        DirectStatement(ADD).one(connection, _visit(at=datetime(2027, 3, 28, 1, 30)))
    assert seen == []


def test_only_a_live_connection_in_autocommit_is_used(engine):
    """In a transaction the write would need a commit nobody makes; on a connection SQLAlchemy
    invalidated, asking for the driver would quietly check out another one."""
    with engine.connect() as connection, pytest.raises(sa.exc.InvalidRequestError,
                                                       match="autocommit"):
        DirectStatement(ADD).one(connection, _visit())
    with one_statement(engine) as connection:
        connection.invalidate()
        with pytest.raises(sa.exc.PendingRollbackError):
            DirectStatement(ADD).one(connection, _visit())
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(visits)).scalar() == 0


def test_a_statement_with_per_execution_parameters_is_refused(engine):
    with one_statement(engine) as connection, pytest.raises(ValueError, match="compiled once"):
        DirectStatement(sa.select(visits.c.id).where(
            visits.c.id.in_(sa.bindparam("ids", expanding=True)))).rows(connection, {"ids": []})


def test_listeners_see_the_statement_and_errors_are_sqlalchemys(engine):
    """A duplicate key comes out as IntegrityError carrying the driver's error (callers read
    its SQLSTATE), its message without the values, and the statement was seen by the
    engine's listeners as any other."""
    seen, done = [], []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    sa.event.listen(engine, "after_cursor_execute", lambda *args: done.append(args[2]))
    visit = _visit(notes={"name": "Ada Lovelace"})
    with one_statement(engine) as connection:
        DirectStatement(ADD).one(connection, visit)
        with pytest.raises(sa.exc.IntegrityError) as refused:
            DirectStatement(ADD).one(connection, visit)
    assert refused.value.orig.sqlstate == "23505"
    assert "Lovelace" not in str(refused.value)
    assert len(seen) == 2 and seen[0].lstrip().startswith("WITH added AS")
    assert done == seen[:1]             # the refused one never finished


def test_one_refuses_no_row_and_many_rows(engine):
    with one_statement(engine) as connection:
        with pytest.raises(sa.exc.NoResultFound):
            DirectStatement(READ).one(connection, {"id": uuid.uuid4()})
        with pytest.raises(sa.exc.MultipleResultsFound):
            DirectStatement(sa.select(sa.literal(1)).union_all(sa.select(sa.literal(2)))
                            ).one(connection, {})


def test_a_connection_the_server_dropped_fails_as_lost_and_is_replaced(engine, postgres_url):
    """OperationalError (the API's 503), the connection invalidated, the next checkout a new
    healthy connection back in transactions."""
    with pytest.raises(sa.exc.OperationalError) as lost, one_statement(engine) as connection:
        pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"),
                             autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        time.sleep(0.2)
        try:
            DirectStatement(READ).one(connection, {"id": uuid.uuid4()})
        finally:
            invalidated = connection.invalidated
    assert lost.value.connection_invalidated and invalidated
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid
        assert connection.connection.driver_connection.autocommit is False


def test_sqlite_is_refused(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    try:
        with engine.connect() as connection, pytest.raises(ValueError, match="PostgreSQL"):
            DirectStatement(READ).one(connection, {"id": uuid.uuid4()})
    finally:
        engine.dispose()
