"""Database plumbing every service shares: engines, UTC timestamps, the unit of work, and the
tables behind the outbox, idempotent consumers, Idempotency-Key replays and staff tokens.

SQLAlchemy Core rather than the ORM: the rules live in `model.py` as plain objects, and each
repository maps rows to them explicitly, which keeps every statement visible and cheap.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import select
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from shared.clock import Clock
from shared.errors import Conflict, Invalid
from shared.events import Event, encode


class UTCDateTime(sa.TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out, on PostgreSQL and SQLite alike.

    A naive datetime is refused: guessing its zone is how reminders end up an hour out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: store instants as aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


# A peer that vanishes without closing its socket (a host that dies, a network cut, a
# failover that resets nothing) must be noticed in seconds, not after TCP's two hours of
# keepalive (about 15 minutes of retransmits once a query is waiting): otherwise a query
# blocks that long, a worker stops sending its broker heartbeats, and a dead worker's open
# transaction keeps its row locks (and the relay's leader its lock). Asked of libpq for our
# side, and of the server for its side with SET after connecting, not as startup `options`,
# which a pooler such as PgBouncer refuses. Both are ignored on a Unix socket, where a dead
# peer cannot happen.
QUICK_TO_NOTICE_A_DEAD_PEER = {"keepalives": 1, "keepalives_idle": 10,
                               "keepalives_interval": 5, "keepalives_count": 3,
                               "tcp_user_timeout": 30000}
NOTICE_A_DEAD_PEER = ("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
                      "SET tcp_keepalives_count = 3; SET tcp_user_timeout = 30000")


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """`hide_parameters`: a database error's text names the statement, not its values, which
    can be a patient's phone or email; that text reaches logs and dead-letter headers."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, poolclass=sa.QueuePool,
            pool_size=pool_size, max_overflow=20, hide_parameters=True,
        )
        _sqlite_serialised_writes(engine)
        return engine
    engine = sa.create_engine(
        url, pool_size=pool_size, max_overflow=pool_size * 2, pool_recycle=1800,
        connect_args={"connect_timeout": 5, **QUICK_TO_NOTICE_A_DEAD_PEER},
        hide_parameters=True,
    )
    _dropped_connections_replaced(engine)
    _dead_peers_noticed(engine)
    return engine


def _dead_peers_noticed(engine: Engine) -> None:
    """The server's side of QUICK_TO_NOTICE_A_DEAD_PEER, set once per new connection."""

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.execute(NOTICE_A_DEAD_PEER)
        dbapi_connection.commit()   # a SET rolled back with its transaction would not stay


def _dropped_connections_replaced(engine: Engine) -> None:
    """A pooled connection the server has dropped (a restart, a failover, a terminated
    backend) is replaced at checkout, before a request can fail on it.

    What `pool_pre_ping` does, without its round trip on every checkout: PostgreSQL says
    goodbye (an error message, then end of stream) when it drops a connection, so an idle
    connection's socket with anything to read is the sign. Only then is the connection
    pinged, and replaced if the ping fails; one with nothing to read is handed out as is.
    """

    @sa_event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, _record, _proxy):
        if dbapi_connection.closed or dbapi_connection.broken:
            raise sa.exc.DisconnectionError("connection closed")
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN)
        if not poller.poll(0):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out (or opens) another.
            raise sa.exc.DisconnectionError("connection dropped by the server") from error


def _sqlite_serialised_writes(engine: Engine) -> None:
    """SQLite (the embedded default) takes the write lock at BEGIN, so two threads never
    deadlock upgrading read locks; WAL lets readers go on meanwhile."""

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def insert_many(connection: Connection, table: sa.Table, rows: list[dict],
                finish: Callable[[Any], Any] = lambda insert: insert) -> sa.CursorResult:
    """Many rows in one INSERT; `finish` adds ON CONFLICT or RETURNING to it.

    On PostgreSQL the rows travel as one JSON parameter that `jsonb_to_recordset` expands:
    a short statement, converted and prepared once, where a multi-row VALUES list of a few
    hundred rows is a new statement of thousands of parameters that the driver re-parses on
    every call (half a burst's time, measured). The JSON is written by orjson, which knows
    UUIDs and datetimes: the stdlib's encoder called back into Python for each of them, a
    quarter of the notifier's time on a burst of bookings. SQLite takes the rows as an
    executemany.

    Callers pass rows sorted by their conflict key, so that two transactions upserting
    overlapping rows lock them in one order and never deadlock each other.
    """
    columns = tuple(rows[0])
    if any(tuple(row) != columns for row in rows):
        raise ValueError("insert_many: every row needs the same columns in the same order")
    if connection.dialect.name != "postgresql":
        return connection.execute(finish(sqlite.insert(table)), rows)
    insert = postgresql.insert(table).from_select(columns, _json_rows(table, columns))
    return connection.execute(finish(insert), {
        "rows": _rows_as_json(rows, _instant_columns(table, columns))})


