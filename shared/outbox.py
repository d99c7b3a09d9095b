"""The outbox relay: committed events reach the broker, in commit order, at least once.

Any number of relays may run for a service; one leads. On PostgreSQL the leader holds a
session advisory lock on its own connection, so when its process dies the connection drops,
the lock goes with it and a standby takes over within a second. The same connection LISTENs
for the `pg_notify` that an outbox-writing commit sends, so an event goes out as soon as it
is committed rather than at the next poll (every second; a row written without a wake-up,
`outbox_insert_for_each(announce=False)`, goes then).
"""
from __future__ import annotations

import select
import threading
import time
import zlib
from collections import deque

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from shared.clock import Clock
from shared.db import (
    NOTICE_A_DEAD_PEER,
    QUICK_TO_NOTICE_A_DEAD_PEER,
    BigId,
    describe_error,
    outbox_channel,
)
from shared.logging import get_logger
from shared.messaging import InFlight, OutgoingMessage, Publisher

log = get_logger("outbox")


class SoleLeadership:
    """SQLite, the embedded default: one process, so the relay always leads; it polls."""

    poll_seconds = 0.1

    def acquire(self) -> bool:
        return True

    def wait_for_work(self, timeout: float, stop: threading.Event) -> None:
        stop.wait(min(timeout, self.poll_seconds))

    def release(self) -> None:
        pass


class AdvisoryLockLeadership:
    """PostgreSQL: leadership is a session advisory lock on a dedicated connection."""

    def __init__(self, engine: Engine, service: str):
        url = engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._channel = outbox_channel(service)
        self._key = zlib.crc32(self._channel.encode())
        self._connection: psycopg.Connection | None = None

    def acquire(self) -> bool:
        if self._connection is not None:
            if self._still_held():
                return True
            self.release()
        connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5,
                                     **QUICK_TO_NOTICE_A_DEAD_PEER)
        connection.execute(NOTICE_A_DEAD_PEER)
        locked = connection.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()[0]
        if not locked:
            connection.close()
            return False
        connection.execute(f'LISTEN "{self._channel}"')
        self._connection = connection
        log.info("outbox.leading", channel=self._channel)
        return True

    def _still_held(self) -> bool:
        """The lock lives as long as its session. A session the server ended (a restart, a
        terminated backend) is noticed here, between batches, as well as in `wait_for_work`,
        which a relay kept busy never reaches: otherwise it would go on publishing beside the
        standby that took the lock over. Costs a poll of the socket, and a round trip only
        when the server has said something (notifications, or its goodbye, which reading
        notifications alone does not notice)."""
        connection = self._connection
        try:
            ready, _, _ = select.select([connection.fileno()], [], [], 0)
            if ready:
                connection.execute("SELECT 1")
                for _ in connection.notifies(timeout=0):
                    pass
        except (psycopg.Error, OSError, ValueError):
            return False
        return not (connection.closed or connection.broken)

    def wait_for_work(self, timeout: float, stop: threading.Event) -> None:
        """Block until a commit notifies, the timeout passes, or the connection drops."""
        connection = self._connection
        if connection is None:
            return
        try:
            ready, _, _ = select.select([connection.fileno()], [], [], timeout)
            if ready:
                # Drain every queued notification at once: one wake per burst, not per row.
                for _ in connection.notifies(timeout=0):
                    pass
        except (psycopg.Error, OSError, ValueError):
            self.release()

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None


# The least time between two batches when events keep coming (see OutboxRelay._linger).
LINGER_SECONDS = 0.01


