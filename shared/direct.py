"""Core statements run straight on the driver's cursor, for the few on the hottest path.

SQLAlchemy's own work on each execution (the statement's cache key, walked over its whole tree,
then the parameters and the result set-up) costs about as much Python time as psycopg's: on a
booking's two statements, measured at half of their cost. `DirectStatement` keeps everything
that makes the statement right (it is still written, and compiled, by SQLAlchemy, once per
dialect; each parameter still goes through its type's conversion, so `UTCDateTime` still
refuses a naive datetime; driver errors still come out as SQLAlchemy's, a dropped connection
invalidated; `before_cursor_execute` and `after_cursor_execute` listeners still called, with no
execution context, and a listener's rewrite of the statement not honoured) and does the rest
once instead of on every call. Not done: `handle_error` listeners, and the pool-wide
invalidation SQLAlchemy does when the server drops a connection (the engine's checkout
listener, `shared.db`, replaces each dropped connection as it is checked out).

For statements that return rows (a SELECT, or a WITH ... SELECT around the writes). PostgreSQL
only, and only on a connection in autocommit (`shared.db.one_statement`): the
statement is then its own transaction, and SQLAlchemy's transaction bookkeeping, which this
bypasses, has nothing to track.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect


@dataclass(frozen=True)
class _Compiled:
    sql: str
    fixed: dict[str, Any]                        # parameters whose value the statement holds
    convert: tuple[tuple[str, Callable], ...]    # parameter name, its type's conversion
    results: tuple[Callable | None, ...]         # one per result column


class DirectStatement:
    def __init__(self, statement: sa.Executable):
        self.statement = statement

    def compiled(self, dialect: Dialect) -> _Compiled:
        """Kept on the dialect itself (its type conversions hold the dialect anyway), so it
        lives and goes with its engine."""
        cache = dialect.__dict__.setdefault("_clinic_direct_statements", {})
        made = cache.get(self)
        if made is None:          # two threads may both compile it once: the same result
            made = cache[self] = _compile(self.statement, dialect)
        return made

    def rows(self, connection: Connection, parameters: dict[str, Any]) -> list[tuple]:
        """Every row, as tuples in the statement's column order, converted by the columns'
        types as SQLAlchemy would."""
        made = self.compiled(connection.dialect)
        driver = _autocommit_driver(connection)
        values = {**made.fixed, **parameters}
        try:
            for name, process in made.convert:
                values[name] = process(values[name])
        except Exception as error:       # as SQLAlchemy reports a parameter it cannot convert
            raise sa.exc.StatementError(f"({type(error).__name__}) {error}", made.sql, None,
                                        error) from error
        events = connection.dispatch
        cursor = None
        try:
            cursor = driver.cursor()
            if events.before_cursor_execute:
                events.before_cursor_execute(connection, cursor, made.sql, values, None, False)
            cursor.execute(made.sql, values)
            rows = cursor.fetchall()  # not `description` first: it costs as much again
            if events.after_cursor_execute:
                events.after_cursor_execute(connection, cursor, made.sql, values, None, False)
        except connection.dialect.loaded_dbapi.Error as error:
            raise _as_sqlalchemy_error(connection, made.sql, values, error, cursor) from error
        finally:
            if cursor is not None:
                cursor.close()
        if any(made.results):
            rows = [tuple(value if process is None else process(value)
                          for process, value in zip(made.results, row, strict=True))
                    for row in rows]
        return rows

    def one(self, connection: Connection, parameters: dict[str, Any]) -> tuple:
        rows = self.rows(connection, parameters)
        if len(rows) != 1:
            raise sa.exc.MultipleResultsFound(f"{len(rows)} rows where one was expected") \
                if rows else sa.exc.NoResultFound("no row where one was expected")
        return rows[0]


def _compile(statement: sa.Executable, dialect: Dialect) -> _Compiled:
    """Refuses what cannot be sent as compiled once: parameters whose value is computed per
    execution (a callable, an expanding IN list, a literal rendered at execution) and result
    types whose conversion depends on the cursor (Numeric, Float)."""
    if dialect.name != "postgresql":
        raise ValueError("DirectStatement runs on PostgreSQL only")
    compiled = statement.compile(dialect=dialect)
    fixed, convert = {}, []
    for bind, name in compiled.bind_names.items():
        if bind.callable is not None or bind.expanding or bind.literal_execute:
            raise ValueError(f"DirectStatement cannot send parameter {name!r} compiled once")
        if not bind.required:
            fixed[name] = bind.value
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            convert.append((name, process))
    results = []
    for column in getattr(statement, "selected_columns", ()):
        try:
            results.append(column.type.dialect_impl(dialect).result_processor(dialect, None))
        except TypeError as error:
            raise ValueError(f"DirectStatement cannot convert column {column.key!r}: its "
                             "type needs the cursor's description") from error
    return _Compiled(str(compiled), fixed, tuple(convert), tuple(results))


def _autocommit_driver(connection: Connection):
    """The psycopg connection, refused unless it is live and in autocommit: on a connection
    SQLAlchemy invalidated, `connection.connection` would quietly check out another one, in
    a transaction nobody commits, and a write would seem to succeed and then be rolled back."""
    if connection.invalidated:
        raise sa.exc.PendingRollbackError("the connection was invalidated: start again on a "
                                          "new one")
    driver = connection.connection.driver_connection
    if not driver.autocommit:
        raise sa.exc.InvalidRequestError("DirectStatement needs a connection in autocommit "
                                         "(shared.db.one_statement)")
    return driver


def _as_sqlalchemy_error(connection: Connection, sql: str, values: dict, error: Exception,
                         cursor) -> sa.exc.DBAPIError:
    """The error SQLAlchemy would have raised (IntegrityError, OperationalError, ... with the
    driver's error as `orig`), the connection invalidated when the server dropped it, so the
    pool replaces it and callers tell a lost database (503) from a refusal."""
    dialect = connection.dialect
    driver = connection.connection.driver_connection
    lost = dialect.is_disconnect(error, driver, cursor)
    if lost:
        connection.invalidate(error)
    return sa.exc.DBAPIError.instance(sql, values, error, dialect.loaded_dbapi.Error,
                                      hide_parameters=True, connection_invalidated=lost,
                                      dialect=dialect)