@functools.cache
def _instant_columns(table: sa.Table, columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in columns
                 if isinstance(getattr(table.c[name].type, "impl", table.c[name].type),
                               sa.DateTime))


def _rows_as_json(rows: list[dict], instants: tuple[str, ...]) -> str:
    """Refused here rather than by PostgreSQL, whose error would quote the JSON around the
    value, other patients' details included, into its log and ours: a NUL or a lone surrogate
    in text, and a datetime without a zone in an `instants` column (orjson would write it as
    a local time)."""
    for row in rows:
        for name in instants:
            value = row[name]
            if isinstance(value, datetime) and value.tzinfo is None:
                raise ValueError("naive datetime refused: store instants as aware UTC")
    try:
        encoded = orjson.dumps(rows)
    except orjson.JSONEncodeError as error:
        if not all(_storable_text(value) for row in rows for value in row.values()
                   if type(value) is str):
            raise ValueError("text with a NUL character or a lone surrogate") from None
        raise TypeError(f"not a column value: {error}") from None
    if b"\\u0000" in encoded and not all(
            "\x00" not in value for row in rows for value in row.values()
            if type(value) is str):
        raise ValueError("text with a NUL character or a lone surrogate")
    return encoded.decode()


def _storable_text(value: str) -> bool:
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@functools.cache
def _json_rows(table: sa.Table, columns: tuple[str, ...]) -> sa.Select:
    source = sa.func.jsonb_to_recordset(
        sa.cast(sa.bindparam("rows", type_=sa.Text), postgresql.JSONB),
    ).table_valued(*(sa.column(name, table.c[name].type) for name in columns)
                   ).render_derived(name="r", with_types=True)
    # `WHERE true`: without it PostgreSQL would read a following ON CONFLICT as a join's ON.
    return sa.select(*source.c).where(sa.true())


def describe_error(error: BaseException) -> str:
    """An error as logs and dead-letter reasons may carry it. PostgreSQL's own message may
    quote the values it refused (a phone number in a key, a row of JSON), so an error from
    the server is named by its class, SQLSTATE, and the constraint and table it concerns;
    one raised before the server saw anything (connection refused) keeps its first line."""
    if not isinstance(error, sa.exc.DBAPIError) or error.orig is None:
        return f"{type(error).__name__}: {error}"
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:
        sqlite_name = getattr(orig, "sqlite_errorname", None)
        return f"{type(orig).__name__}: {sqlite_name or str(orig).splitlines()[0][:200]}"
    diag = getattr(orig, "diag", None)
    names = [f"{what} {value}" for what, value in (
        ("constraint", getattr(diag, "constraint_name", None)),
        ("table", getattr(diag, "table_name", None))) if value]
    return f"{type(orig).__name__} (SQLSTATE {sqlstate}{', ' if names else ''}{', '.join(names)})"


def insert_ignoring_duplicates(connection: Connection, table: sa.Table, values: dict) -> bool:
    """Insert unless the primary key exists; True when this call inserted the row.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction, so two
    deliveries of one event cannot both believe they were first.
    """
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    key = list(table.primary_key.columns)[0]
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(key)
    return connection.execute(statement).first() is not None


@dataclass(frozen=True)
class SharedTables:
    outbox: sa.Table
    processed_events: sa.Table
    idempotency_keys: sa.Table
    staff_tokens: sa.Table