class OutboxRelay:
    def __init__(self, engine: Engine, table: sa.Table, publisher: Publisher, clock: Clock,
                 service: str, batch_size: int = 500, linger: float = LINGER_SECONDS):
        self._engine, self._table, self._publisher = engine, table, publisher
        self._clock, self._batch_size = clock, batch_size
        self._linger_seconds = linger
        self._published_at = float("-inf")     # monotonic time of the last batch published
        self._service = service
        self.leadership = (
            AdvisoryLockLeadership(engine, service)
            if engine.dialect.name == "postgresql" else SoleLeadership()
        )
        # One array parameter on PostgreSQL rather than a 500-item IN list, which every batch
        # would render, convert and send anew.
        if engine.dialect.name == "postgresql":
            batch = table.c.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(BigId)))
            not_sending = sa.not_(table.c.id == sa.any_(
                sa.bindparam("sending", type_=postgresql.ARRAY(BigId))))
        else:
            batch = table.c.id.in_(sa.bindparam("ids", expanding=True))
            not_sending = table.c.id.not_in(sa.bindparam("sending", expanding=True))
        self._mark_published = table.update().where(batch)
        # The lowest pending ids but those in flight, not "ids after the last batch": ids are
        # given out at insert, not at commit, so a row can commit after higher ids were read.
        # It goes out in the next batch, before any later event of its appointment (which is
        # inserted only after it commits); skipping past it would reverse the two.
        self._pending = (sa.select(table.c.id, table.c.event_id, table.c.type, table.c.body)
                         .where(table.c.published_at.is_(None), not_sending)
                         .order_by(table.c.id).limit(batch_size))
        self._drained = True

    def publish_pending(self, batches: int = 8) -> int:
        """Publish pending rows in commit order, up to `batches` batches, marking each batch
        published once the broker has confirmed it; the count published. Fewer than
        `batches` full batches: the outbox is drained.

        Two batches are in flight: the next is read and sent while the broker confirms the
        one before, so the relay never waits on the database and the broker in turn. If a
        confirm fails, the batches not yet marked go out again next time (at least once).
        """
        in_flight: deque[tuple[list[int], InFlight]] = deque()
        published = 0
        try:
            for _ in range(batches):
                rows = self._pending_but([id_ for ids, _ in in_flight for id_ in ids])
                if rows:
                    in_flight.append(([row.id for row in rows], self._publisher.send(
                        [OutgoingMessage(row.type, bytes(row.body), row.event_id)
                         for row in rows])))
                if len(in_flight) > 1 or (in_flight and len(rows) < self._batch_size):
                    published += self._mark_when_confirmed(*in_flight.popleft())
                if len(rows) < self._batch_size:
                    break
            while in_flight:
                published += self._mark_when_confirmed(*in_flight.popleft())
        finally:
            self._drained = published < batches * self._batch_size
        return published

    def _pending_but(self, sending: list[int]) -> list:
        with self._engine.connect() as connection:
            rows = connection.execute(self._pending, {"sending": sending}).all()
            connection.rollback()
        return rows

    def _mark_when_confirmed(self, ids: list[int], sent: InFlight) -> int:
        self._publisher.confirmed(sent)
        with self._engine.begin() as connection:
            connection.execute(self._mark_published, {
                "ids": ids, "published_at": self._clock.now()})
        return len(ids)

    def run(self, stop: threading.Event, idle_wait: float = 1.0) -> None:
        failures = 0
        while not stop.is_set():
            try:
                if not self.leadership.acquire():
                    stop.wait(1.0)
                    continue
                sent = self.publish_pending()
                failures = 0
                if sent:
                    self._published_at = time.monotonic()
                    log.debug("outbox.published", count=sent, service=self._service)
                if self._drained:
                    self.leadership.wait_for_work(idle_wait, stop)
                    self._linger(stop)
            except Exception as error:  # broker or database away: back off, keep the rows
                failures += 1
                delay = min(5.0, 0.2 * 2 ** min(failures, 5))
                log.warning("outbox.retrying", service=self._service, error=type(error).__name__,
                            detail=describe_error(error)[:300], retry_in=delay)
                self._publisher.close()
                if isinstance(error, (sa.exc.OperationalError, psycopg.Error)):
                    self.leadership.release()
                stop.wait(delay)
        self.close()

    def _linger(self, stop: threading.Event) -> None:
        """Woken again within `linger` of the last batch, wait out the rest of it first.

        A batch costs the same few round trips (read, publish, confirm, mark) whether it
        holds one event or hundreds. Under a steady trickle of commits (a notifier records
        every SMS it sends) a wake per commit made a batch per event, and the relay took a
        third of the notifier's interpreter; lingering, it sends what came meanwhile as one.
        An event after a quiet spell still goes at once: the wait only follows a batch."""
        remaining = self._published_at + self._linger_seconds - time.monotonic()
        if remaining > 0:
            stop.wait(remaining)

    def close(self) -> None:
        self._publisher.close()
        self.leadership.release()
