"""Core statements run straight on the driver's cursor, for the few on the hottest path.

SQLAlchemy's own work on each execution (the statement's cache key, walked over its whole tree,
then the parameters and the result set-up) costs about as much Python time as psycopg's: on a
booking's two statements, measured at half of their cost. `DirectStatement` keeps everything
that makes the statement right (it is still written, and compiled, by SQLAlchemy, once per
dialect; each parameter still goes through its type's conversion, so `UTCDateTime` still
refuses a naive datetime; driver errors still come out as SQLAlchemy's, a dropped connection
invalidated; `before_cursor_execute` and `after_cursor_execute` listeners still called, though
a listener's rewrite of the statement is not) and does the rest once instead of on every call.

For statements that return rows (a SELECT, or a WITH ... SELECT around the writes). PostgreSQL
only, and meant for a connection in autocommit (`shared.db.one_statement`): the
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
        self._by_dialect: dict[int, tuple[Dialect, _Compiled]] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        known = self._by_dialect.get(id(dialect))
        if known is not None and known[0] is dialect:
            return known[1]
        if dialect.name != "postgresql":
            raise ValueError("DirectStatement runs on PostgreSQL only")
        compiled = self.statement.compile(dialect=dialect)
        fixed, convert = {}, []
        for bind, name in compiled.bind_names.items():
            if not bind.required:
                fixed[name] = bind.effective_value
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                convert.append((name, process))
        columns = getattr(self.statement, "selected_columns", ())
        results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None)
                        for column in columns)
        made = _Compiled(str(compiled), fixed, tuple(convert), results)
        self._by_dialect[id(dialect)] = (dialect, made)
        return made

    def rows(self, connection: Connection, parameters: dict[str, Any]) -> list[tuple]:
        """Every row, as tuples in the statement's column order, converted by the columns'
        types as SQLAlchemy would."""
        dialect = connection.dialect
        made = self.compiled(dialect)
        values = {**made.fixed, **parameters}
        for name, process in made.convert:
            values[name] = process(values[name])
        driver = connection.connection.driver_connection
        cursor = driver.cursor()
        events = connection.dispatch      # listeners see it as any statement (tests, tracing)
        try:
            if events.before_cursor_execute:
                events.before_cursor_execute(connection, cursor, made.sql, values, None, False)
            cursor.execute(made.sql, values)
            rows = cursor.fetchall()  # not `description` first: it costs as much again
            if events.after_cursor_execute:
                events.after_cursor_execute(connection, cursor, made.sql, values, None, False)
        except dialect.loaded_dbapi.Error as error:
            raise _as_sqlalchemy_error(connection, made.sql, values, error, cursor) from error
        finally:
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