def add_shared_tables(metadata: sa.MetaData) -> SharedTables:
    outbox = sa.Table(
        "outbox", metadata,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("subject", sa.String(100), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=True),
    )
    sa.Index(
        "outbox_pending", outbox.c.id,
        postgresql_where=outbox.c.published_at.is_(None),
        sqlite_where=outbox.c.published_at.is_(None),
    )
    processed_events = sa.Table(
        "processed_events", metadata,
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("processed_at", UTCDateTime, nullable=False),
    )
    idempotency_keys = sa.Table(
        "idempotency_keys", metadata,
        sa.Column("scope", sa.String(100), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("response", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    staff_tokens = sa.Table(
        "staff_tokens", metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
    )
    return SharedTables(outbox, processed_events, idempotency_keys, staff_tokens)


class Outbox:
    """Events written in the caller's transaction; the relay publishes them after commit.

    On PostgreSQL the row's INSERT also calls `pg_notify` on the relay's channel: delivered
    only when the transaction commits (never for one rolled back), it wakes the relay at once
    instead of at its next poll. Carried by the INSERT itself rather than sent as a statement
    of its own at commit, so announcing an event costs no extra round trip; PostgreSQL folds
    repeats of one channel and payload within a transaction into one notification.
    """

    def __init__(self, connection: Connection, table: sa.Table, clock: Clock,
                 notify_channel: str):
        self._connection, self._clock = connection, clock
        self._channel = notify_channel
        self._insert = _outbox_insert(table, connection.dialect.name)
        self.added = 0

    def add(self, event: Event) -> None:
        self._connection.execute(self._insert, {
            "event_id": event.id, "type": event.type, "subject": event.subject,
            "body": encode(event), "created_at": self._clock.now(), "channel": self._channel,
        })
        self.added += 1


_OUTBOX_COLUMNS = ("event_id", "type", "subject", "body", "created_at")


@functools.cache
def _outbox_insert(table: sa.Table, dialect: str) -> sa.Insert:
    """Built once per table and dialect, with every value a bound parameter: one cached
    compilation (and, past psycopg's threshold, one prepared statement) for every event."""
    if dialect != "postgresql":
        # `inline()`: no RETURNING of an id nobody reads. SQLite's relay polls.
        return table.insert().inline()
    values = [sa.bindparam(name, type_=table.c[name].type) for name in _OUTBOX_COLUMNS]
    # `pg_notify` returns void: as the FROM it is one row, so exactly one outbox row.
    wake = sa.func.pg_notify(sa.bindparam("channel", type_=sa.String), sa.literal_column("''"))
    return table.insert().from_select(list(_OUTBOX_COLUMNS),
                                      sa.select(*values).select_from(wake))


def outbox_insert_for_each(table: sa.Table, source: sa.CTE, *, announce: bool = True
                           ) -> sa.Insert:
    """PostgreSQL: an outbox row, with its wake-up, for each row `source` (a CTE, typically an
    INSERT ... RETURNING) yields; none when it yields none. For a change and its event in
    one statement. The event's values are parameters `event_<column>` and `event_channel`
    (`outbox_parameters`), apart from the change's own.

    `announce=False`: no wake-up (and no `event_channel`), the relay finds the row at its next
    poll (within a second) or with the next announced event. For a statement run at a high
    rate whose event can wait that long: every transaction that notifies takes one lock,
    for the whole database, at its commit and holds it through the commit's disk flush, so
    a wake-up per send made the notifier's sends take turns."""
    values = [sa.bindparam(f"event_{name}", type_=table.c[name].type) for name in _OUTBOX_COLUMNS]
    select = sa.select(*values).select_from(source)
    if announce:
        select = select.select_from(sa.func.pg_notify(
            sa.bindparam("event_channel", type_=sa.String), sa.literal_column("''")))
    return table.insert().from_select(list(_OUTBOX_COLUMNS), select)


def outbox_parameters(event: Event, clock: Clock, notify_channel: str | None) -> dict:
    """The parameters `outbox_insert_for_each` takes for this event; no channel for a
    statement built with `announce=False`."""
    parameters = {"event_event_id": event.id, "event_type": event.type,
                  "event_subject": event.subject, "event_body": encode(event),
                  "event_created_at": clock.now()}
    if notify_channel is not None:
        parameters["event_channel"] = notify_channel
    return parameters


class ProcessedEvents:
    def __init__(self, connection: Connection, table: sa.Table, clock: Clock):
        self._connection, self._table, self._clock = connection, table, clock

    def add(self, consumer: str, event_id: str) -> bool:
        """Record that `consumer` handled `event_id`; False if it already had."""
        return insert_ignoring_duplicates(
            self._connection, self._table,
            {"consumer": consumer, "event_id": event_id, "processed_at": self._clock.now()},
        )

    def add_all(self, consumer: str, event_ids: list[str]) -> set[str]:
        """As `add` for many events in one statement: the ids not handled before."""
        if not event_ids:
            return set()
        now = self._clock.now()
        return set(insert_many(
            self._connection, self._table,
            [{"consumer": consumer, "event_id": event_id, "processed_at": now}
             for event_id in sorted(event_ids)],
            lambda insert: insert.on_conflict_do_nothing().returning(self._table.c.event_id),
        ).scalars())


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: Any


def request_fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class IdempotencyKeys:
    """The `Idempotency-Key` of a creating POST, claimed in the same transaction as the create."""

    def __init__(self, connection: Connection, table: sa.Table, clock: Clock):
        self._connection, self._table, self._clock = connection, table, clock

    def claim(self, scope: str, key: str, fingerprint: str) -> Replay | None:
        """None when this request is the first with the key; the stored answer otherwise."""
        if insert_ignoring_duplicates(
            self._connection, self._table,
            {"scope": scope, "key": key, "request_hash": fingerprint,
             "created_at": self._clock.now()},
        ):
            return None
        row = self._connection.execute(
            sa.select(self._table).where(self._table.c.scope == scope, self._table.c.key == key)
        ).one()
        if row.request_hash != fingerprint:
            raise Invalid(
                "Idempotency-Key was already used with a different request",
                {"Idempotency-Key": ["reused with a different request body"]},
            )
        if row.status_code is None:
            raise Conflict("a request with this Idempotency-Key is still in progress")
        return Replay(row.status_code, json.loads(row.response))

    def record(self, scope: str, key: str, status_code: int, body: Any) -> None:
        self._connection.execute(
            self._table.update()
            .where(self._table.c.scope == scope, self._table.c.key == key)
            .values(status_code=status_code, response=json.dumps(body, default=str))
        )


class UnitOfWork:
    """One transaction: the service's changes, its outbox rows and its processed-event marks.

    Subclasses open their repositories in `_open`. Use once per operation:
    `with uow: ...; uow.commit()`; leaving the block without commit rolls back.
    """

    def __init__(self, engine: Engine, tables: SharedTables, clock: Clock, notify_channel: str):
        self.engine, self.tables, self.clock = engine, tables, clock
        self._notify_channel = notify_channel
        self.connection: Connection | None = None

    def __enter__(self) -> UnitOfWork:
        self.connection = self.engine.connect()
        self._transaction = self.connection.begin()
        self.outbox = Outbox(self.connection, self.tables.outbox, self.clock,
                             self._notify_channel)
        self.processed = ProcessedEvents(self.connection, self.tables.processed_events, self.clock)
        self.idempotency = IdempotencyKeys(
            self.connection, self.tables.idempotency_keys, self.clock
        )
        self._open(self.connection)
        return self

    def _open(self, connection: Connection) -> None:
        """Subclasses attach their repositories here."""

    def __exit__(self, *exc_info) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self.connection.close()
            self.connection = None

    def commit(self) -> None:
        self._transaction.commit()

    def rollback(self) -> None:
        self._transaction.rollback()


@contextlib.contextmanager
def one_statement(engine: Engine) -> Iterator[Connection]:
    """A connection for a write that is one statement on PostgreSQL, and so atomic by itself.

    PostgreSQL: autocommit, so the statement is its own transaction and costs one round trip
    instead of three (psycopg sends `BEGIN` on its own before the first statement, and then
    `COMMIT`). Only for a single statement: two in a row would commit separately. SQLite,
    whose fallbacks may take several statements: one transaction, committed at the end.
    """
    with engine.connect() as connection:
        if connection.dialect.name != "postgresql":
            with connection.begin():
                yield connection
            return
        # psycopg's own switch, not SQLAlchemy's isolation_level option: that one goes through
        # the pool's characteristics machinery at checkout and again at checkin, which cost
        # more than the statement it saves a round trip on (measured on the booking path).
        driver = connection.connection.driver_connection
        driver.autocommit = True
        try:
            yield connection
        finally:
            _back_to_transactions(connection, driver)


def _back_to_transactions(connection: Connection, driver) -> None:
    """The pooled connection must not reach the next unit of work in autocommit."""
    try:
        if not driver.closed:
            driver.autocommit = False
            return
    except Exception:
        pass
    connection.invalidate()


def outbox_channel(service: str) -> str:
    return f"clinic_outbox_{service}"
